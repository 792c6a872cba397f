"""SavedModel op-set check: every op must be a TensorFlow core op or a tensorflow_text op.

The stock ``tensorflow/serving`` image links exactly those two op libraries; a SavedModel using anything else
(TF Addons, a custom .so, a Keras-NLP op from a newer TF-Text) loads fine in Python but fails in the server
with "Op type not registered". This reads ``saved_model.pb`` directly (no TF load), so it checks the file that
will be shipped.

"Core" and "tf_text" are the op registries of a FRESH interpreter before and after ``import tensorflow_text``
(``TF_GetAllOpList``), so the answer does not depend on what the calling process has already imported.

Usage:
    python -m trainer.opcheck models/bertbc/3        # prints a summary, exits 1 on unsupported ops
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

#: tf_text ops linked into TF Serving only from 2.20 (TF-Text 2.20); see docs tf-serving-facts §7.
SERVING_2_20_ONLY = frozenset({"TFText>RoundRobinTrim", "TFText>RoundRobinGenerateMasks", "TFText>Utf8Binarize"})

_REGISTRY_SCRIPT = r"""
import json, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from tensorflow.core.framework import op_def_pb2
from tensorflow.python.client import pywrap_tf_session as c

def ops():
    buf = c.TF_GetAllOpList()
    op_list = op_def_pb2.OpList()
    op_list.ParseFromString(buf if isinstance(buf, bytes) else c.TF_GetBuffer(buf))
    return {op.name for op in op_list.op}

import tensorflow  # noqa: F401
core = ops()
import tensorflow_text  # noqa: F401
print(json.dumps({"core": sorted(core), "tf_text": sorted(ops() - core)}))
"""


class UnsupportedOpsError(Exception):
    """The SavedModel uses ops the TF Serving image does not have; ``ops`` holds their names."""

    def __init__(self, ops: set[str], path: str):
        self.ops = set(ops)
        super().__init__(
            f"{path} uses ops that are neither TensorFlow core nor tensorflow_text ops, so TF Serving cannot run "
            f"it: {', '.join(sorted(ops))}")


@functools.lru_cache(maxsize=1)
def op_registries() -> tuple[frozenset[str], frozenset[str]]:
    """(core op names, tensorflow_text op names), computed once in a clean subprocess."""
    out = subprocess.run([sys.executable, "-c", _REGISTRY_SCRIPT], check=True, capture_output=True, text=True,
                         timeout=300).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return frozenset(data["core"]), frozenset(data["tf_text"])


def saved_model_op_types(path: str | os.PathLike) -> set[str]:
    """Every op type in ``path/saved_model.pb``: graph nodes plus nodes of all library functions.

    Calls of library functions (a node whose op is a function name) are not ops and are left out.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    pb_path = os.path.join(os.fspath(path), "saved_model.pb")
    if not os.path.isfile(pb_path):
        raise FileNotFoundError(f"path={path}: no saved_model.pb (not a SavedModel directory)")
    saved_model = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as f:
        saved_model.ParseFromString(f.read())
    ops: set[str] = set()
    functions: set[str] = set()
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        ops.update(node.op for node in graph.node)
        for fn in graph.library.function:
            functions.add(fn.signature.name)
            ops.update(node.op for node in fn.node_def)
    return ops - functions


def classify_ops(ops: set[str]) -> dict[str, set[str]]:
    """Splits op names into {"core", "tf_text", "unsupported"}."""
    core, tf_text = op_registries()
    return {"core": {o for o in ops if o in core},
            "tf_text": {o for o in ops if o in tf_text},
            "unsupported": {o for o in ops if o not in core and o not in tf_text}}


def check_saved_model_ops(path: str | os.PathLike) -> set[str]:
    """Returns the SavedModel's op types; raises ``UnsupportedOpsError`` naming any non-core, non-tf_text op."""
    ops = saved_model_op_types(path)
    unsupported = classify_ops(ops)["unsupported"]
    if unsupported:
        raise UnsupportedOpsError(unsupported, os.fspath(path))
    return ops


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainer.opcheck", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="SavedModel directory (the one holding saved_model.pb)")
    args = parser.parse_args(argv)
    groups = classify_ops(saved_model_op_types(args.path))
    print(f"{args.path}: {sum(len(v) for v in groups.values())} op types "
          f"({len(groups['core'])} core, {len(groups['tf_text'])} tensorflow_text, "
          f"{len(groups['unsupported'])} unsupported)")
    if groups["tf_text"]:
        print("tensorflow_text ops: " + ", ".join(sorted(groups["tf_text"])))
    late = groups["tf_text"] & SERVING_2_20_ONLY
    if late:
        print("note: needs tensorflow/serving >= 2.20 for: " + ", ".join(sorted(late)))
    if groups["unsupported"]:
        print("UNSUPPORTED ops (not in the TF Serving image): " + ", ".join(sorted(groups["unsupported"])))
        return 1
    print("OK: all ops are TensorFlow core or tensorflow_text ops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
