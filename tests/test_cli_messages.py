"""The trainer's command line answers a wrong flag with one line that names it, before any data or TF work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainer import cli


def _error_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--pooling", "max"], "invalid choice: 'max'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["analyze", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_a_bad_flag_is_one_line_without_the_usage(argv, message, capsys):
    err = _error_of(argv, capsys)
    lines = err.strip().splitlines()
    assert message in lines[0], err
    assert "usage:" not in err and len(lines) <= 2, err
    assert "--help" in err


def test_an_unknown_encoder_names_the_closest_before_reading_data(tmp_path, capsys):
    # The data folder does not exist: the encoder must be refused first, not after a corpus load.
    err = _error_of(["--data-dir", str(tmp_path / "missing"), "--encoder", "minlm-l6"], capsys)
    first = err.splitlines()[0]
    assert "unknown --encoder 'minlm-l6'" in first and "minilm-l6" in first, err
    assert "python -m trainer encoders" in first
    assert len(first) < 400, "the whole registry must not be printed"
    assert "does not exist" not in err


def test_analyze_refuses_an_unknown_encoder_the_same_way(capsys):
    err = _error_of(["analyze", "--encoder", "tiny-randm"], capsys)
    assert "unknown --encoder 'tiny-randm'" in err and "tiny-random" in err


def test_analyze_hides_tensorflow_start_up_noise(tmp_path):
    from tests.conftest import write_toy_corpus

    corpus = write_toy_corpus(tmp_path / "bbc", docs_per_class=3)
    done = subprocess.run([sys.executable, "-m", "trainer", "analyze", "--data-dir", str(corpus), "--encoder",
                           "none", "--out-dir", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for noise in ("cuda drivers", "cpu_feature_guard", "cuInit", "oneDNN custom operations"):
        assert noise not in done.stderr, done.stderr[-2000:]
    assert (tmp_path / "out" / "analysis.json").exists()


def test_an_unwritable_output_folder_is_named_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    err = _error_of(["--data-dir", str(tmp_path / "missing"), "--checkpoint-dir", str(blocker / "ckpt"),
                     "--cache-dir", str(tmp_path / "cache")], capsys)
    first = err.splitlines()[0]
    assert f"--checkpoint-dir {blocker / 'ckpt'}: not writable" in first, err
    assert "does not exist" not in err  # refused before the data is looked at
