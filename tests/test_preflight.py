"""trainer/preflight.py: an unwritable output folder is one line naming the flag; GPU memory grows on demand.

The tests run as root in CI and here, and root writes anywhere, so the permission case drops to uid 65534
in a forked child (no exec: the interpreter may live where that uid cannot read). The other failures
(a folder under a regular file) fail for every uid.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import pytest

from trainer import preflight
from trainer.preflight import PreflightError, check_writable

NOBODY = 65534


def _check_as(uid: int, folders: dict[str, str]) -> str:
    """check_writable's error message ("" if it passed), run with this uid (forked when it differs)."""
    if os.getuid() == uid:
        try:
            check_writable(folders)
        except PreflightError as e:
            return str(e)
        return ""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to uid, report, exit without running pytest's cleanup
        os.close(read_end)
        message = ""
        try:
            os.setgid(uid)
            os.setuid(uid)
            check_writable(folders)
        except PreflightError as e:
            message = str(e)
        except BaseException as e:  # noqa: BLE001 (reported to the parent)
            message = f"unexpected {type(e).__name__}: {e}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


def test_writable_folders_pass_and_missing_ones_are_created(tmp_path):
    folders = {"--checkpoint-dir": str(tmp_path / "ckpt"), "--logdir": str(tmp_path / "logs" / "run")}
    check_writable(folders)
    assert all(pathlib.Path(f).is_dir() for f in folders.values())
    assert all(list(pathlib.Path(f).iterdir()) == [] for f in folders.values()), "the probe file is removed"


def test_a_folder_under_a_regular_file_names_the_flag_in_one_line(tmp_path):
    (tmp_path / "models").write_text("a file, not a folder")
    with pytest.raises(PreflightError) as err:
        check_writable({"--checkpoint-dir": str(tmp_path / "ckpt"), "--model-base-path": str(tmp_path / "models" / "bertbc")})
    message = str(err.value)
    assert message.startswith(f"--model-base-path {tmp_path / 'models' / 'bertbc'}: not writable by uid ")
    assert "\n" not in message and "Not a directory" in message
    assert isinstance(err.value, ValueError)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_root_owned_folder_is_refused_for_another_uid():
    """The NFS case: the volume's root belongs to root, mode 0755 (here 0500), and the trainer is not root."""
    with tempfile.TemporaryDirectory(prefix="bertbc-preflight-") as tmp:  # pytest's tmp_path is 0700 root
        _check_root_owned_folder(pathlib.Path(tmp))


def _check_root_owned_folder(tmp_path: pathlib.Path) -> None:
    tmp_path.chmod(0o755)  # let uid 65534 reach the folders below
    writable, locked = tmp_path / "logs", tmp_path / "checkpoints"
    writable.mkdir()
    locked.mkdir()
    if os.getuid() == 0:
        os.chown(writable, NOBODY, NOBODY)
    locked.chmod(0o500)
    uid = NOBODY if os.getuid() == 0 else os.getuid()
    assert _check_as(uid, {"--logdir": str(writable)}) == ""
    message = _check_as(uid, {"--logdir": str(writable), "--checkpoint-dir": str(locked)})
    assert message.startswith(f"--checkpoint-dir {locked}: not writable by uid {uid} ")
    assert "Permission denied" in message and "\n" not in message
    assert list(locked.iterdir()) == [] and list(writable.iterdir()) == []


def test_gpu_memory_growth_is_on_for_every_visible_gpu():
    import tensorflow as tf

    names = preflight.enable_gpu_memory_growth()
    gpus = tf.config.list_physical_devices("GPU")
    assert names == [g.name for g in gpus]
    assert all(tf.config.experimental.get_memory_growth(g) for g in gpus)


def test_gpu_memory_growth_sets_growth_before_use(monkeypatch):
    """On this CPU-only machine: the same call with two stand-in GPUs records growth for each of them."""
    import tensorflow as tf

    class Device:
        def __init__(self, name):
            self.name = name

    gpus = [Device("/physical_device:GPU:0"), Device("/physical_device:GPU:1")]
    calls = []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda d, on: calls.append((d.name, on)))
    assert preflight.enable_gpu_memory_growth() == ["/physical_device:GPU:0", "/physical_device:GPU:1"]
    assert calls == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]
