"""The spec language: every malformed spec gets one message naming field, value and reason."""

import dataclasses

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from zdiff.errors import SpecError, ZdiffError
from zdiff.spec import dump_spec, load_spec, parse_spec, preset_names

TINY = (load_spec("zaya1-tiny"))


def tiny_dict() -> dict:
    return yaml.safe_load(dump_spec(TINY))


def edited(path: str, value) -> str:
    """The tiny spec as YAML text with one field replaced (value=DELETE removes it)."""
    data = tiny_dict()
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return yaml.safe_dump(data, sort_keys=False)


DELETE = object()

MALFORMED = [
    # (field edited, new value, expected path in message, expected reason fragment)
    ("model.attention.num_heads", 5, "model.attention.num_heads", "divisible by model.attention.num_kv_heads (2)"),
    ("model.attention.head_dim", 72, "model.attention.head_dim", "multiple of 16"),
    ("diffusion.block_size", 0, "diffusion.block_size", "at least 1"),
    ("targets", ["mi300x", "tpu"], "targets[1]", "must be one of mi300x, mi355x, h100, h200, cpu"),
    ("model.hidden_size", -128, "model.hidden_size", "must be positive"),
    ("model.num_layers", "four", "model.num_layers", "must be an integer"),
    ("model.num_layers", 4.0, "model.num_layers", "must be an integer"),
    ("model.tie_embeddings", "yes please", "model.tie_embeddings", "true or false"),
    ("model.attention.kind", "mla", "model.attention.kind", "one of gqa, ccgqa"),
    ("model.moe.top_k", 5, "model.moe.top_k", "must not exceed model.moe.num_experts (4)"),
    ("model.moe.router.hidden_size", None, "model.moe.router.hidden_size", "required for router kind zaya_mlp"),
    ("diffusion.mask_token_id", 264, "diffusion.mask_token_id", "must be in 0..263"),
    ("diffusion.acceptance_levels", [0, 4, 2], "diffusion.acceptance_levels", "strictly increasing"),
    ("diffusion.acceptance_levels", [0, 2, 8], "diffusion.acceptance_levels[2]", "must be in 0..7"),
    ("diffusion.acceptance_levels", [0, 2], "diffusion.acceptance_levels", "exactly diffusion.proposals (3)"),
    ("diffusion.acceptance_levels", [1, 2, 4], "diffusion.acceptance_levels", "must include 0"),
    ("diffusion.proposals", 9, "diffusion.proposals", "cannot exceed the 8 acceptance levels"),
    ("sampler.top_p", 0.0, "sampler.top_p", "must be in (0, 1]"),
    ("sampler.mix_weight", 0.5, "sampler.mix_weight", "only used by kind logit_mix"),
    ("model.attention.rope_fraction", 0.3, "model.attention.rope_fraction", "even whole number of the 32 head dims"),
    ("model.vocab_size", DELETE, "model.vocab_size", "is required"),
    ("model.attention.num_kv_head", 2, "model.attention.num_kv_head", "unknown key; did you mean 'num_kv_heads'?"),
    ("model.moe", [1, 2], "model.moe", "must be a mapping of MoESpec fields"),
    ("model.moe", DELETE, "model.moe", "is required (or model.mlp for a dense model)"),
    ("model.attention.output_bias", "no", "model.attention.output_bias", "must be true or false"),
]


@pytest.mark.parametrize("path,value,where,reason", MALFORMED, ids=[f"{m[0]}={m[1]!r}"[:60] for m in MALFORMED])
def test_malformed_spec_names_field_value_and_reason(path, value, where, reason):
    with pytest.raises(SpecError) as info:
        parse_spec(edited(path, value), source="bad.yaml")
    err = info.value
    message = str(err)
    assert err.path == where, message
    assert message.startswith(f"{where}: "), message
    assert reason in message
    if value is not DELETE and "unknown key" not in reason:
        shown = value[int(where[-2])] if where.endswith("]") else value  # an element of a list
        assert f"got {shown!r}" in message
    assert err.line is not None and f"bad.yaml:{err.line}" in message
    assert "\n" not in message


DENSE = load_spec("dense-tiny")


@pytest.mark.parametrize("edit, where, reason", [
    ({"moe": TINY.to_dict()["model"]["moe"]}, "model.mlp", "cannot be given together with model.moe"),
    ({"mlp": {"kind": "swiglu", "ffn_size": 0}}, "model.mlp.ffn_size", "must be positive"),
    ({"mlp": {"kind": "geglu", "ffn_size": 64}}, "model.mlp.kind", "must be one of swiglu"),
    ({"mlp": {"kind": "swiglu"}}, "model.mlp.ffn_size", "is required"),
])
def test_dense_mlp_rules(edit, where, reason):
    data = yaml.safe_load(dump_spec(DENSE))
    data["model"].update(edit)
    with pytest.raises(SpecError) as info:
        parse_spec(yaml.safe_dump(data, sort_keys=False), source="dense.yaml")
    message = str(info.value)
    assert message.startswith(f"{where}: ") and reason in message and "\n" not in message, message


def test_dense_spec_resolves_defaults():
    assert DENSE.model.dense and DENSE.model.moe is None and DENSE.model.ffn_size == 256
    qwen2 = load_spec("qwen2.5-1.5b").model.attention
    assert qwen2.bias and qwen2.output_bias is False
    llama = load_spec("llama-3.2-1b").model.attention
    assert llama.output_bias is False and llama.rope_scaling.kind == "llama3"


def test_error_line_points_at_the_offending_key():
    text = edited("model.attention.head_dim", 72)
    err = pytest.raises(SpecError, parse_spec, text).value
    assert text.splitlines()[err.line - 1].strip().startswith("head_dim: 72")


def test_ccgqa_only_field_rejected_for_gqa():
    data = yaml.safe_load(dump_spec(load_spec("qwen3-moe-tiny")))
    data["model"]["attention"]["cca"] = {"depthwise_kernel": 2, "grouped_kernel": 2}
    with pytest.raises(SpecError, match=r"model.attention.cca: is only allowed with kind: ccgqa"):
        parse_spec(yaml.safe_dump(data))


def test_duplicate_key_is_an_error():
    text = "name: a\nname: b\nmodel: {}\n"
    with pytest.raises(SpecError, match=r"name: is given twice \(line 2\)"):
        parse_spec(text)


def test_invalid_yaml_and_empty_spec_and_missing_file():
    with pytest.raises(ZdiffError, match=r"not valid YAML: found character .* \(spec:2\)"):
        parse_spec("model:\n\tvocab_size: 3\n")
    with pytest.raises(SpecError, match="spec: is empty"):
        parse_spec("")
    with pytest.raises(ZdiffError, match="spec file not found: 'no/such.yaml'"):
        load_spec("no/such.yaml")


def test_yaml12_floats_are_numbers():
    spec = parse_spec(edited("model.norm_eps", "PLACEHOLDER").replace("PLACEHOLDER", "1e-6"))
    assert spec.model.norm_eps == 1e-6
    assert load_spec("zaya1-8b").model.attention.rope_theta == 5.0e6


def test_defaults_are_resolved_into_the_spec():
    data = tiny_dict()
    del data["diffusion"]["acceptance_levels"]
    del data["model"]["attention"]["cca"]
    spec = parse_spec(yaml.safe_dump(data))
    assert spec.diffusion.acceptance_levels == (0, 4, 7)  # P = 3 spread over 0..7
    assert spec.model.attention.cca.receptive_field == 2
    data["diffusion"]["proposals"] = 8
    assert parse_spec(yaml.safe_dump(data)).diffusion.acceptance_levels == tuple(range(8))


def test_specs_are_frozen_and_hash_tracks_content():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TINY.model.hidden_size = 3
    other = parse_spec(edited("model.norm_eps", 1e-6))
    assert other.hash() != TINY.hash()
    assert parse_spec(dump_spec(TINY)).hash() == TINY.hash()


@pytest.mark.parametrize("name", preset_names())
def test_presets_load_and_round_trip(name):
    spec = load_spec(name)
    assert parse_spec(dump_spec(spec)) == spec


@settings(max_examples=40, deadline=None)
@given(
    kv=st.integers(1, 4), group=st.integers(1, 4), head_dim=st.sampled_from([16, 32, 48, 128]),
    experts=st.integers(1, 16), block=st.integers(1, 32), data=st.data(),
)
def test_valid_random_specs_round_trip(kv, group, head_dim, experts, block, data):
    top_k = data.draw(st.integers(1, experts))
    proposals = data.draw(st.integers(1, block))
    extra = st.sets(st.integers(1, max(1, block - 1)), min_size=proposals - 1, max_size=proposals - 1)
    levels = [0] + sorted(data.draw(extra))
    d = tiny_dict()
    d["model"]["attention"].update(num_heads=kv * group, num_kv_heads=kv, head_dim=head_dim)
    d["model"]["moe"].update(num_experts=experts, top_k=top_k)
    d["diffusion"].update(block_size=block, proposals=proposals, acceptance_levels=levels)
    spec = parse_spec(yaml.safe_dump(d))
    assert spec.diffusion.acceptance_levels == tuple(levels)
    assert parse_spec(dump_spec(spec)) == spec
