"""Tiny random transformers models for parity tests (built locally, nothing downloaded)."""

from __future__ import annotations

import torch


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter and floating buffer a random non-trivial value.

    Scales and temperatures around 1 (so activations stay sane), everything else N(0, 0.1):
    nothing keeps its initial 0 / 1 / -1, so a weight that is loaded into the wrong place,
    or not loaded at all, changes the logits.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point() or "inv_freq" in name:
                continue
            noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float32)
            if any(key in name for key in ("scale", "norm", "temp", "layernorm")):
                tensor.copy_(1.0 + 0.2 * noise)
            elif "balancing_biases" in name:
                tensor.copy_(0.05 * noise)
            else:
                tensor.copy_(0.1 * noise)
    return model


def tiny_zaya(seed: int = 0, **overrides):
    from transformers import ZayaConfig, ZayaForCausalLM

    kw = dict(vocab_size=96, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, moe_intermediate_size=48, num_experts=4, router_hidden_size=16, eos_token_id=1,
              bos_token_id=2, pad_token_id=0)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = ZayaForCausalLM(ZayaConfig(**kw)).eval()
    return randomize_(model, seed)


def tiny_qwen3_moe(seed: int = 0, **overrides):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    kw = dict(vocab_size=96, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, moe_intermediate_size=40, intermediate_size=80, num_experts=6, num_experts_per_tok=2,
              norm_topk_prob=True, tie_word_embeddings=False)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**kw)).eval()
    return randomize_(model, seed)


_DENSE_SHAPE = dict(vocab_size=96, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=16, intermediate_size=80)


def _tiny_dense(config_cls, model_cls, seed: int, overrides: dict):
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**_DENSE_SHAPE, **overrides})).eval()
    return randomize_(model, seed)


def tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    return _tiny_dense(LlamaConfig, LlamaForCausalLM, seed, overrides)


def tiny_qwen2(seed: int = 0, **overrides):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _tiny_dense(Qwen2Config, Qwen2ForCausalLM, seed, overrides)


def tiny_qwen3(seed: int = 0, **overrides):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return _tiny_dense(Qwen3Config, Qwen3ForCausalLM, seed, overrides)
