"""TensorFlow's start-up messages, hidden by default: a newcomer's first screen should be the trainer's own log.

Importing TensorFlow prints C++ lines straight to file descriptor 2 (oneDNN notices, "Could not find cuda
drivers", and on a machine without a GPU an alarming `E0000 ... failed call to cuInit`), before and outside
Python's logging. By default the import runs with fd 2 sent to a temporary file; lines known to be harmless
are dropped, anything else is replayed, and one line says what TensorFlow found. `-v` (or setting
TF_CPP_MIN_LOG_LEVEL yourself) shows everything.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

log = logging.getLogger("bertbc.trainer")

HARMLESS = re.compile("|".join((
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers on your machine",
    r"failed call to cuInit",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions",
    r"TF-TRT Warning",
)))


def filter_startup_lines(text: str) -> list[str]:
    """The lines of `text` that are not known start-up noise."""
    return [line for line in text.splitlines() if line.strip() and not HARMLESS.search(line)]


def import_tensorflow(*, verbose: bool = False) -> None:
    """Imports TensorFlow (once), hiding its harmless start-up lines unless `verbose`."""
    if "tensorflow" in sys.modules:
        return
    user_level = "TF_CPP_MIN_LOG_LEVEL" in os.environ
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        import tensorflow  # noqa: F401, PLC0415
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # after start-up: drops C++ INFO/WARNING/ERROR chatter
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf  # noqa: PLC0415

            gpus = tf.config.list_physical_devices("GPU")  # CUDA initialises here: its complaints are captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        leftover = filter_startup_lines(captured.read().decode(errors="replace"))
    for line in leftover:
        print(line, file=sys.stderr)
    for name in ("tensorflow", "absl"):  # "Assets written to ...", "Sharding callback duration ..." per save
        logging.getLogger(name).setLevel(logging.WARNING)
    log.info("TensorFlow %s; %s%s", tf.__version__,
             f"{len(gpus)} GPU(s): " + ", ".join(g.name for g in gpus) if gpus else "no GPU visible, training on CPU",
             "" if user_level else " (TensorFlow start-up messages hidden; -v shows them)")
