"""`python -m serving [flags]`: the TF Serving-compatible dev server."""

import sys

from serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
