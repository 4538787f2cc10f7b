"""`python -m lessor` = the `lessor` command."""

import sys

from lessor.cli import main

# Guarded: the process pool behind sync tasks re-imports the parent's __main__ in its
# children (as __mp_main__), which must not start a second `lessor` command there.
if __name__ == "__main__":
    sys.exit(main())
