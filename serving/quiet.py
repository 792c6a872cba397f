"""TensorFlow's start-up messages, hidden from the dev server's log unless `-v`.

Importing TensorFlow and touching the devices print C++ lines straight to file descriptor 2, outside Python's
logging: "Could not find cuda drivers", the cpu_feature_guard notice, and on a machine without a GPU an
alarming `E0000 ... failed call to cuInit`. `python -m serving` imports TensorFlow and TF-Text once, before the
first model loads, with fd 2 sent to a temporary file; lines known to be harmless are dropped and anything else
is replayed. The trainer does the same in trainer/quiet.py (serving imports nothing from trainer/).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

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
    """Imports TensorFlow and TF-Text (once) and initialises the devices, hiding harmless lines unless `verbose`.

    C++ INFO and WARNING lines after start-up stay hidden (TF_CPP_MIN_LOG_LEVEL=2 unless set); errors show.
    """
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        import tensorflow as tf  # noqa: PLC0415
        import tensorflow_text  # noqa: F401, PLC0415

        tf.config.list_physical_devices("GPU")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf  # noqa: PLC0415
            import tensorflow_text  # noqa: F401, PLC0415

            tf.config.list_physical_devices("GPU")  # CUDA initialises here: its complaints are captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        leftover = filter_startup_lines(captured.read().decode(errors="replace"))
    for line in leftover:
        print(line, file=sys.stderr)
