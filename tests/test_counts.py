"""Parameter / FLOP / cache counts against the instantiated models and by hand."""

import pytest
import torch

from zdiff.runtime import Transformer
from zdiff.spec import count_model, load_spec, preset_names


@pytest.mark.parametrize("name", preset_names())
def test_count_equals_reference_model_numel(name):
    spec = load_spec(name)
    with torch.device("meta"):
        model = Transformer(spec.model)
    assert count_model(spec.model).total_params == sum(p.numel() for p in model.parameters())


def test_zaya1_8b_matches_transformers_and_design_figures():
    from transformers import ZayaConfig, ZayaForCausalLM

    counts = count_model(load_spec("zaya1-8b").model)
    with torch.device("meta"):
        hf = ZayaForCausalLM(ZayaConfig())  # the defaults are ZAYA1-8B
    hf_total = sum(p.numel() for p in hf.parameters())  # tied weights are counted once
    assert counts.total_params == hf_total
    # DESIGN.md: ~8.3B without the 0.54B embedding matrix, 8.84B with it, ~0.75B active
    assert counts.embedding_params == 262272 * 2048
    assert round(counts.non_embedding_params / 1e9, 2) == 8.30
    assert round(counts.total_params / 1e9, 2) == 8.84
    assert round(counts.active_params / 1e9, 2) == 0.75
    assert counts.kv_bytes_per_token == 2 * 2 * 128 * 40 * 2  # K and V, 2 heads x 128, 40 layers, bf16


DENSE_PRESETS = {  # preset -> (transformers config class, its arguments for the real model)
    "llama-3.2-1b": ("LlamaConfig", dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                                         head_dim=64, tie_word_embeddings=True)),
    "qwen2.5-1.5b": ("Qwen2Config", dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                         tie_word_embeddings=True)),
    "qwen3-8b": ("Qwen3Config", dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                                     num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                     tie_word_embeddings=False)),
}


@pytest.mark.parametrize("name", list(DENSE_PRESETS))
def test_dense_presets_match_transformers(name):
    import transformers

    config_name, kw = DENSE_PRESETS[name]
    config = getattr(transformers, config_name)(**kw)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(config)
    spec = load_spec(name).model
    assert count_model(spec).total_params == sum(p.numel() for p in hf.parameters())  # tied: counted once
    assert count_model(spec).active_params == count_model(spec).non_embedding_params  # dense: every weight


def test_dense_tiny_counts_by_hand():
    m = load_spec("dense-tiny").model  # H=128, L=3, 4q/2kv x 32 with RMS q/k norm, I=256, V=264, untied
    c = count_model(m)
    H, L, D, I, V = 128, 3, 32, 256, 264
    assert c.attention_params == L * (H * 4 * D + 2 * H * 2 * D + 4 * D * H + 2 * D)
    assert c.mlp_params == L * 3 * H * I and c.router_params == c.expert_params == 0
    assert c.lm_head_params == V * H and c.other_params == L * 2 * H + H


def test_tiny_counts_by_hand():
    m = load_spec("zaya1-tiny").model  # H=128, L=4, 4q/2kv x 32, E=4 top-1 (+skip), I=384, R=32, V=264
    c = count_model(m, dtype_bytes=2)
    H, L, D, E, I, R, V = 128, 4, 32, 4, 384, 32, 264
    q, kv = 4 * D, 2 * D
    C = q + kv
    attn = H * q + H * kv + 2 * H * (kv // 2) + q * H + (C * 2 + C) + (C * D * 2 + C) + 2
    router = (H * R + R) + R + 2 * (R * R + R) + R * (E + 1)
    assert c.attention_params == L * attn
    assert c.router_params == L * router + (L - 1) * R
    assert c.expert_params == L * E * 3 * I * H
    assert c.active_expert_params == L * 1 * 3 * I * H
    assert c.other_params == L * 2 * H + H + L * 8 * H + 2 * H
    assert c.embedding_params == V * H and c.lm_head_params == 0
    assert c.cca_state_bytes_per_sequence == L * (C * 2 + kv // 2) * 2
    ctx = 100
    assert c.decode_flops_per_token(m, ctx) == 2 * (c.active_params + V * H) + 4 * 4 * D * ctx * L


def test_untied_head_counted_separately():
    c = count_model(load_spec("qwen3-moe-tiny").model)
    assert c.lm_head_params == c.embedding_params == 264 * 128
    assert c.non_embedding_params == c.total_params - 2 * 264 * 128
