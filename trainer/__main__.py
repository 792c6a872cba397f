"""`python -m trainer`: see trainer/cli.py."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter hides our own logs

from trainer.cli import main

sys.exit(main())
