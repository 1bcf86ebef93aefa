"""TiDAR loss, schedule, balancing rule and conversion, checked against direct computation."""

import dataclasses
import math

import pytest
import torch

from conftest import assert_close
from zdiff.errors import ZdiffError
from zdiff.runtime import build_model
from zdiff.runtime.moe import expert_load, update_balancing_bias
from zdiff.spec import load_spec
from zdiff.spec.schema import DiffusionLossSpec
from zdiff.train import Objective
from zdiff.train.convert import add_mask_token
from zdiff.train.data import Tokenizer
from zdiff.train.schedule import learning_rate

MASK = 258


def _ce(logits, labels):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


@pytest.mark.parametrize("alpha", [1.0, 0.25])
def test_tidar_loss_equals_separately_computed_terms(alpha):
    spec = load_spec("zaya1-tiny")
    # data targets: the self-distillation term (on by default) has its own float64 reference (test_distillation)
    spec = dataclasses.replace(spec, diffusion=dataclasses.replace(spec.diffusion, loss_alpha=alpha,
                                                                   loss=DiffusionLossSpec(1.0, 0.0)))
    model = build_model(spec.model, seed=4).eval()
    S, b = 11, spec.diffusion.block_size  # 8: one full block and a ragged one of 3
    window = torch.randint(0, 256, (2, S + 1))
    x = window[:, :-1]
    parts = Objective(spec, "tidar", S)(model, window)

    ar = _ce(model(x), window[:, 1:])
    diff_logits = []
    for first in range(0, S, b):
        length = min(b, S - first)
        ids = torch.cat([x[:, :first], torch.full((2, length), MASK)], dim=1)
        vis = torch.ones(first + length, first + length, dtype=torch.bool).tril()
        vis[first:, first:] = True
        diff_logits.append(model(ids, visible=vis)[:, first:])
    diffusion = _ce(torch.cat(diff_logits, dim=1), x)  # mask row j predicts x_j
    assert_close(parts.ar, ar, rtol=1e-5, what="AR loss")
    assert_close(parts.diffusion, diffusion, rtol=1e-5, what="diffusion loss")
    assert_close(parts.total, (alpha * ar + diffusion) / (1 + alpha), rtol=1e-5, what="TiDAR loss")


def test_ar_objective_and_missing_mask_token():
    spec = load_spec("zaya1-tiny")
    model = build_model(spec.model, seed=0)
    window = torch.randint(0, 256, (3, 9))
    parts = Objective(spec, "ar", 8)(model, window)
    assert parts.diffusion is None
    assert_close(parts.total, _ce(model(window[:, :-1]), window[:, 1:]), rtol=1e-6, what="AR loss")
    no_mask = dataclasses.replace(spec, diffusion=dataclasses.replace(spec.diffusion, mask_token_id=None))
    with pytest.raises(ZdiffError, match="diffusion.mask_token_id is null"):
        Objective(no_mask, "tidar", 8)


def test_schedule_warmup_then_cosine():
    lrs = [learning_rate(s, 100, 1.0, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert learning_rate(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)


def test_balancing_bias_moves_toward_uniform_load():
    spec = load_spec("zaya1-tiny")
    model = build_model(spec.model, seed=0)
    out = model(torch.randint(0, 256, (2, 16)), return_routings=True)
    load = expert_load(out.routings, spec.model.moe.num_experts)
    assert load.shape == (4, 4)
    before = [layer.moe.router.balancing_bias.clone() for layer in model.layers]
    update_balancing_bias(model, torch.tensor([[5.0, 1.0, 3.0, 3.0]] * 4))
    rate = spec.model.moe.balancing_bias.update_rate
    for layer, old in zip(model.layers, before):
        delta = layer.moe.router.balancing_bias - old
        assert delta[:4].tolist() == pytest.approx([-rate, rate, 0.0, 0.0])
        assert delta[4] == 0  # the skip expert's bias is left alone


def test_conversion_adds_a_row_when_no_id_is_spare(tmp_path):
    spec = load_spec("zaya1-tiny")
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, vocab_size=258),
                               diffusion=dataclasses.replace(spec.diffusion, mask_token_id=None))
    model = build_model(spec.model, seed=0)
    tokenizer = Tokenizer(None, 259)  # byte tokenizer (mask id 258 is past this vocabulary)
    grown, new_spec, note = add_mask_token(model, spec, tokenizer)
    assert new_spec.model.vocab_size == 259 and new_spec.diffusion.mask_token_id == 258
    assert "new embedding row" in note
    assert torch.equal(grown.embed.weight[:258], model.embed.weight)
    assert_close(grown.embed.weight[258], model.embed.weight.double().mean(0), rtol=1e-6, what="new row")
    ids = torch.randint(0, 256, (1, 6))
    assert_close(grown(ids)[..., :258], model(ids), rtol=1e-5, atol=1e-6, what="old logits unchanged")


def test_conversion_uses_a_spare_id_of_a_padded_vocabulary(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordLevel

    vocab = {f"w{i}": i for i in range(250)}
    HFTokenizer(WordLevel(vocab, unk_token="w0")).save(str(tmp_path / "tokenizer.json"))
    spec = load_spec("zaya1-tiny")
    spec = dataclasses.replace(spec, diffusion=dataclasses.replace(spec.diffusion, mask_token_id=None))
    model = build_model(spec.model, seed=0)
    _, new_spec, note = add_mask_token(model, spec, Tokenizer(tmp_path / "tokenizer.json", 264))
    assert new_spec.diffusion.mask_token_id == 250 and new_spec.model.vocab_size == 264
    assert "spare id" in note
