"""Writes TF Serving warmup requests into an exported SavedModel version folder.

TF Serving replays `<version>/assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog) before it marks
the version AVAILABLE, so the first real request does not pay for graph optimisation / lazy initialisation.
A record that fails (e.g. wrong input name) fails the whole load, and more than 1,000 records is an error.
"""

from __future__ import annotations

import os

MAX_RECORDS = 1000  # tensorflow_serving WarmupConsts::kMaxNumRecords
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def write_warmup_requests(export_dir: str, texts, model_name: str = "bertbc",
                          signature_name: str = "serving_default", input_name: str = "text") -> str:
    """Writes one single-text predict request per text plus one batch of all texts (max 1,000 records).

    Args:
      export_dir: a SavedModel version folder (written before it is renamed to <base>/<N>).
      texts: sequence of str/bytes sample inputs (e.g. a few validation documents).
      model_name: model_spec.name of the requests (TF Serving ignores it for warmup).
      signature_name: signature the requests call.
      input_name: the signature's string input alias.

    Returns:
      Path of the written file.

    Raises:
      ValueError: `texts` is empty or would need more than 1,000 records, or `export_dir` is not a folder.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    texts = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts]
    if not texts:
        raise ValueError("texts must not be empty")
    if not os.path.isdir(export_dir):
        raise ValueError(f"export_dir {export_dir!r} is not a directory")
    batches = [[t] for t in texts] + ([texts] if len(texts) > 1 else [])
    if len(batches) > MAX_RECORDS:
        raise ValueError(f"texts gives {len(batches)} warmup records; TF Serving accepts at most {MAX_RECORDS}")
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp_path = path + ".tmp"
    with tf.io.TFRecordWriter(tmp_path) as writer:
        for batch in batches:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature_name
            request.inputs[input_name].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    os.replace(tmp_path, path)
    return path
