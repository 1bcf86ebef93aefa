"""A tiny model with a 8-token vocabulary (id 7 is the mask) whose distributions are far from uniform."""

import itertools

import torch

from zdiff.generation.oracle import sampling
from zdiff.runtime import Transformer, init_weights
from zdiff.spec import parse_spec

TINY_VOCAB_SPEC = """
name: vocab8
model:
  vocab_size: 8
  hidden_size: 32
  num_layers: 2
  residual_scaling: true
  attention: {kind: ccgqa, num_heads: 2, num_kv_heads: 1, head_dim: 16, rope_fraction: 0.5, qk_norm: l2}
  moe:
    num_experts: 2
    top_k: 1
    ffn_size: 32
    skip_expert: true
    router: {kind: zaya_mlp, hidden_size: 8}
diffusion: {block_size: 4, mask_token_id: 7, proposals: 3, acceptance_levels: [0, 1, 3]}
sampler: {kind: lossless}
"""

# the same vocabulary and pattern on a dense (Llama / Qwen-style) model: plain GQA, SwiGLU MLP
TINY_VOCAB_DENSE_SPEC = TINY_VOCAB_SPEC.replace("name: vocab8", "name: vocab8-dense").replace(
    "residual_scaling: true", "residual_scaling: false").replace(
    "{kind: ccgqa, num_heads: 2, num_kv_heads: 1, head_dim: 16, rope_fraction: 0.5, qk_norm: l2}",
    "{kind: gqa, num_heads: 2, num_kv_heads: 1, head_dim: 16, qk_norm: rms}").replace(
    """  moe:
    num_experts: 2
    top_k: 1
    ffn_size: 32
    skip_expert: true
    router: {kind: zaya_mlp, hidden_size: 8}
""", "  mlp: {kind: swiglu, ffn_size: 48}\n")


# the exactness tests' 8-token model with 16 experts: enough for the draft expert budget to bind
VOCAB8_MOE16 = (TINY_VOCAB_SPEC.replace("name: vocab8", "name: vocab8-moe16")
                .replace("num_experts: 2", "num_experts: 16").replace("ffn_size: 32", "ffn_size: 16"))


def tiny_moe16_model():
    """VOCAB8_MOE16 with weights that give varied text and accepted drafts (std 0.6)."""
    spec = parse_spec(VOCAB8_MOE16)
    return init_weights(Transformer(spec.model), seed=4, std=0.6).eval(), spec


def tiny_vocab_model(seed: int = 0, dense: bool = False, std: float = 0.35):
    spec = parse_spec(TINY_VOCAB_DENSE_SPEC if dense else TINY_VOCAB_SPEC)
    assert spec.model.dense == dense
    model = init_weights(Transformer(spec.model), seed=seed, std=std).eval()
    return model, spec


def chi_square_p_value(counts: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Pearson's goodness-of-fit test; cells expected below 5 are pooled into one."""
    counts, probs = counts.double().flatten(), expected_probs.double().flatten()
    n = counts.sum()
    expected = probs * n
    small = expected < 5
    if small.any():
        counts = torch.cat([counts[~small], counts[small].sum().view(1)])
        expected = torch.cat([expected[~small], expected[small].sum().view(1)])
    keep = expected > 0
    assert counts[~keep].sum() == 0, "samples landed where the target has probability 0"
    counts, expected = counts[keep], expected[keep]
    stat = ((counts - expected) ** 2 / expected).sum()
    dof = len(counts) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))


def exact_ar_distribution(model, prompt, length, params, mask=7):
    """P(x_1..x_length | prompt) for every sequence, by enumeration (mask id excluded)."""
    vocab = [t for t in range(model.spec.vocab_size) if t != mask]
    table = {}
    for seq in itertools.product(vocab, repeat=length):
        prob = 1.0
        for j in range(length):
            logits = model(torch.tensor([prompt + list(seq[:j])]))[0, -1]
            prob *= sampling.probabilities(logits, params)[seq[j]].item()
        table[seq] = prob
    return table


def counts_against(tokens, table):
    index = {seq: i for i, seq in enumerate(table)}
    counts = torch.zeros(len(table))
    for t in tokens:
        counts[index[tuple(t)]] += 1
    return counts, torch.tensor(list(table.values()))


def logit_mix_tables(model, prompt, w: float, params, block_size: int, mask: int = 7):
    """(mixed, plain): exact P(x_1, x_2) of two new tokens under logit-mix(w) and under plain AR sampling.

    x_1 comes from p; x_2 is verified against softmax(w z_AR + (1-w) z_draft), z_draft the prefill layout's
    block slot 1 (the block saw the prompt only; the engine's first step and the loop's prefill both draft
    from it)."""
    from zdiff.pattern import prefill_pattern

    vocab = [t for t in range(model.spec.vocab_size) if t != mask]
    pattern = prefill_pattern(len(prompt), block_size)
    block = model(torch.tensor([prompt + [mask] * block_size]), positions=pattern.positions(),
                  predecessors=pattern.predecessors(), visible=pattern.dense_mask())[0]
    p_c = sampling.probabilities(block[len(prompt) - 1], params)
    z_draft = block[len(prompt) + 1]
    mixed, plain = {}, {}
    for c in vocab:
        z_ar = model(torch.tensor([prompt + [c]]))[0, -1]
        target = sampling.probabilities(w * z_ar + (1 - w) * z_draft, params)
        ar = sampling.probabilities(z_ar, params)
        for x in vocab:
            mixed[(c, x)] = p_c[c].item() * target[x].item()
            plain[(c, x)] = p_c[c].item() * ar[x].item()
    return mixed, plain


class FailingForward:
    """A forward pre-hook that raises while armed: a step failing inside the model, as a device error would."""

    def __init__(self, model):
        self.armed = False
        model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        if self.armed:
            raise RuntimeError("injected failure")
