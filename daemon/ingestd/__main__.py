"""`python -m ingestd` entry point."""

import sys

from ingestd.cli import main

sys.exit(main())
