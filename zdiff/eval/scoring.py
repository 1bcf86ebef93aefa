"""Exact AR scores of token sequences: batched causal forwards, log-probabilities in fp32.

This is what evaluation measures (lm-eval's loglikelihood, the server's logprobs / echo): the model's own
next-token distribution, p(x_j | x_<j), whatever sampler generated the text. A converted TiDAR model's
loss of AR quality shows here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenScores:
    """Per position j >= 1 of one sequence: log p(x_j | x_<j), whether x_j was the argmax, and the top-N."""

    logprobs: list[float]
    greedy: list[bool]
    top: list[list[tuple[int, float]]]  # empty lists when top_n is 0


def _batches(order: list[int], lengths: list[int], batch_size: int, max_tokens: int):
    """Indices grouped longest first, at most `batch_size` sequences and `max_tokens` padded tokens each."""
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == batch_size or lengths[batch[0]] * (len(batch) + 1) > max_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.no_grad()
def score_sequences(model, sequences: list[list[int]], top_n: int = 0, batch_size: int = 16,
                    max_tokens: int = 32768, progress=None) -> list[TokenScores]:
    """Score every token after the first of each sequence with one causal forward per batch (right padding:
    a causal model's real positions never see the pad). `progress(n)` after each batch of n sequences."""
    if any(len(s) < 1 for s in sequences):
        raise ValueError("every sequence needs at least one token")
    device = model.embed.weight.device
    lengths = [len(s) for s in sequences]
    order = sorted(range(len(sequences)), key=lambda i: -lengths[i])
    out: list[TokenScores | None] = [None] * len(sequences)
    for batch in _batches(order, lengths, batch_size, max_tokens):
        T = lengths[batch[0]]
        ids = torch.zeros(len(batch), T, dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, :lengths[i]] = torch.tensor(sequences[i], dtype=torch.long)
        logp = torch.log_softmax(model(ids.to(device)).float(), dim=-1).cpu()
        for row, i in enumerate(batch):
            n = lengths[i]
            dist, target = logp[row, :n - 1], ids[row, 1:n]
            chosen = dist.gather(-1, target[:, None])[:, 0]
            greedy = (dist.argmax(-1) == target).tolist()
            top = []
            if top_n:
                values, indices = dist.topk(min(top_n, dist.shape[-1]), dim=-1)
                top = [list(zip(ix.tolist(), v.tolist())) for ix, v in zip(indices, values)]
            out[i] = TokenScores(chosen.tolist(), greedy, top)
        if progress is not None:
            progress(len(batch))
    return out  # type: ignore[return-value]


def continuation_scores(model, pairs: list[tuple[list[int], list[int]]], max_length: int, batch_size: int = 16,
                        progress=None) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether every continuation token was the argmax) per pair;
    the context is cut from the left so that context + continuation fits `max_length` + 1 tokens."""
    sequences, starts = [], []
    for context, continuation in pairs:
        if not continuation:
            raise ValueError("an empty continuation has no likelihood to score")
        whole = (list(context) + list(continuation))[-(max_length + 1):]
        sequences.append(whole)
        starts.append(max(0, len(whole) - len(continuation) - 1))  # index into the j >= 1 scores
    scores = score_sequences(model, sequences, batch_size=batch_size, progress=progress)
    return [(sum(s.logprobs[start:]), all(s.greedy[start:])) for s, start in zip(scores, starts)]
