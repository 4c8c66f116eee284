"""`python -m myelin ...`: the same command line as `myelin ...`."""

import sys

from .cli import main

sys.exit(main())
