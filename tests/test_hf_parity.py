"""zdiff's reference model equals transformers' on imported checkpoints (fp32, 1e-4 relative)."""

import json

import pytest
import torch

import zdiff
from conftest import assert_close
from hf_models import tiny_llama, tiny_qwen2, tiny_qwen3, tiny_qwen3_moe, tiny_zaya
from zdiff.checkpoint.hf_import import import_hf
from zdiff.spec import load_spec


def _import(hf_model, tmp_path, **save_kw):
    hf_dir, out = tmp_path / "hf", tmp_path / "zdiff"
    hf_model.save_pretrained(hf_dir, **save_kw)
    import_hf(hf_dir, out)
    return zdiff.load_model(out), out


def _compare(hf_model, model, vocab, seed=0, batch=3, length=19):
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = hf_model(ids).logits
        actual = model(ids)
    assert expected.abs().max() > 0.5  # the random model is not degenerate
    assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item(), what="logits")


@pytest.mark.parametrize("seed", [0, 1])
def test_zaya_parity(tmp_path, seed):
    hf = tiny_zaya(seed)
    model, out = _import(hf, tmp_path)
    spec = load_spec(out / "spec.yaml")
    assert spec.model.attention.kind == "ccgqa" and spec.model.moe.router.kind == "zaya_mlp"
    _compare(hf, model, 96, seed)


def test_zaya_parity_with_attention_bias_and_wider_convs(tmp_path):
    hf = tiny_zaya(3, attention_bias=True, cca_time0=3, cca_time1=2, num_experts_per_tok=1)
    model, _ = _import(hf, tmp_path)
    assert model.spec.attention.cca.receptive_field == 3
    _compare(hf, model, 96, 3)


def test_zaya_balancing_bias_comes_from_the_file(tmp_path):
    """transformers resets the skip expert's bias to -1 on load; the file's value is the true one."""
    hf = tiny_zaya(0)
    with torch.no_grad():
        hf.model.layers[1].mlp.gate.balancing_biases[-1] = 0.37
    model, _ = _import(hf, tmp_path)
    assert model.layers[1].moe.router.balancing_bias[-1].item() == pytest.approx(0.37)
    assert model.layers[1].moe.router.balancing_bias.dtype == torch.float32


def test_skip_expert_routes_produce_zero_output(tmp_path):
    """Push every token to the skip expert: the MoE output must vanish in both implementations."""
    hf = tiny_zaya(0)
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.mlp.gate.balancing_biases[-1] = 10.0
    model, _ = _import(hf, tmp_path)
    _compare(hf, model, 96, 0)
    out = model.forward_full(torch.randint(0, 96, (1, 7)))
    assert all((r.experts == model.spec.moe.num_experts).all() and (r.weights == 0).all() for r in out.routings)


@pytest.mark.parametrize("seed", [0, 1])
def test_qwen3_moe_parity(tmp_path, seed):
    hf = tiny_qwen3_moe(seed)
    model, out = _import(hf, tmp_path)
    spec = load_spec(out / "spec.yaml")
    assert spec.model.attention.kind == "gqa" and spec.model.moe.top_k == 2 and not spec.model.tie_embeddings
    _compare(hf, model, 96, seed)


def test_qwen3_moe_parity_unnormalised_top_k(tmp_path):
    hf = tiny_qwen3_moe(2, norm_topk_prob=False, num_experts_per_tok=3)
    model, _ = _import(hf, tmp_path)
    assert not model.spec.moe.router.normalize_top_k
    _compare(hf, model, 96, 2)


def test_sharded_checkpoint_and_tokenizer_files(tmp_path):
    hf = tiny_zaya(0)
    hf_dir = tmp_path / "hf"
    hf.save_pretrained(hf_dir, max_shard_size="100KB")
    assert (hf_dir / "model.safetensors.index.json").is_file()
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    import_hf(hf_dir, tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    _compare(hf, zdiff.load_model(tmp_path / "out"), 96, 0)


def test_import_cast_to_bf16_and_load_in_fp32(tmp_path):
    hf = tiny_zaya(0)
    hf.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "out", dtype=torch.bfloat16)
    bf16 = zdiff.load_model(tmp_path / "out")
    assert bf16.embed.weight.dtype == torch.bfloat16
    assert bf16.layers[0].moe.router.balancing_bias.dtype == torch.float32
    ids = torch.randint(0, 96, (2, 11))
    with torch.no_grad():
        ref = hf(ids).logits
        low = bf16(ids)
        high = zdiff.load_model(tmp_path / "out", dtype=torch.float32)(ids)
    # bf16 weights: the answer moves, but stays close to the fp32 model on the same rounded weights
    assert_close(low, high, rtol=0.1, atol=0.1 * high.abs().max().item(), what="bf16 vs fp32 compute")
    assert (low - ref).abs().max() > 0  # the cast really happened


_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
_YARN_ROPE = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 32}
DENSE_CASES = {
    "llama-llama3-tied": (tiny_llama, {"tie_word_embeddings": True, "rope_parameters": _LLAMA3_ROPE}),
    "llama-attention-bias": (tiny_llama, {"attention_bias": True, "tie_word_embeddings": False}),
    "qwen2-yarn": (tiny_qwen2, {"rope_parameters": _YARN_ROPE, "max_position_embeddings": 128}),
    "qwen3-linear-untied": (tiny_qwen3, {"tie_word_embeddings": False,
                                         "rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}),
    "qwen3-plain": (tiny_qwen3, {}),
    "qwen3-yarn-mscale": (tiny_qwen3, {"rope_parameters": {**_YARN_ROPE, "factor": 8.0, "mscale": 1.5,
                                                           "mscale_all_dim": 0.5, "beta_fast": 16.0}}),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", list(DENSE_CASES))
def test_dense_parity(tmp_path, case, seed):
    """Llama / Qwen2.5 / Qwen3 dense checkpoints: logits equal transformers' past the original RoPE context
    (40 positions > 32), so a wrong scaling of the low frequencies shows."""
    make, overrides = DENSE_CASES[case]
    hf = make(seed, **overrides)
    model, out = _import(hf, tmp_path)
    spec = load_spec(out / "spec.yaml")
    assert spec.model.dense and spec.model.moe is None
    assert spec.model.tie_embeddings == bool(hf.config.tie_word_embeddings)
    assert spec.model.attention.qk_norm == ("rms" if case.startswith("qwen3") else "none")
    rope = overrides.get("rope_parameters", {}).get("rope_type")
    assert (spec.model.attention.rope_scaling.kind if spec.model.attention.rope_scaling else None) == rope
    _compare(hf, model, 96, seed, length=40)


def test_qwen2_has_qkv_bias_but_no_output_bias(tmp_path):
    model, _ = _import(tiny_qwen2(0), tmp_path)
    attn = model.layers[0].attn
    assert attn.q_proj.bias is not None and attn.v_proj.bias is not None and attn.o_proj.bias is None


@pytest.mark.parametrize("field, value", [
    ("mlp_bias", True), ("hidden_act", "gelu"), ("use_sliding_window", True),
    ("rope_parameters", {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}),
])
def test_dense_import_refuses_what_the_spec_cannot_express(tmp_path, field, value):
    from zdiff.errors import CheckpointError

    hf = tiny_llama(0) if field != "use_sliding_window" else tiny_qwen2(0)
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config[field] = value
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=field if field != "rope_parameters" else "rope_type = 'dynamic'"):
        import_hf(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dense_import_carries_tokenizer_and_chat_template(tmp_path):
    hf_dir = tmp_path / "hf"
    tiny_qwen3(0).save_pretrained(hf_dir)
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    (hf_dir / "chat_template.jinja").write_text(template)
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    import_hf(hf_dir, tmp_path / "out")
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == template
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()


def test_dense_names_map_every_parameter_to_hf_tensors():
    """What an export reads: every zdiff tensor of a dense layer has one HF name, or the HF names it concatenates
    (gate_up = gate_proj ; up_proj), and together they are exactly transformers' state dict."""
    from zdiff.checkpoint.hf_import import hf_concatenated_names, hf_name
    from zdiff.runtime import Transformer

    hf = tiny_qwen3(0, tie_word_embeddings=False)
    with torch.device("meta"):
        ours = Transformer(load_spec("dense-tiny").model).state_dict()  # 3 layers, untied, q/k norm
    assert load_spec("dense-tiny").model.num_layers == hf.config.num_hidden_layers
    names = set()
    for name in ours:
        names.update(hf_concatenated_names("qwen3", name) or [hf_name("qwen3", name)])
    assert names == set(hf.state_dict())


# config.json of the published checkpoints (the pre-transformers-5 layout: top-level rope_theta / rope_scaling)
PUBLISHED_CONFIGS = {
    "llama-3.2-1b": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2048, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": True,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "vocab_size": 128256},
    "qwen2.5-1.5b": {
        "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 1536, "intermediate_size": 8960,
        "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 12,
        "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": 131072, "tie_word_embeddings": True, "use_mrope": False, "use_sliding_window": False,
        "vocab_size": 151936},
    "qwen3-8b": {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 4096, "intermediate_size": 12288, "max_position_embeddings": 40960, "max_window_layers": 36,
        "model_type": "qwen3", "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
        "tie_word_embeddings": False, "use_sliding_window": False, "vocab_size": 151936},
}


@pytest.mark.parametrize("preset", list(PUBLISHED_CONFIGS))
def test_published_configs_import_as_the_presets(preset):
    from zdiff.checkpoint.hf_import import spec_from_hf_config

    assert spec_from_hf_config(PUBLISHED_CONFIGS[preset], preset).model == load_spec(preset).model
