"""Version numbering and atomic publishing of exports (TF Serving's rules for version folders)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tensorflow as tf

from trainer.export import export_saved_model, next_version, parse_version


@pytest.mark.parametrize("name, version", [("1", 1), ("0002", 2), ("10", 10), ("1.tmp", None), ("tmp", None),
                                           (".tmp-export-12-3", None), ("-1", None), ("", None), ("٣", None)])
def test_parse_version(name, version):
    assert parse_version(name) == version


@pytest.mark.parametrize("existing, expected", [
    ([], 1),
    (["1"], 2),
    (["1", "0002"], 3),
    (["1", "0002", ".tmp-export-99-3", "3.tmp", "notes"], 3),
    (["0009"], 10),
])
def test_next_version(tmp_path, existing, expected):
    for name in existing:
        (tmp_path / name).mkdir()
    assert next_version(tmp_path) == expected
    assert next_version(tmp_path / "missing") == 1


class Doubler(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def serve(self, x):
        return {"y": 2 * x}


def test_publish_is_atomic_and_failed_extras_publish_nothing(tmp_path):
    base = tmp_path / "bertbc"
    (base / "1").mkdir(parents=True)
    (base / "0002").mkdir()

    def broken(tmp_dir: Path):
        assert not tmp_dir.name.isdigit()  # a polling server must not see the folder under construction
        raise RuntimeError("warm-up failed")

    with pytest.raises(RuntimeError, match="warm-up failed"):
        export_saved_model(Doubler(), base, write_extras=broken)
    assert sorted(p.name for p in base.iterdir()) == ["0002", "1"]

    version, path = export_saved_model(Doubler(), base)
    assert (version, path) == (3, base / "3")
    loaded = tf.saved_model.load(str(path))
    assert loaded.signatures["serving_default"](tf.constant([1.5]))["y"].numpy().tolist() == [3.0]
    assert sorted(p.name for p in base.iterdir()) == ["0002", "1", "3"]


def test_fsync_tree_syncs_every_file_and_folder(tmp_path, monkeypatch):
    """A published version must survive a power cut: files AND the folders holding them (variables/, assets/,
    nested ones) are fsynced, the root last. Records what the real os.fsync is called on."""
    from trainer import export

    (tmp_path / "variables").mkdir()
    (tmp_path / "assets" / "deep").mkdir(parents=True)
    for name in ("saved_model.pb", "variables/variables.index", "assets/deep/vocab.txt"):
        (tmp_path / name).write_text("x")
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    export._fsync_tree(tmp_path)
    expected = {tmp_path, *tmp_path.rglob("*")}
    assert set(synced) == expected, sorted(expected - set(synced))
    assert synced[-1] == tmp_path


SEQ = 64  # buckets 32 and 64


@pytest.fixture(scope="module")
def check_setup(tiny_encoder):
    """A tiny classifier whose head spreads the logits over a few units, and texts from headlines to long
    articles (several windows at 64 tokens)."""
    import random

    from tests.conftest import TOY_KEYWORDS, toy_text
    from trainer.model import build_classifier
    from trainer.preprocessing import Preprocessor

    model = build_classifier(tiny_encoder.encoder_handle, 3, seq_length=SEQ, pooling="mean", dropout=0.0)
    head = model.get_layer("classifier")
    head.kernel.assign(tf.random.stateless_normal(head.kernel.shape, seed=(1, 2)) * 20.0)
    rng = random.Random(0)
    texts = [toy_text(label, rng, words=rng.choice([10, 60, 150])).encode() for label in [*TOY_KEYWORDS] * 2]
    return Preprocessor(tiny_encoder.preprocess_handle, seq_length=SEQ), model, texts


def _module(check_setup, **kwargs):
    from trainer.export import ServingModule

    pre, model, _ = check_setup
    return ServingModule(pre, model, ["business", "politics", "sport"], window_overlap=16, **kwargs)


def test_export_check_covers_every_bucket_and_the_serve_path(check_setup):
    from trainer.export_check import check_export
    from trainer.preprocessing import bucket_lengths

    _, model, texts = check_setup
    report = check_export(_module(check_setup, max_windows=2), model, texts)
    assert sorted(report.bucket_diffs) == list(bucket_lengths(SEQ)) == [32, 64]
    assert max(report.bucket_diffs.values()) < 1e-5 and report.serve_diff < 1e-5
    assert report.texts == 3 * 2 + 4


def test_export_refuses_a_rebuild_without_its_attention_mask(check_setup, monkeypatch):
    """The mask hides padding; a rebuild that drops it must not be published. The former check (long
    validation texts at full length: masks all ones) could not see it."""
    from trainer.export import check_rebuild
    from trainer.export_check import ExportCheckError, check_export
    from trainer.serving_encoder import ServingEncoder

    pre, model, texts = check_setup
    monkeypatch.setattr(ServingEncoder, "attention_mask",
                        lambda self, input_mask: tf.zeros_like(input_mask, self.dtype)[:, tf.newaxis, tf.newaxis, :])
    module = _module(check_setup, max_windows=1)
    long_texts = [b" ".join([t for t in texts if len(t) > 600] * 2)] * 2
    assert check_rebuild(module, model, pre(tf.constant(long_texts))) < 1e-4  # blind to it
    with pytest.raises(ExportCheckError, match="bucket length 32 .*attention mask"):
        check_export(module, model, texts)


def test_export_refuses_a_serve_path_that_averages_windows_wrongly(check_setup, monkeypatch):
    from trainer import export
    from trainer.export_check import ExportCheckError, check_export

    _, model, texts = check_setup
    monkeypatch.setattr(export, "mean_over_windows",
                        lambda logits, index, n: tf.math.unsorted_segment_max(logits, index, n))
    with pytest.raises(ExportCheckError, match="serve signature"):
        check_export(_module(check_setup, max_windows=3), model, texts)


def test_bf16_export_is_checked_with_its_own_tolerance(check_setup):
    """bf16 rounding is far above fp32's bound and far below what a real defect gives (tiny: seconds even where
    bf16 is emulated, like this project's AVX2-only CI runner)."""
    from trainer.export_check import TOLERANCES, ExportCheckError, check_export

    _, model, texts = check_setup
    module = _module(check_setup, max_windows=2, precision="bf16")
    report = check_export(module, model, texts)
    assert 1e-4 < max(report.bucket_diffs.values()) < TOLERANCES["bf16"].logits
    with pytest.raises(ExportCheckError):
        check_export(module, model, texts, TOLERANCES["fp32"])


@pytest.mark.parametrize("export, trained, docs, refused", [
    (0.90, 0.90, 100, False),
    (0.89, 0.90, 100, False),   # one document: a near tie flipped by rounding
    (0.91, 0.90, 100, False),
    (0.88, 0.90, 100, True),    # two documents: the export computes something else
    (0.5, 1.0, 2, False),
    (0.0, 1.0, 2, True),
])
def test_export_accuracy_must_match_trainings_within_one_document(export, trained, docs, refused):
    from trainer.export_check import ExportCheckError, check_accuracy

    if refused:
        with pytest.raises(ExportCheckError, match="documents"):
            check_accuracy(export, trained, docs)
    else:
        check_accuracy(export, trained, docs)
