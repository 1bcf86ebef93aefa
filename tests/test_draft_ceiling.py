"""benchmarks/draft_ceiling.py: the ideal first draft's lossless acceptance, on Markov-chain "models" whose
answer is known in closed form (a next token that ignores the previous one: every draft can be right, 1; a
deterministic next token after a uniform one: 1 / V)."""

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from draft_ceiling import first_draft_ceiling  # noqa: E402


class MarkovModel(torch.nn.Module):
    """Logits at every position = log_table[the token there]: p(y | ..., x) = table[x]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.log_table = table.log()
        self.spec = SimpleNamespace(vocab_size=table.shape[0])

    def forward(self, ids):
        return self.log_table[ids]


def test_a_next_token_that_ignores_the_previous_one_can_always_be_drafted():
    row = torch.softmax(torch.randn(7, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1)
    got = first_draft_ceiling(MarkovModel(row.expand(7, 7).clone()), [3, 1], banned=None)
    assert got["ceiling"] == pytest.approx(1.0, abs=1e-12)
    assert got["entropy_marginal"] == pytest.approx(got["entropy_after_x"], abs=1e-12)


@pytest.mark.parametrize("V", [5, 9])
def test_a_deterministic_successor_of_a_uniform_token_is_drafted_one_time_in_v(V):
    """After token 0: uniform over the other V - 1 ids; after x >= 1: always 1 + x mod (V - 1), a bijection,
    so the marginal is uniform too and the best draft is right with probability 1 / (V - 1)."""
    table = torch.full((V, V), 1e-30, dtype=torch.float64)
    table[0, 1:] = 1.0 / (V - 1)
    for x in range(1, V):
        table[x, 1 + x % (V - 1)] = 1.0
    got = first_draft_ceiling(MarkovModel(table), [3, 0], banned=None, batch=3)
    assert got["ceiling"] == pytest.approx(1.0 / (V - 1), rel=1e-9)
    assert got["entropy_after_x"] == pytest.approx(0.0, abs=1e-9)
    assert got["entropy_marginal"] == pytest.approx(math.log(V - 1), rel=1e-9)
