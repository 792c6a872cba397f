"""`python -m serving [flags]`: the TF Serving-compatible dev server."""

import sys

from serving.cli import main  # TensorFlow's start-up chatter is hidden there (serving/quiet.py) unless -v

if __name__ == "__main__":
    sys.exit(main())
