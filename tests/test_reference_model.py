"""The reference model follows positions / predecessors / visibility, not just token order."""

import pytest
import torch

from conftest import assert_close
from zdiff.runtime import build_model
from zdiff.runtime.attention import predecessor_chain
from zdiff.spec import load_spec


@pytest.fixture(params=["zaya1-tiny", "qwen3-moe-tiny"])
def model(request):
    return build_model(load_spec(request.param).model, seed=1).eval()


def test_explicit_causal_pattern_equals_default(model):
    ids = torch.randint(0, 256, (2, 12))
    T = ids.shape[1]
    explicit = model(ids, positions=torch.arange(T), predecessors=torch.arange(T) - 1,
                     visible=torch.ones(T, T, dtype=torch.bool).tril())
    assert_close(explicit, model(ids), rtol=0, atol=0, what="logits")


def test_two_packed_sequences_equal_separate_runs(model):
    """Segments restart positions and predecessors: the second sequence must not see the first at all,
    through attention or through the CCA convolutions and delayed values."""
    a, b = torch.randint(0, 256, (1, 9)), torch.randint(0, 256, (1, 6))
    ids = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(9), torch.arange(6)])
    predecessors = torch.cat([torch.arange(9) - 1, torch.arange(6) - 1 + 9])
    predecessors[9] = -1
    visible = torch.zeros(15, 15, dtype=torch.bool)
    visible[:9, :9] = torch.ones(9, 9, dtype=torch.bool).tril()
    visible[9:, 9:] = torch.ones(6, 6, dtype=torch.bool).tril()
    packed = model(ids, positions=positions, predecessors=predecessors, visible=visible)
    assert_close(packed[:, :9], model(a), rtol=1e-5, atol=1e-5, what="first sequence")
    assert_close(packed[:, 9:], model(b), rtol=1e-5, atol=1e-5, what="second sequence")


def test_predecessors_matter_for_cca_only():
    """Changing who precedes a token changes a CCGQA model's output but not a plain GQA one's."""
    ids = torch.randint(0, 256, (1, 8))
    T = 8
    shuffled = torch.arange(T) - 1
    shuffled[5] = 2  # row 5 claims row 2 as its predecessor
    for name, should_change in (("zaya1-tiny", True), ("qwen3-moe-tiny", False)):
        m = build_model(load_spec(name).model, seed=0).eval()
        changed = (m(ids, predecessors=shuffled) - m(ids)).abs().amax(dim=-1)[0]
        assert bool(changed[5] > 1e-4) == should_change, name
        assert changed[:5].max() == 0  # rows before 5 never see row 5


def test_predecessor_chain():
    pred = torch.tensor([[-1, 0, 1, -1, 3]])
    chain = predecessor_chain(pred, 3)
    assert chain[1].tolist() == [[-1, 0, 1, -1, 3]]
    assert chain[2].tolist() == [[-1, -1, 0, -1, -1]]


def test_bf16_runs_and_tracks_fp64_on_the_same_weights():
    """bf16 compute against an fp64 run of the same (bf16-rounded) weights.

    Top-1 routing is discrete, so a near-tie may flip an expert for a token: judge each
    row's logits by cosine similarity rather than element-wise.
    """
    spec = load_spec("zaya1-tiny").model
    bf16 = build_model(spec, seed=2, dtype=torch.bfloat16).eval()
    fp64 = build_model(spec, seed=2, dtype=torch.bfloat16).to(torch.float64).eval()
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        lo, hi = bf16(ids), fp64(ids).float()
    assert lo.dtype == torch.float32  # logits are always fp32
    assert torch.isfinite(lo).all()
    cosine = torch.nn.functional.cosine_similarity(lo, hi, dim=-1)
    assert cosine.min() > 0.99, cosine
    assert (lo - hi).abs().max() > 0  # it really ran in bf16


def test_gradients_reach_every_used_parameter():
    spec = load_spec("zaya1-tiny").model
    m = build_model(spec, seed=0)
    ids = torch.randint(0, 256, (4, 16))
    out = m.forward_full(ids)
    torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    for name, p in m.named_parameters():
        if ".experts." in name:
            continue  # an expert that no token chose has no gradient, by design
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
