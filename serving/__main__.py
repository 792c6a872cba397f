"""`python -m serving [flags]`: the TF Serving-compatible dev server."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter hides our own logs

from serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
