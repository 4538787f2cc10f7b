"""`python -m lessor` = the `lessor` command."""

import sys

from lessor.cli import main

sys.exit(main())
