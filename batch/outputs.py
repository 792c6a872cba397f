"""What the job writes, where, and the rerun guard.

Layout of ``--output DIR`` (shards as Beam writes them):

* ``predictions-SSSSS-of-NNNNN.jsonl`` (or ``.parquet``): one record per scored row:
  ``{"id", "source", "model_version", "label", "class_id", "probabilities": {class name: float}}``, and for a
  multi-label model ``"labels"``: the label set it answers (names above their thresholds, possibly none);
* ``dead_letter-SSSSS-of-NNNNN.jsonl``: one record per row that was not scored:
  ``{"id", "source", "stage", "reason"}`` (stage ``read`` or ``inference``);
* ``summary.json``: the counters, model and runner, written when the job has finished.
"""

from __future__ import annotations

import json
import posixpath

from apache_beam.io.filesystems import FileSystems

PREDICTIONS = "predictions"
DEAD_LETTER = "dead_letter"
SUMMARY = "summary.json"
FORMATS = ("jsonl", "parquet")
_OURS = (PREDICTIONS + "-", DEAD_LETTER + "-", SUMMARY, "beam-temp-")


class OutputError(ValueError):
    """An output folder the job must not write to; one line naming it."""


def _existing(output: str) -> list[str]:
    try:
        found = FileSystems.match([FileSystems.join(output, "*")])[0].metadata_list
    except Exception:  # noqa: BLE001 (a missing folder)
        return []
    return sorted(m.path for m in found)


def prepare_output(output: str, *, overwrite: bool) -> None:
    """Refuses an output folder holding a previous run's files, or removes them with ``overwrite``.

    Only the job's own files (``predictions-*``, ``dead_letter-*``, ``summary.json``, Beam's temp folders)
    are removed; anything else in the folder is left alone.

    Raises:
      OutputError: the folder already holds results and ``overwrite`` is False.
    """
    ours = [p for p in _existing(output) if posixpath.basename(p.rstrip("/")).startswith(_OURS)]
    if ours and not overwrite:
        raise OutputError(f"{output} already holds the results of a run ({posixpath.basename(ours[0])}, ...); "
                          "pass --overwrite to replace them, or choose another --output")
    if ours:
        FileSystems.delete(ours)
    if "://" not in output:
        import os  # noqa: PLC0415

        os.makedirs(output, exist_ok=True)


def prediction_record(row_id: str, source: str, version: int, class_names: tuple[str, ...], inference) -> dict:
    """One output record from a PredictionResult's ``inference`` dict (see handler.signature_inference_fn)."""
    label = inference["label"]
    record = {"id": row_id, "source": source, "model_version": version,
              "label": label.decode("utf-8") if isinstance(label, bytes) else str(label),
              "class_id": int(inference["class_id"]),
              "probabilities": {name: float(p) for name, p in zip(class_names, inference["probabilities"],
                                                                  strict=True)}}
    if "labels" in inference:
        record["labels"] = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in inference["labels"]]
    return record


def dead_letter_record(row_id: str, source: str, stage: str, reason: str) -> dict:
    return {"id": row_id, "source": source, "stage": stage, "reason": reason}


def parquet_schema(class_names: tuple[str, ...], multi_label: bool = False):
    """The Parquet schema of a prediction record: probabilities as a struct with one float field per class
    (and, multi-label, ``labels`` as a list of strings)."""
    import pyarrow as pa  # noqa: PLC0415

    fields = [("id", pa.string()), ("source", pa.string()), ("model_version", pa.int64()),
              ("label", pa.string()), ("class_id", pa.int64()),
              ("probabilities", pa.struct([(n, pa.float64()) for n in class_names]))]
    if multi_label:
        fields.append(("labels", pa.list_(pa.string())))
    return pa.schema(fields)


def to_json(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=False)
