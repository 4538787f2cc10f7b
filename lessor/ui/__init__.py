"""``lessor ui``: a web dashboard over the live store (Starlette on uvicorn).

Server-rendered HTML, a little vanilla JavaScript (the live tail, the abort
button), no build step. Every page does a bounded amount of work, whatever
the store holds: the runs list walks the runs index from a cursor and stops
after a fixed budget, a run's events are read from its own window of the
partition's stream, workers come from the lease index, the activity chart
from the newest N events of each partition (``reads.py`` says the cost of
each read).

The package:

- ``reads``: what the pages read from the server, each read bounded;
- ``timeline``: a run's lease timeline (SVG) from its events;
- ``chart``: the retries/failovers bar chart (SVG);
- ``pages``: the HTML;
- ``stream``: the live tail as server-sent events;
- ``app``: the Starlette application and ``serve()``;
- ``bench``: the page-timing benchmark (``python -m lessor.ui.bench``).

It sits in the CLI layer (``lessor/tools/imports.py``): nothing below the
CLI imports it. ``lessor/cli/ui.py`` is the ``lessor ui`` command.
"""
