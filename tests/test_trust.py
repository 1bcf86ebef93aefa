"""Files zdiff reads from a user-supplied directory never run code: a planted pickle is refused, not executed."""

import pickle

import pytest
import torch

from conftest import run_cli
from training_helpers import micro_corpus, micro_spec
from zdiff.errors import ZdiffError
from zdiff.train.trainer import TRAINER_STATE, load_trainer_state, save_trainer_state


class _Payload:
    """Unpickling this creates `marker`: proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker):
    torch.save({"step": 1, "optimizer": {"state": {}, "param_groups": []}, "x": _Payload(marker)}, path)


def test_the_payload_runs_when_unpickled(tmp_path):
    """Power check: the planted file really executes under a plain unpickler."""
    marker = tmp_path / "ran"
    _plant(tmp_path / TRAINER_STATE, marker)
    torch.load(tmp_path / TRAINER_STATE, weights_only=False)
    assert marker.exists()


def test_trainer_state_refuses_a_planted_pickle(tmp_path):
    marker = tmp_path / "ran"
    _plant(tmp_path / TRAINER_STATE, marker)
    with pytest.raises(ZdiffError, match="refused to load"):
        load_trainer_state(tmp_path / TRAINER_STATE)
    assert not marker.exists()


def test_trainer_state_round_trips_a_real_optimizer(tmp_path):
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    sum(p.square().sum() for p in params).backward()
    optimizer.step()
    save_trainer_state(tmp_path / TRAINER_STATE, 7, optimizer.state_dict())
    state = load_trainer_state(tmp_path / TRAINER_STATE)
    assert state["step"] == 7
    fresh = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params])
    fresh.load_state_dict(state["optimizer"])
    for a, b in zip(optimizer.state.values(), fresh.state.values()):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=0, atol=0)
    assert fresh.param_groups[0]["betas"] == (0.9, 0.95)


@pytest.mark.parametrize("content, fragment", [
    (b"", "not a readable trainer state"),
    (b"PK\x03\x04 truncated", "not a readable trainer state"),
    (pickle.dumps([1, 2, 3]), "not a"),
])
def test_damaged_trainer_state_is_one_line(tmp_path, content, fragment):
    (tmp_path / TRAINER_STATE).write_bytes(content)
    with pytest.raises(ZdiffError, match=fragment):
        load_trainer_state(tmp_path / TRAINER_STATE)


def test_resume_from_a_planted_run_directory_is_refused(tmp_path):
    spec, corpus = micro_spec(tmp_path), micro_corpus(tmp_path, files=3)
    base = ["train", spec, "--data", corpus, "--mode", "ar", "--out", tmp_path / "run", "--steps", "1",
            "--batch-size", "2", "--seq-len", "16", "--eval-windows", "2"]
    ok = run_cli(*base)
    assert ok.returncode == 0, ok.stderr
    state = next((tmp_path / "run" / "checkpoints").glob("step_*")) / TRAINER_STATE
    marker = tmp_path / "ran"
    _plant(state, marker)
    resumed = run_cli(*base, "--resume")
    assert resumed.returncode == 2, resumed.stderr
    assert "refused to load" in resumed.stderr and "Traceback" not in resumed.stderr
    assert not marker.exists()


def test_an_emptied_cache_entry_is_rendered_again(tmp_path, monkeypatch):
    from zdiff.codegen.generated import cached_compile_dir, generated_model_class
    from zdiff.spec import load_spec

    monkeypatch.setenv("ZDIFF_CACHE", str(tmp_path / "cache"))
    spec = load_spec("zaya1-tiny")
    entry = cached_compile_dir(spec, "cpu")
    (entry / "model.py").write_text("")  # a full disk or a kill mid-write
    assert generated_model_class(spec, "cpu").__name__ == "GeneratedTransformer"
    assert "class GeneratedTransformer" in (entry / "model.py").read_text()


def test_a_damaged_kernels_dir_is_one_line(tmp_path):
    from zdiff.codegen.compile import compile_spec
    from zdiff.codegen.generated import generated_model_class
    from zdiff.spec import load_spec

    spec = load_spec("zaya1-tiny")
    compile_spec(spec, "cpu", tmp_path / "k", log=lambda *_: None, aot=False, check_targets=False)
    (tmp_path / "k" / "model.py").write_text("")
    with pytest.raises(ZdiffError, match="the generated model does not load"):
        generated_model_class(spec, "cpu", tmp_path / "k")


def test_an_empty_zdiff_cache_is_refused(monkeypatch):
    from zdiff.codegen.generated import cache_root

    monkeypatch.setenv("ZDIFF_CACHE", "")
    with pytest.raises(ZdiffError, match="ZDIFF_CACHE is set but empty"):
        cache_root()


@pytest.mark.parametrize("config, fragment", [
    ({"BLOCK_M": 64, "foo": 1}, "unknown launch option 'foo'"),
    ({"BLOCK_M": 64, "num_warps": "4"}, "num_warps must be an integer"),
    ({"BLOCK_M": True}, "BLOCK_M must be an integer"),
    ({"BLOCK_M": -16}, "BLOCK_M must be an integer in"),
    ({"BLOCK_M": 2**70}, "BLOCK_M must be an integer"),
])
def test_an_autotune_table_with_a_bad_config_is_one_line(tmp_path, config, fragment):
    import json

    from zdiff.autotune.tables import read_table

    path = tmp_path / "table.json"
    path.write_text(json.dumps({"method": "static", "kernels": {"rmsnorm": {"1": config}}}))
    with pytest.raises(ZdiffError, match=fragment):
        read_table(path)


def test_the_shipped_autotune_tables_pass_the_checks():
    from zdiff.autotune.tables import TABLES_DIR, read_table

    paths = sorted(TABLES_DIR.glob("*/*.json"))
    assert paths
    for path in paths:
        read_table(path)


def test_a_damaged_table_is_not_carried_into_a_new_set(tmp_path):
    import json

    from zdiff.autotune.tables import write_table

    folder = tmp_path / "h100"
    folder.mkdir()
    (folder / "broken.json").write_text(json.dumps({"method": "static", "kernels": {"k": {"1": {"foo": 1}}}}))
    (folder / "good.json").write_text(json.dumps({"method": "static", "kernels": {"k": {"1": {"BLOCK_M": 16}}}}))
    with pytest.warns(UserWarning, match="unknown launch option 'foo'.*left out of the new set"):
        write_table("h100", "fresh", {"k": {1: {"BLOCK_M": 32}}}, "static", root=tmp_path)
    assert sorted(p.name for p in folder.glob("*.json")) == ["fresh.json", "good.json"]


@pytest.mark.parametrize("argv", [
    ["compile", "zaya1-tiny", "--out", ""], ["train", "zaya1-tiny", "--mode", "ar", "--steps", "1", "--out", " "],
    ["autotune", "zaya1-tiny", "--out", ""], ["demo", "--out", ""],
])
def test_an_empty_output_path_is_refused(argv, capsys):
    from zdiff.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--out must not be empty" in err and err.count("\n") == 1, err
