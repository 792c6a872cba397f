"""``python -m batch``: see batch/cli.py."""

import sys

from batch.cli import configure_logging, main

configure_logging()
sys.exit(main())
