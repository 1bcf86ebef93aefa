"""The sympy cost model (zdiff cost): part formulas against hand-computed values on small specs,
weights against zdiff.spec.counts, the acceptance Markov chain, DESIGN.md's H200 yardsticks,
and the CLI."""

import json
import math

import pytest

from conftest import run_cli
from zdiff.autotune import cost
from zdiff.autotune.cost import CostModel, default_acceptance, expected_tokens, load_acceptance
from zdiff.errors import ZdiffError
from zdiff.spec import count_model, load_spec
from zdiff.targets import TARGETS, Target, target_rates

# rates of 1 FLOP/s and 1 B/s make a part's seconds equal to max(FLOPs, bytes)
UNIT = Target("unit", "cuda", "sm_90", 32, 1, 1, 1e-12, 1e-12, measured_tflops=1e-12, measured_tbps=1e-12)


def test_parts_of_a_small_gqa_moe_match_hand_computed_values():
    """qwen3-moe-tiny: V 264, H 128, 3 layers, 4q/2kv x 32, 8 experts top-2 of width 128, linear router,
    untied head, block 8. B = 2, L = 10, P = 1 -> R = 8 + 8 = 16 rows, T = 32; the LM head runs on 2b - 1 = 15
    rows per sequence (the verify rows and the chosen block's draft rows), 30 in all."""
    spec = load_spec("qwen3-moe-tiny")
    forward = CostModel(spec, UNIT).forward(batch=2, context=10, proposals=1)
    assert forward.rows == 16
    proj = 3 * (128 * 128 + 128 * 64 + 128 * 64 + 128 * 128 + 2 * 32)  # q, k, v, o + q/k RMS weights
    expert = 3 * 3 * 128 * 128  # one expert, all layers
    distinct = 8 * (1 - 0.75 ** 32)  # E(1-(1-k/E)^T), k/E = 2/8, T = 32
    expected = {  # part: (FLOPs, bytes)
        "embedding": (0, 32 * 128 * 2),
        "attn_proj": (2 * proj * 32, proj * 2),
        "attention": (4 * 3 * 4 * 32 * (10 + 16) * 32, 2 * 10 * 768 + 32 * 768),  # 768 B of K/V per token
        "router": (2 * 3 * 128 * 8 * 32, 3 * 128 * 8 * 2),
        "experts": (2 * 2 * expert * 32, distinct * expert * 2),
        "lm_head": (2 * 264 * 128 * 30, 264 * 128 * 2),
        "norms": (4 * 128 * 7 * 32, (3 * 2 * 128 + 128) * 2),
    }
    assert set(forward.parts) == set(expected)  # plain GQA has no CCA conv part
    for name, (flops, nbytes) in expected.items():
        part = forward.parts[name]
        assert part.flops == pytest.approx(flops, rel=1e-12), name
        assert part.bytes == pytest.approx(nbytes, rel=1e-12), name
        assert part.seconds == pytest.approx(max(flops, nbytes), rel=1e-12), name
    assert forward.distinct_experts == pytest.approx(distinct)
    assert forward.parts["experts"].bound == "compute" and forward.parts["lm_head"].bound == "compute"


def test_cca_conv_part_and_ar_rows_on_zaya1_tiny():
    """zaya1-tiny: 4 layers, [q|k] = (4+2) x 32 = 192 channels, both conv kernels 2."""
    spec = load_spec("zaya1-tiny")
    conv = 4 * (192 * 2 + 192 + 192 * 32 * 2 + 192)  # depthwise + bias + grouped + bias = 52224
    assert cost.cca_conv_params(spec) == conv
    ar = CostModel(spec, UNIT).forward(batch=3, context=5, proposals=0)
    assert ar.rows == 1
    state = count_model(spec.model).cca_state_bytes_per_sequence
    assert ar.parts["cca_conv"].flops == 2 * conv * 3
    assert ar.parts["cca_conv"].bytes == conv * 2 + 3 * state
    # top-1 of 4 experts, 3 rows: 4(1-(3/4)^3) distinct experts
    assert ar.distinct_experts == pytest.approx(4 * (1 - 0.75 ** 3))


@pytest.mark.parametrize("preset, counts_embedding", [("zaya1-tiny", True), ("qwen3-moe-tiny", False)])
def test_weights_read_once_equal_the_spec_parameter_count(preset, counts_embedding):
    """With every expert touched, the weight symbols sum to zdiff.spec.counts' total (tied: the LM head
    is the embedding matrix; untied: the embedding is only gathered, so it is not read whole)."""
    spec = load_spec(preset)
    dims = cost.dimensions(spec)
    weights = (cost.W_PROJ + cost.W_CCA + cost.W_ROUTER + cost.W_NORMS + cost.E * cost.NL * 3 * cost.I * cost.H
               + cost.V * cost.H)
    c = count_model(spec.model)
    assert int(weights.subs(dims)) == c.total_params - (0 if counts_embedding else c.embedding_params)


def test_dense_mlp_part_reads_every_weight_every_step():
    """dense-tiny: 3 layers, H 128, I 256, untied head; no router or experts part, the MLP's weights are read
    whole by an AR step and by a TiDAR step alike, and the AR step's weight bytes are the whole model's."""
    spec = load_spec("dense-tiny")
    model = CostModel(spec, UNIT)
    ar, tidar = model.forward(batch=1, context=10, proposals=0), model.forward(batch=1, context=10, proposals=2)
    mlp = 3 * 3 * 128 * 256
    assert set(ar.parts) == {"embedding", "attn_proj", "attention", "mlp", "lm_head", "norms"}
    assert ar.parts["mlp"].flops == 2 * mlp * 1 and tidar.parts["mlp"].flops == 2 * mlp * tidar.rows
    assert ar.parts["mlp"].bytes == tidar.parts["mlp"].bytes == mlp * 2
    c = count_model(spec.model)
    weight_parts = ("attn_proj", "mlp", "lm_head", "norms")
    assert sum(ar.parts[p].bytes for p in weight_parts) == (c.total_params - c.embedding_params) * 2
    assert ar.distinct_experts == 0
    with pytest.raises(ZdiffError, match="dense-tiny is dense"):
        CostModel(spec, UNIT, routing=[1.0, 2.0])


def test_dense_8b_speculation_is_nearly_free_at_batch_one():
    """The dense regime on H200 rates: a Qwen3-8B step with 4 proposal blocks (80 rows) stays memory bound and
    costs within 5% of an AR step, where ZAYA1-8B's touches every expert and costs several AR steps."""
    rates = target_rates("h200")
    dense = CostModel(load_spec("qwen3-8b"), rates)
    ar, p4 = dense.forward(1, 4096, 0), dense.forward(1, 4096, 4)
    assert p4.bound == "memory" and p4.seconds / ar.seconds < 1.05
    moe = CostModel(load_spec("zaya1-8b"), rates)
    assert moe.forward(1, 4096, 4).seconds / moe.forward(1, 4096, 0).seconds > 3
    report = cost.cost_report(load_spec("qwen3-8b"), rates, 1, 4096, default_acceptance(16), max_proposals=8)
    assert report["recommended"]["P"] >= 3 and not report["moe"]
    assert "dense" in cost.format_cost_report(report)


def test_distinct_experts_uniform_and_histogram():
    T = cost.T
    uniform = cost.uniform_distinct_experts().subs({cost.E: 16, cost.K: 1, T: 64})
    assert float(uniform) == pytest.approx(16 * (1 - (15 / 16) ** 64))
    flat = cost.histogram_distinct_experts([5] * 16, top_k=1, num_experts=16).subs({cost.B: 1, cost.R: 64})
    assert float(flat) == pytest.approx(float(uniform))
    # all routing on one expert (plus the skip expert, which holds no weights): exactly 1 expert read
    peaked = cost.histogram_distinct_experts([7] + [0] * 15 + [3], top_k=1, num_experts=16)
    assert float(peaked.subs({cost.B: 4, cost.R: 64})) == pytest.approx(1 - 0.3 ** 256)
    with pytest.raises(ZdiffError, match="routing histogram"):
        cost.histogram_distinct_experts([1, 2], top_k=1, num_experts=16)


def test_a_measured_routing_histogram_changes_expert_bytes():
    spec = load_spec("examples/specs/zaya1-8b.yaml")
    skewed = CostModel(spec, TARGETS["h200"], routing=[8] + [1] * 15).forward(1, 4096, 1)
    uniform = CostModel(spec, TARGETS["h200"]).forward(1, 4096, 1)
    # 32 rows, one expert takes 8/23 of the routing, 15 take 1/23 each
    assert skewed.distinct_experts == pytest.approx(1 - (15 / 23) ** 32 + 15 * (1 - (22 / 23) ** 32))
    assert uniform.distinct_experts == pytest.approx(16 * (1 - (15 / 16) ** 32))
    assert skewed.parts["experts"].bytes < uniform.parts["experts"].bytes


def test_expected_tokens_hand_computed_chain():
    """b = 3, accept = [1/2, 1/4, 1/4], one proposal at level 0. Offsets 0, 1, 2 move like
    0 -> {0: 1/2, 1: 1/4, 2: 1/4}, 1 -> {0: 1/2, 1: 1/2}, 2 -> {0: 1}; stationary (4, 2, 1)/7;
    tokens per step 7/4, 3/2, 1 -> (7 + 3 + 1)/7 = 11/7."""
    accept = [0.5, 0.25, 0.25]
    assert expected_tokens(accept, (0,), 3) == pytest.approx(11 / 7)
    assert expected_tokens(accept, (0, 1, 2), 3) == pytest.approx(1.75)  # every level: the plain mean
    assert expected_tokens(accept, (), 3) == 1.0  # AR
    assert expected_tokens(accept, (0, 1), 3) > 11 / 7


def test_default_acceptance_and_level_search():
    accept = default_acceptance(16)
    assert len(accept) == 16 and sum(accept) == pytest.approx(1.0)
    assert accept[0] == pytest.approx(0.1)  # first draft accepted with probability 0.9
    every = tuple(range(16))
    mean = sum((n + 1) * p for n, p in enumerate(accept))
    assert expected_tokens(accept, every, 16) == pytest.approx(mean)
    gains = [cost.best_levels(accept, p, 16)[1] for p in range(0, 6)]
    assert gains[0] == 1.0 and all(a < b for a, b in zip(gains, gains[1:])) and gains[-1] < mean
    levels, tokens = cost.best_levels(accept, 2, 16)
    assert levels[0] == 0 and len(levels) == 2
    assert tokens == pytest.approx(max(expected_tokens(accept, (0, a), 16) for a in range(1, 16)))


def test_load_acceptance_formats(tmp_path):
    runs = {"tidar lossless": {"mode": "tidar", "tokens_per_step_histogram": [1, 1, 2, 0]},
            "ar lossless": {"mode": "ar", "tokens_per_step_histogram": [9, 0, 0, 0]}}
    generate_json = {"texts": ["x"], "runs": runs}
    path = tmp_path / "gen.json"
    path.write_text(json.dumps(generate_json))
    assert load_acceptance(path, 4) == [0.25, 0.25, 0.5, 0.0]
    path.write_text("[3, 1]")
    assert load_acceptance(path, 4) == [0.75, 0.25, 0.0, 0.0]
    for bad in ("[1, 2, 3, 4, 5]", "{}", "[-1, 2]", "not json"):
        path.write_text(bad)
        with pytest.raises(ZdiffError, match="--acceptance"):
            load_acceptance(path, 4)


def test_h200_yardsticks_batch_1():
    """DESIGN.md: AR step ~2.7 GB -> ~0.65 ms; a 3-proposal TiDAR step ~17.8 GB -> ~4.3 ms (4.17 TB/s)."""
    spec = load_spec("examples/specs/zaya1-8b.yaml")
    model = CostModel(spec, target_rates("h200"))
    ar, tidar = model.forward(1, 4096, 0), model.forward(1, 4096, 3)
    assert ar.seconds == pytest.approx(0.65e-3, rel=0.25) and ar.bytes == pytest.approx(2.7e9, rel=0.1)
    assert tidar.rows == 64 and tidar.distinct_experts > 15.5
    assert tidar.seconds == pytest.approx(4.3e-3, rel=0.25) and tidar.bytes == pytest.approx(17.8e9, rel=0.1)
    assert ar.bound == tidar.bound == "memory"


def test_h200_yardsticks_batch_32():
    """DESIGN.md: batch-32 AR touches ~14 experts (~5 ms); 3 proposals are compute bound (~9 ms). DESIGN.md's
    ~6.6 TFLOP counted the LM head over all 64 rows of a slot; the step runs it on 2b - 1 = 31 (1.07 of the
    2.2 TFLOP), so ~5.5 TFLOP."""
    spec = load_spec("examples/specs/zaya1-8b.yaml")
    model = CostModel(spec, target_rates("h200"))
    ar, tidar = model.forward(32, 4096, 0), model.forward(32, 4096, 3)
    assert ar.distinct_experts == pytest.approx(14, abs=0.1)
    assert ar.seconds == pytest.approx(5e-3, rel=0.25) and ar.bound == "memory"
    assert tidar.flops == pytest.approx(5.55e12, rel=0.05)
    assert tidar.parts["lm_head"].flops == 2 * 262272 * 2048 * 32 * 31
    assert tidar.seconds == pytest.approx(9e-3, rel=0.25) and tidar.bound == "compute"


def test_recommendation_picks_the_best_speedup_and_ar_at_batch_1():
    spec = load_spec("examples/specs/zaya1-8b.yaml")
    accept = default_acceptance(16)
    one = cost.cost_report(spec, target_rates("mi300x"), 1, 4096, accept, max_proposals=4)
    assert one["recommended"]["P"] == 0  # 1 expert read by AR vs ~16 by any TiDAR step: AR wins at batch 1
    big = cost.cost_report(spec, target_rates("mi300x"), 32, 4096, accept, max_proposals=4)
    speedups = [p["speedup"] for p in big["proposals"]]
    assert big["recommended"]["P"] == speedups.index(max(speedups)) and max(speedups) > 1
    # a card with more FLOP per byte keeps more proposals memory bound
    wide = cost.cost_report(spec, target_rates("mi355x"), 32, 4096, accept, max_proposals=6)
    narrow = cost.cost_report(spec, target_rates("h200"), 32, 4096, accept, max_proposals=6)
    assert wide["memory_bound_up_to"] > narrow["memory_bound_up_to"]


def test_cli_cost_h200_and_json():
    text = run_cli("cost", "examples/specs/zaya1-8b.yaml", "--target", "h200", "--batch", "1", "--context", "4096",
                   "--max-proposals", "3")
    assert text.returncode == 0, text.stderr
    assert "recommended on h200" in text.stdout and "(AR step)" in text.stdout
    out = run_cli("cost", "examples/specs/zaya1-8b.yaml", "--target", "h200", "--max-proposals", "3", "--json")
    report = json.loads(out.stdout)
    floors = {p["P"]: p["floor_ms"] for p in report["proposals"]}
    assert math.isclose(floors[0], 0.65, rel_tol=0.25) and math.isclose(floors[3], 4.3, rel_tol=0.25)


@pytest.mark.parametrize("args, message", [
    (("--target", "tpu"), "--target must be one of"),
    (("--target", "h200", "--batch", "0"), "--batch must be at least 1"),
    (("--target", "h200", "--context", "-1"), "--context must not be negative"),
    (("--target", "h200", "--acceptance", "/nonexistent.json"), "--acceptance: no such file"),
])
def test_cli_cost_errors(args, message):
    result = run_cli("cost", "zaya1-tiny", *args)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
