"""Damaged imports and checkpoints end in one line (CheckpointError; exit 2 from the CLI): bad HF
configs, unreadable safetensors, integer weights, non-finite weights (unless allowed), bad tokenizer
and generation-config files, malformed shard indexes."""

import json
import shutil

import pytest
import torch
from cli_helpers import assert_error, run_main
from safetensors.torch import load_file, save_file

import zdiff
from zdiff.checkpoint.hf_import import spec_from_hf_config
from zdiff.checkpoint.store import save_checkpoint
from zdiff.errors import CheckpointError, ZdiffError
from zdiff.runtime import build_model
from zdiff.spec import load_spec


@pytest.fixture(scope="module")
def good_ck(tmp_path_factory):
    spec = load_spec("zaya1-tiny")
    path = tmp_path_factory.mktemp("good") / "ck"
    save_checkpoint(build_model(spec.model, seed=0), spec, path)
    return path


@pytest.fixture
def ck(tmp_path, good_ck):
    return shutil.copytree(good_ck, tmp_path / "ck")


@pytest.fixture(scope="module")
def zaya_config(tmp_path_factory):
    from hf_models import tiny_zaya

    path = tmp_path_factory.mktemp("zaya")
    tiny_zaya(0).save_pretrained(path)
    return path, json.loads((path / "config.json").read_text())


def _rewrite(ck, edit):
    tensors = load_file(ck / "model.safetensors")
    edit(tensors)
    save_file(tensors, ck / "model.safetensors")


@pytest.mark.parametrize("damage,fragment", [
    (lambda raw: b"", "not a readable safetensors file"),
    (lambda raw: raw[: len(raw) // 2], "not a readable safetensors file"),
    (lambda raw: raw[:64] + bytes(64) + raw[128:], "not a readable safetensors file"),
    (lambda raw: b"\x89PNG garbage" * 100, "not a readable safetensors file"),
])
def test_unreadable_safetensors(ck, damage, fragment):
    path = ck / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=fragment) as info:
        zdiff.load_model(ck)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_weights_of_the_right_shape(ck, dtype):
    _rewrite(ck, lambda t: t.__setitem__("embed.weight", torch.ones_like(t["embed.weight"], dtype=dtype)))
    expected = rf"tensor embed.weight has dtype {str(dtype)[6:]}; the model needs floating-point"
    with pytest.raises(CheckpointError, match=expected):
        zdiff.load_model(ck)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_refused_unless_allowed(ck, value):
    def poison(tensors):
        tensors["layers.1.moe.experts.down"][2, 3, 4] = value
        tensors["final_norm.weight"][0] = value

    _rewrite(ck, poison)
    with pytest.raises(CheckpointError, match=r"non-finite value\(s\) \(NaN or inf\); refusing to load"):
        zdiff.load_model(ck)
    model = zdiff.load_model(ck, allow_nonfinite=True)
    assert not torch.isfinite(model.final_norm.weight).all()


def test_generate_and_train_init_refuse_non_finite_weights(ck, tmp_path):
    _rewrite(ck, lambda t: t["embed.weight"].__setitem__((5, 5), float("nan")))
    code, _, err = run_main(["generate", ck, "--prompt", "x", "--max-new-tokens", "2"], seconds=60)
    assert_error(code, err, "tensor embed.weight has 1 non-finite value(s)")
    code, _, err = run_main(["train", "zaya1-tiny", "--mode", "tidar", "--init", ck, "--steps", "1",
                             "--out", tmp_path / "run"], seconds=60)
    assert_error(code, err, "tensor embed.weight has 1 non-finite value(s)")
    assert not (tmp_path / "run" / "final").exists()


def test_binary_spec_yaml(ck):
    (ck / "spec.yaml").write_bytes(b"\x00\xff\xfe" * 50)
    with pytest.raises(ZdiffError, match="is not UTF-8 text"):
        zdiff.load_model(ck)


def _word_level(vocab: dict) -> str:
    from tokenizers import Tokenizer, models

    return Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")).to_str()


@pytest.mark.parametrize("write,fragment", [
    (lambda p: p.write_text("not json at all {"), "not a readable tokenizer"),
    (lambda p: p.write_text("{}"), "not a readable tokenizer"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "not a readable tokenizer"),
    (lambda p: p.mkdir(), "tokenizer.json: is not a regular file"),
    (lambda p: p.write_text(_word_level({"[UNK]": 0, "a": 1, "far": 5000})),
     "has token id 5000, past the model's vocabulary (model.vocab_size 264)"),
])
def test_bad_tokenizer_json_is_an_error_never_bytes(ck, write, fragment):
    write(ck / "tokenizer.json")
    with pytest.raises(CheckpointError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        zdiff.load_model(ck)
    code, _, err = run_main(["generate", ck, "--prompt", "x", "--max-new-tokens", "2"], seconds=60)
    assert_error(code, err, fragment)


def test_a_valid_small_tokenizer_still_loads(ck):
    (ck / "tokenizer.json").write_text(_word_level({"[UNK]": 0, "a": 1, "b": 263}))
    assert zdiff.load_model(ck).spec.vocab_size == 264


@pytest.mark.parametrize("text,fragment", [
    ("{", "generation_config.json: not valid JSON"),
    ("[1, 2]", "generation_config.json: must hold a JSON object, got a list"),
    ('{"eos_token_id": 100000}', "eos_token_id must be an id in 0..263"),
    ('{"eos_token_id": [1, "x"]}', "eos_token_id must be an id in 0..263"),
    ('{"eos_token_id": true}', "eos_token_id must be an id in 0..263"),
])
def test_bad_generation_config(ck, text, fragment):
    (ck / "generation_config.json").write_text(text)
    with pytest.raises(CheckpointError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
        zdiff.load_model(ck)


def _sharded(ck):
    tensors = load_file(ck / "model.safetensors")
    (ck / "model.safetensors").unlink()
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[:10]}, ck / "a.safetensors")
    save_file({n: tensors[n] for n in names[10:]}, ck / "b.safetensors")
    return {n: ("a.safetensors" if i < 10 else "b.safetensors") for i, n in enumerate(names)}


@pytest.mark.parametrize("index,fragment", [
    (lambda wm: {"weight_map": list(wm)}, "weight_map must map tensor names to shard file names, got a list"),
    (lambda wm: [wm], "not a safetensors index"),
    (lambda wm: {"metadata": {}}, "not a safetensors index"),
    (lambda wm: {"weight_map": {**wm, next(iter(wm)): "../../etc/passwd"}}, "shard names must be file names"),
    (lambda wm: {"weight_map": {**wm, next(iter(wm)): "b.safetensors"}}, "lacks tensor(s)"),
])
def test_bad_shard_index(ck, index, fragment):
    weight_map = _sharded(ck)
    (ck / "model.safetensors.index.json").write_text(json.dumps(index(weight_map)))
    with pytest.raises(CheckpointError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        zdiff.load_model(ck)


def test_sharded_checkpoint_still_loads(ck):
    expected = load_file(ck / "model.safetensors")["final_norm.weight"]
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": _sharded(ck)}))
    assert torch.equal(zdiff.load_model(ck).final_norm.weight, expected)


@pytest.mark.parametrize("edit,fragment", [
    (lambda c: [c], "config.json must hold a JSON object, got a list"),
    (lambda c: {k: v for k, v in c.items() if k != "num_attention_heads"}, "config.json: no num_attention_heads"),
    (lambda c: {k: v for k, v in c.items() if k != "vocab_size"}, "config.json: no vocab_size"),
    (lambda c: {k: v for k, v in c.items() if k not in ("num_experts", "num_local_experts")},
     "no num_experts or num_local_experts"),
    (lambda c: {**c, "num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
    (lambda c: {**c, "hidden_size": "big"}, "hidden_size must be a positive integer, got 'big'"),
    (lambda c: {**c, "num_key_value_heads": 0}, "model.attention.num_kv_heads: must be positive"),
    (lambda c: {**c, "rms_norm_eps": "tiny"}, "model.norm_eps: must be a number"),
    (lambda c: {**c, "rope_parameters": [1, 2]}, "rope_parameters must be an object"),
    (lambda c: {**c, "layer_types": 7}, "layer_types must be a list of names"),
    (lambda c: {**c, "vocab_size": 10**12}, "model.vocab_size: must be at most"),
])
def test_bad_hf_configs(zaya_config, edit, fragment):
    _, cfg = zaya_config
    with pytest.raises(CheckpointError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        spec_from_hf_config(edit(cfg), "tiny")


@pytest.mark.parametrize("raw,fragment", [
    (b"[1, 2, 3]", "config.json must hold a JSON object, got a list"),
    (b"\xff\xfe\x00\x01", "config.json: not valid JSON"),
])
def test_import_cli_with_bad_config_file(tmp_path, zaya_config, raw, fragment):
    src = shutil.copytree(zaya_config[0], tmp_path / "hf")
    (src / "config.json").write_bytes(raw)
    code, _, err = run_main(["import", src, tmp_path / "out"], seconds=60)
    assert_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_import_refuses_integer_and_non_finite_weights(tmp_path, zaya_config):
    src = shutil.copytree(zaya_config[0], tmp_path / "hf")
    tensors = load_file(src / "model.safetensors")
    name = "model.layers.0.self_attn.o_proj.weight"
    tensors[name] = tensors[name].clone()
    tensors[name][0, 0] = float("nan")
    save_file(tensors, src / "model.safetensors")
    code, _, err = run_main(["import", src, tmp_path / "out"], seconds=60)
    assert_error(code, err, f"tensor {name} has 1 non-finite value(s)")
    code, _, err = run_main(["import", src, tmp_path / "out", "--allow-nonfinite"], seconds=60)
    assert code == 0, err
    tensors[name] = torch.zeros_like(tensors[name], dtype=torch.int32)
    save_file(tensors, src / "model.safetensors")
    code, _, err = run_main(["import", src, tmp_path / "out2"], seconds=60)
    assert_error(code, err, f"tensor {name} has dtype int32")
