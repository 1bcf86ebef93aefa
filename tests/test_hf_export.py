"""`zdiff export`: transformers loads the export and computes zdiff's logits; import of an export is the identity."""

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open

import zdiff
from conftest import assert_close
from hf_models import tiny_llama, tiny_qwen2, tiny_qwen3, tiny_qwen3_moe, tiny_zaya
from zdiff.checkpoint.hf_export import export_hf, hf_index, parse_size
from zdiff.checkpoint.hf_import import import_hf
from zdiff.checkpoint.store import save_checkpoint
from zdiff.checkpoint.tensors import TensorSource
from zdiff.cli import main
from zdiff.errors import CheckpointError, ZdiffError
from zdiff.spec import load_spec, spec_from_dict


def _checkpoint(hf_model, tmp_path, diffusion=None):
    """A zdiff checkpoint from a random HF model (import), optionally with diffusion settings as conversion
    would give it, and its vocabulary grown by a mask row."""
    hf_dir, ckpt = tmp_path / "hf_in", tmp_path / "ckpt"
    hf_model.save_pretrained(hf_dir)
    import_hf(hf_dir, ckpt)
    if diffusion is None:
        return ckpt
    spec = load_spec(ckpt / "spec.yaml")
    model = zdiff.load_model(ckpt)
    from zdiff.train.convert import grow_vocab_rows

    V = spec.model.vocab_size
    grown = dataclasses.replace(spec, name="converted", model=dataclasses.replace(spec.model, vocab_size=V + 1),
                                diffusion=dataclasses.replace(spec.diffusion, mask_token_id=V,
                                                              **{"acceptance_levels": None, **diffusion}),
                                targets=("cpu", "h100"))
    grown = spec_from_dict(grown.to_dict())  # resolved, as the loader gives it
    state = grow_vocab_rows(model.state_dict(), V + 1)
    with torch.no_grad():
        state["embed.weight"][V].normal_(0, 0.1, generator=torch.Generator().manual_seed(V))
    new = type(model)(grown.model)
    new.load_state_dict(state)
    save_checkpoint(new, grown, tmp_path / "converted")
    return tmp_path / "converted"


def _hf_logits_match(ckpt, out, seed, length=21):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    model = zdiff.load_model(ckpt, dtype=torch.float32)
    if hasattr(getattr(hf.model.layers[0].mlp, "gate", None), "balancing_biases"):
        # transformers resets ZAYA's balancing biases to (0, ..., 0, -1) on load; copy the file's (checked in
        # test_export_writes_the_balancing_biases) so the comparison is of the forward
        for hf_layer, layer in zip(hf.model.layers, model.layers):
            hf_layer.mlp.gate.balancing_biases.copy_(layer.moe.router.balancing_bias)
    V = model.spec.vocab_size
    ids = torch.randint(0, V, (3, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected, actual = hf(ids).logits, model(ids)
    assert expected.shape == actual.shape == (3, length, V)
    assert expected.abs().max() > 0.5
    assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item(), what="logits")


def _same_checkpoint(a, b):
    assert load_spec(a / "spec.yaml") == load_spec(b / "spec.yaml")
    assert (a / "spec.yaml").read_text() == (b / "spec.yaml").read_text()
    sa, sb = TensorSource(a), TensorSource(b)
    assert sa.names() == sb.names()
    for name in sa.names():
        x, y = sa.get(name), sb.get(name)
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.view(-1).view(torch.uint8),
                                                                           y.view(-1).view(torch.uint8)), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zaya_export_loads_in_transformers_with_zdiff_logits(tmp_path, seed):
    ckpt = _checkpoint(tiny_zaya(seed), tmp_path, diffusion={"block_size": 4, "proposals": 2} if seed else None)
    out = export_hf(ckpt, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "zaya" and config["architectures"] == ["ZayaForCausalLM"]
    assert config["vocab_size"] == 96 + (1 if seed else 0)
    _hf_logits_match(ckpt, out, seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_qwen3_moe_export_loads_in_transformers_with_zdiff_logits(tmp_path, seed):
    ckpt = _checkpoint(tiny_qwen3_moe(seed, tie_word_embeddings=bool(seed % 2)), tmp_path,
                       diffusion={"block_size": 8, "proposals": 3} if seed else None)
    out = export_hf(ckpt, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe" and config["tie_word_embeddings"] == bool(seed % 2)
    names = set(TensorSource(out).names())
    assert "model.layers.2.mlp.experts.5.up_proj.weight" in names  # the hub's per-expert layout
    assert ("lm_head.weight" in names) != bool(seed % 2)
    _hf_logits_match(ckpt, out, seed)


@pytest.mark.parametrize("preset", ["zaya1-tiny", "qwen3-moe-tiny"])
def test_zdiff_native_presets_export_to_transformers(tmp_path, preset):
    """The demo's kind of checkpoint (a zdiff spec, byte vocabulary with the mask id, trained in zdiff)."""
    from hf_models import randomize_
    from zdiff.runtime import build_model

    spec = load_spec(preset)
    model = randomize_(build_model(spec.model, seed=1), seed=1)
    if not spec.model.moe.balancing_bias.enabled:  # as training leaves them: zero
        for layer in model.layers:
            layer.moe.router.balancing_bias.zero_()
    save_checkpoint(model, spec, tmp_path / "ckpt")
    out = export_hf(tmp_path / "ckpt", tmp_path / "export")
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (256, 257)
    assert json.loads((out / "config.json").read_text())["zdiff"]["tokenizer"] == "bytes"
    import_hf(out, tmp_path / "back")  # the import records that the text is byte ids
    assert json.loads((tmp_path / "back" / "import.json").read_text())["tokenizer"] == "bytes"
    _hf_logits_match(tmp_path / "ckpt", out, seed=1)


def test_export_writes_the_balancing_biases(tmp_path):
    ckpt = _checkpoint(tiny_zaya(4), tmp_path)
    out = export_hf(ckpt, tmp_path / "export")
    theirs = TensorSource(out).get("model.layers.1.mlp.gate.balancing_biases")
    ours = TensorSource(ckpt).get("layers.1.moe.router.balancing_bias")
    assert theirs.dtype == torch.float32 and torch.equal(theirs, ours) and ours[-1] != -1.0


@pytest.mark.parametrize("make", [tiny_zaya, tiny_qwen3_moe])
def test_import_of_export_is_the_identity(tmp_path, make):
    ckpt = _checkpoint(make(5), tmp_path, diffusion={"block_size": 4, "proposals": 2, "acceptance_levels": (0, 3)})
    export_hf(ckpt, tmp_path / "export", shard_bytes=parse_size("20KB"))
    assert (tmp_path / "export" / "model.safetensors.index.json").is_file()  # sharded
    import_hf(tmp_path / "export", tmp_path / "back")
    _same_checkpoint(ckpt, tmp_path / "back")
    spec = load_spec(tmp_path / "back" / "spec.yaml")
    assert spec.name == "converted" and spec.diffusion.acceptance_levels == (0, 3) and spec.targets == ("cpu", "h100")
    export_hf(tmp_path / "back", tmp_path / "again", shard_bytes=parse_size("20KB"))
    for file in sorted((tmp_path / "export").iterdir()):
        again = (tmp_path / "again" / file.name).read_bytes()
        if file.name == "config.json":  # the second export starts from the first's config: keys in another order
            assert json.loads(file.read_bytes()) == json.loads(again)
        else:
            assert file.read_bytes() == again, file.name


def test_a_bf16_checkpoint_round_trips_in_bf16(tmp_path):
    hf_dir = tmp_path / "hf_in"
    tiny_qwen3_moe(6).save_pretrained(hf_dir)
    import_hf(hf_dir, tmp_path / "ckpt", dtype=torch.bfloat16)
    out = export_hf(tmp_path / "ckpt", tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert TensorSource(out).dtype("model.layers.0.mlp.experts.3.gate_proj.weight") == torch.bfloat16
    import_hf(out, tmp_path / "back")
    _same_checkpoint(tmp_path / "ckpt", tmp_path / "back")


def test_export_bf16_casts_all_but_the_balancing_biases(tmp_path):
    ckpt = _checkpoint(tiny_zaya(0), tmp_path)
    out = export_hf(ckpt, tmp_path / "export", dtype=torch.bfloat16)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata()["format"] == "pt"
        dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
    assert {d for n, d in dtypes.items() if "balancing" not in n} == {"BF16"}
    assert {d for n, d in dtypes.items() if "balancing" in n} == {"F32"}


def test_8b_export_index_matches_transformers_names_and_shapes():
    """The index of an 8B-sized export, computed from the spec alone, against transformers' own model on meta."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from zdiff.checkpoint.hf_export import hf_config

    spec = load_spec("zaya1-8b")
    index = hf_index(spec, torch.bfloat16, parse_size("5GB"))
    _, cfg = hf_config(spec)
    config = AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config)
    theirs = {n: t for n, t in hf.state_dict().items() if n != "lm_head.weight"}  # tied to the embedding
    assert set(index["weight_map"]) == set(theirs)
    total = sum(t.numel() * (4 if "balancing" in n else 2) for n, t in theirs.items())
    assert index["metadata"]["total_size"] == total and 15e9 < total < 18e9
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    sizes = {f: sum(t.numel() * (4 if "balancing" in n else 2) for n, t in theirs.items()
                    if index["weight_map"][n] == f) for f in files}
    assert all(size <= 5 * 10**9 for size in sizes.values()) and len(files) == -(-total // (5 * 10**9))


def test_export_refusals(tmp_path):
    ckpt = _checkpoint(tiny_zaya(0), tmp_path)
    export_hf(ckpt, tmp_path / "export")
    with pytest.raises(ZdiffError, match="not empty"):
        export_hf(ckpt, tmp_path / "export")
    export_hf(ckpt, tmp_path / "export", force=True)
    with pytest.raises(ZdiffError, match="input"):
        export_hf(ckpt, ckpt / "inside", force=True)
    with pytest.raises(ZdiffError, match="shard-size"):
        parse_size("5 parsecs")
    assert main(["export", str(ckpt), str(tmp_path / "export")]) == 2
    assert main(["export", str(ckpt), str(tmp_path / "cli"), "--dtype", "fp32", "--shard-size", "30KB"]) == 0
    assert (tmp_path / "cli" / "model.safetensors.index.json").is_file()


def test_export_refuses_what_no_hf_type_can_hold(tmp_path):
    ckpt = _checkpoint(tiny_qwen3_moe(0), tmp_path)
    state = TensorSource(ckpt)
    spec = load_spec(ckpt / "spec.yaml")
    model = zdiff.load_model(ckpt)
    with torch.no_grad():
        model.layers[0].moe.router.balancing_bias[1] = 0.5
    save_checkpoint(model, spec, tmp_path / "biased")
    with pytest.raises(CheckpointError, match="balancing_bias is not zero"):
        export_hf(tmp_path / "biased", tmp_path / "x")
    plain = dataclasses.replace(spec, model=dataclasses.replace(spec.model, attention=dataclasses.replace(
        spec.model.attention, qk_norm="none")))
    save_checkpoint(zdiff.load_model(ckpt), plain, tmp_path / "plain")
    with pytest.raises(CheckpointError, match="no Hugging Face model type .*qk_norm"):
        export_hf(tmp_path / "plain", tmp_path / "x")
    assert state.names()  # the source was only read


def test_import_refuses_an_edited_export(tmp_path):
    ckpt = _checkpoint(tiny_zaya(0), tmp_path)
    out = export_hf(ckpt, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    config["zdiff"]["spec"]["model"]["norm_eps"] = 0.5
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="describe different models.*model.norm_eps"):
        import_hf(out, tmp_path / "back")


DENSE = {
    "llama, llama3 RoPE, tied": (tiny_llama, "llama", dict(tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})),
    "llama, attention bias": (tiny_llama, "llama", dict(attention_bias=True)),
    "qwen2, yarn": (tiny_qwen2, "qwen2", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0,
                                                               "factor": 4.0, "original_max_position_embeddings": 32})),
    "qwen3, linear, untied": (tiny_qwen3, "qwen3", dict(tie_word_embeddings=False, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
}


@pytest.mark.parametrize("case", list(DENSE))
def test_dense_export_loads_in_transformers_and_imports_back(tmp_path, case):
    """Llama / Qwen2.5 / Qwen3: the export is the model type it came from, transformers computes zdiff's logits
    (a converted vocabulary too), gate_up is split back into gate_proj / up_proj, and import of the export is the
    identity."""
    make, model_type, overrides = DENSE[case]
    ckpt = _checkpoint(make(3, **overrides), tmp_path, diffusion={"block_size": 4, "proposals": 2})
    out = export_hf(ckpt, tmp_path / "export", shard_bytes=parse_size("40KB"))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == model_type and config["vocab_size"] == 97
    names = set(TensorSource(out).names())
    assert {"model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"} <= names
    assert not any("gate_up" in n for n in names)
    _hf_logits_match(ckpt, out, seed=3)
    import_hf(out, tmp_path / "back")
    _same_checkpoint(ckpt, tmp_path / "back")
