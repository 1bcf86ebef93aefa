"""RoPE frequencies and their long-context scalings against transformers' rope init functions."""

import pytest
import torch

from conftest import assert_close
from zdiff.errors import SpecError
from zdiff.runtime.rope import inverse_frequencies
from zdiff.spec import spec_from_dict
from zdiff.spec.schema import RopeScalingSpec

HF_PARAMS = {
    "linear": {"factor": 4.0},
    "llama3": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 4096, "beta_fast": 24.0, "beta_slow": 2.0},
    "yarn-untruncated": {"factor": 8.0, "original_max_position_embeddings": 2048, "truncate": False},
}
ZDIFF = {
    "linear": RopeScalingSpec("linear", 4.0),
    "llama3": RopeScalingSpec("llama3", 32.0, 8192, 1.0, 4.0),
    "yarn": RopeScalingSpec("yarn", 4.0, 4096, beta_fast=24.0, beta_slow=2.0),
    "yarn-untruncated": RopeScalingSpec("yarn", 8.0, 2048, truncate=False),
}


def _hf(kind: str, head_dim: int, theta: float):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = kind.split("-")[0]
    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                         max_position_embeddings=32768,
                         rope_parameters={"rope_type": rope_type, "rope_theta": theta, **HF_PARAMS[kind]})
    return ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")


@pytest.mark.parametrize("head_dim, theta", [(64, 5e5), (128, 1e6), (32, 1e4)])
@pytest.mark.parametrize("kind", list(ZDIFF))
def test_scaled_frequencies_equal_transformers(kind, head_dim, theta):
    spec = spec_from_dict({"model": {"vocab_size": 8, "hidden_size": 64, "num_layers": 1,
                                     "attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2,
                                                   "head_dim": head_dim, "rope_theta": theta,
                                                   "rope_scaling": _as_dict(ZDIFF[kind])},
                                     "mlp": {"kind": "swiglu", "ffn_size": 32}}})
    scaling = spec.model.attention.rope_scaling  # validated: yarn's attention factor resolved
    expected, expected_factor = _hf(kind, head_dim, theta)
    actual, factor = inverse_frequencies(head_dim, theta, scaling)
    plain, _ = inverse_frequencies(head_dim, theta)
    assert not torch.allclose(actual, plain)  # the scaling changes something
    assert_close(actual, expected.float(), rtol=1e-6, atol=0, what=f"{kind} inverse frequencies")
    assert factor == pytest.approx(expected_factor, rel=1e-12)


def _as_dict(scaling: RopeScalingSpec) -> dict:
    return {k: v for k, v in scaling.__dict__.items() if v is not None}


@pytest.mark.parametrize("scaling, path", [
    ({"kind": "llama3", "factor": 8.0, "original_max_position": 8192, "low_freq_factor": 1.0}, "high_freq_factor"),
    ({"kind": "yarn", "factor": 4.0}, "original_max_position"),
    ({"kind": "linear", "factor": 2.0, "low_freq_factor": 1.0}, "low_freq_factor"),
    ({"kind": "linear", "factor": 2.0, "attention_factor": 1.2}, "attention_factor"),
    ({"kind": "linear", "factor": 0.0}, "factor"),
    ({"kind": "llama3", "factor": 8.0, "original_max_position": 8192, "low_freq_factor": 4.0,
      "high_freq_factor": 4.0}, "high_freq_factor"),
])
def test_rope_scaling_errors_name_the_field(scaling, path):
    data = {"model": {"vocab_size": 8, "hidden_size": 64, "num_layers": 1,
                      "attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16,
                                    "rope_scaling": scaling},
                      "mlp": {"kind": "swiglu", "ffn_size": 32}}}
    with pytest.raises(SpecError, match=rf"^model\.attention\.rope_scaling\.{path}: "):
        spec_from_dict(data)
