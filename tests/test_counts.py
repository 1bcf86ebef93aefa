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
