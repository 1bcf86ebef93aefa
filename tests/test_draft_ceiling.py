"""benchmarks/draft_ceiling.py: the ideal first draft's lossless acceptance, on Markov-chain "models" whose
answer is known in closed form (a next token that ignores the previous one: every draft can be right, 1; a
deterministic next token after a uniform one: 1 / V), a case where the best draft beats the marginal, and the
knapsack against a linear program and against random drafts."""

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from draft_ceiling import best_blind_draft, first_draft_ceiling  # noqa: E402


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


def test_the_best_blind_draft_can_beat_the_marginal():
    """Three of four equally likely next tokens are followed by a, the fourth by b: the marginal (3/4, 1/4) is
    accepted 3/4 * 3/4 + 1/4 * 1/4 = 0.625 of the time, always drafting a 0.75."""
    table = torch.full((3, 3), 1e-30, dtype=torch.float64)  # ids: 0 = a, 1 = b, 2 = the context token
    table[2] = torch.tensor([0.75, 0.25, 1e-30], dtype=torch.float64)  # after the context: a 3/4, b 1/4
    table[0, 0] = table[1, 1] = 1.0  # a -> a, b -> b
    got = first_draft_ceiling(MarkovModel(table), [2], banned=None)
    assert got["ceiling"] == pytest.approx(0.75, abs=1e-12)
    assert got["marginal"] == pytest.approx(0.75 * 0.75 + 0.25 * 0.25, abs=1e-12)


def _instance(seed, X, Y):
    gen = torch.Generator().manual_seed(seed)
    p_x = torch.softmax(3 * torch.randn(X, generator=gen, dtype=torch.float64), -1)
    p_y = torch.softmax(4 * torch.randn(X, Y, generator=gen, dtype=torch.float64), -1)  # sharp rows: real ties
    return p_x, p_y


def _acceptance(p_x, p_y, q):
    return float((p_x * torch.minimum(p_y, q[None, :]).sum(-1)).sum())


@pytest.mark.parametrize("seed", range(6))
def test_the_knapsack_beats_every_random_draft_and_scores_its_own_q(seed):
    p_x, p_y = _instance(seed, 5 + seed, 4 + seed)
    q, best = best_blind_draft(p_x, p_y)
    assert q.min() >= 0 and float(q.sum()) == pytest.approx(1.0, abs=1e-12)
    assert _acceptance(p_x, p_y, q) == pytest.approx(best, abs=1e-12)
    gen = torch.Generator().manual_seed(100 + seed)
    random_drafts = torch.softmax(3 * torch.randn(500, p_y.shape[1], generator=gen, dtype=torch.float64), -1)
    candidates = [p_x @ p_y, *torch.eye(p_y.shape[1], dtype=torch.float64), *random_drafts]
    assert max(_acceptance(p_x, p_y, c) for c in candidates) <= best + 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_the_knapsack_equals_a_linear_program(seed):
    """max sum_x p_x s_xy  s.t.  s_xy <= p(y | x), s_xy <= q_y, sum_y q_y = 1, all >= 0."""
    optimize = pytest.importorskip("scipy.optimize")
    p_x, p_y = _instance(seed, 6, 5)
    X, Y = p_y.shape
    cost = torch.cat([-(p_x[:, None].expand(X, Y)).flatten(), torch.zeros(Y, dtype=torch.float64)]).numpy()
    rows = []  # s_xy - q_y <= 0
    for x in range(X):
        for y in range(Y):
            row = torch.zeros(X * Y + Y, dtype=torch.float64)
            row[x * Y + y], row[X * Y + y] = 1, -1
            rows.append(row)
    bounds = [(0, float(p)) for p in p_y.flatten()] + [(0, None)] * Y
    equal = torch.cat([torch.zeros(X * Y), torch.ones(Y)]).double()[None].numpy()
    lp = optimize.linprog(cost, A_ub=torch.stack(rows).numpy(), b_ub=torch.zeros(len(rows)).numpy(),
                          A_eq=equal, b_eq=[1.0], bounds=bounds, method="highs")
    assert lp.status == 0
    assert best_blind_draft(p_x, p_y)[1] == pytest.approx(-lp.fun, abs=1e-9)
