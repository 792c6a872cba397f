"""The RunInference model handler: Beam's TensorFlow handler, loading the SavedModel and calling its signature.

Beam's stock ``TFModelHandlerTensor`` loads with ``tf.keras.models.load_model`` (Keras 3 cannot load a plain
TF2 SavedModel) and calls the loaded object itself with one stacked tensor. bertbc's export is a
``tf.Module`` whose ``serving_default`` takes a named string input, ``text: string [B]``, and needs the
TF-Text ops registered before loading. So this subclass changes only those two things; batching
(``min_batch_size``/``max_batch_size``), the shared per-process model handle and Beam's inference metrics
are the stock ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerTensor

SIGNATURE = "serving_default"
INPUT = "text"
OUTPUTS = ("label", "class_id", "probabilities")


def signature_inference_fn(model, batch: Sequence[str], inference_args: dict[str, Any],
                           model_id: str | None = None) -> Iterable[PredictionResult]:
    """Calls ``serving_default(text=[B] string)`` once per batch; one PredictionResult per text.

    Returns:
      ``PredictionResult(text, {"label": bytes, "class_id": int, "probabilities": float32 [C]}, model_id)``
      in the batch's order; a multi-label export adds ``"labels"``: its label set (bytes, "" padding dropped).
    """
    import tensorflow as tf  # noqa: PLC0415 (workers only)

    outputs = model.signatures[SIGNATURE](**{INPUT: tf.constant(list(batch), tf.string)}, **inference_args)
    label = outputs["label"].numpy()
    class_id = outputs["class_id"].numpy()
    probabilities = np.asarray(outputs["probabilities"].numpy(), np.float32)
    results = [{"label": label[i], "class_id": int(class_id[i]), "probabilities": probabilities[i]}
               for i in range(len(batch))]
    if "labels" in outputs:
        for result, names in zip(results, outputs["labels"].numpy(), strict=True):
            result["labels"] = [n for n in names if n]
    return [PredictionResult(text, result, model_id) for text, result in zip(batch, results, strict=True)]


class SavedModelSignatureHandler(TFModelHandlerTensor):
    """``TFModelHandlerTensor`` for a string-in SavedModel signature (elements are Python ``str``).

    Args:
      model_uri: the version folder (``models/bertbc/3``).
      min_batch_size / max_batch_size: Beam's batching bounds (BatchElements adapts between them).
      large_model: one model per machine shared by the worker processes (Beam's ``large_model``) instead of
        one per process; for models too big to hold once per core.
    """

    def __init__(self, model_uri: str, *, min_batch_size: int | None = None, max_batch_size: int | None = None,
                 large_model: bool = False):
        super().__init__(model_uri, inference_fn=signature_inference_fn, min_batch_size=min_batch_size,
                         max_batch_size=max_batch_size, large_model=large_model)

    def load_model(self):
        """Loads the SavedModel once per process (RunInference keeps it in a ``shared.Shared`` handle)."""
        import tensorflow as tf  # noqa: PLC0415
        import tensorflow_text  # noqa: F401, PLC0415 (registers the tokenizer ops the graph uses)

        model = tf.saved_model.load(self._model_uri)
        if SIGNATURE not in model.signatures:
            raise ValueError(f"{self._model_uri} has no {SIGNATURE!r} signature "
                             f"(it has {sorted(model.signatures)})")
        return model

    def get_num_bytes(self, batch: Sequence[str]) -> int:
        return sum(len(t) for t in batch)

    def get_metrics_namespace(self) -> str:
        return "bertbc_batch_RunInference"
