"""Version numbering and atomic publishing of exports (TF Serving's rules for version folders)."""

from __future__ import annotations

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
