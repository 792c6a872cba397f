"""The load check (trainer/loadcheck.py): a candidate that a fresh process cannot load is never published."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_gate import KEYWORDS, KeywordModule, eval_set, versions

from trainer import gate, loadcheck
from trainer.export import export_saved_model
from trainer.warmup import write_warmup_requests

TEXTS = [b"football goal", b"shares and profit rise"]


def corrupt_variables(version_dir: Path) -> None:
    """Overwrites the variable data with garbage of the same size (a dying disk, a truncated copy)."""
    for shard in (version_dir / "variables").glob("variables.data-*"):
        shard.write_bytes(b"\xff" * shard.stat().st_size)


def export_checked(base: Path, *, corrupt: bool = False, input_name: str = "text", run: str = "run-1"):
    """export_saved_model with warm-up requests and the publish guard (load check on), as trainer.run wires it."""

    def write_extras(tmp: Path) -> None:
        write_warmup_requests(str(tmp), TEXTS, input_name=input_name)
        if corrupt:
            corrupt_variables(tmp)

    settings = gate.GateSettings(load_check="on")
    return export_saved_model(KeywordModule(KEYWORDS), base, write_extras=write_extras,
                              before_publish=lambda tmp: gate.guard_publish(
                                  tmp, eval_set=eval_set(), base_path=base, model_name="bertbc", run_name=run,
                                  run_logdir=None, settings=settings, child=loadcheck.PythonChild()))


def test_a_loadable_candidate_is_published_with_its_report(tmp_path):
    base = tmp_path / "models" / "bertbc"
    version, path = export_checked(base)
    assert version == 1
    report = json.loads((path / "model_card.json").read_text())["load_check"]
    # Two single-text requests and one batch of both (trainer/warmup.py), each replayed in the fresh process.
    assert report["ok"] is True and report["warmup_requests"] == 3, report
    assert report["seconds"] > 0


def test_a_candidate_that_cannot_load_is_refused(tmp_path):
    base = tmp_path / "models" / "bertbc"
    with pytest.raises(loadcheck.LoadCheckFailed, match=r"could not load .*\.tmp-export-.*: \w+") as refused:
        export_checked(base, corrupt=True)
    assert "\n" not in str(refused.value)
    assert refused.value.exit_code == gate.EXIT_LOAD_CHECK_FAILED == 4
    assert versions(base) == []
    rejected = tmp_path / "models" / "rejected" / "bertbc" / "run-1"
    assert str(rejected) in str(refused.value)
    card = json.loads((rejected / "model_card.json").read_text())
    assert card["load_check"]["ok"] is False and "gate" not in card  # refused before the gate ran


@pytest.mark.parametrize("input_name, signature, error", [
    ("text", "serving_default", None),
    ("txt", "serving_default", "txt"),  # a warm-up request TF Serving would fail the load on
    ("text", "classify", "signature 'classify'"),
])
def test_replay_runs_every_warmup_request_like_the_server(tmp_path, capsys, input_name, signature, error):
    """The child's code, in-process (the subprocess itself is covered above)."""
    folder = tmp_path / "1"
    export_saved_model(KeywordModule(KEYWORDS), tmp_path)
    write_warmup_requests(str(folder), TEXTS, input_name=input_name, signature_name=signature)
    code = loadcheck.main([str(folder)])
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    if error is None:
        assert (code, answer) == (0, {"ok": True, "requests": 3})
    else:
        assert code == 1 and answer["ok"] is False and error in answer["error"], answer


def test_child_usage_and_missing_folder(capsys):
    assert loadcheck.main([]) == 2
    assert loadcheck.main(["/no/such/version"]) == 1
    assert "/no/such/version" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
