"""The decoding rules the engine and the reference loop share (`zdiff.generation.rules`): hand-computed cases
for each, and the check that both sides call these functions rather than their own copies."""

import torch

from zdiff.generation import cache, rules, slots, step_torch
from zdiff.generation.oracle import decode_cache, loop


def test_state_predecessors_follow_the_committed_tokens():
    # rf = 4: state row j holds the (4 - j)-th last token; its predecessor is row j - 1 while that token exists
    got = rules.state_predecessors(torch.tensor([0, 1, 3, 4, 9]), 4)
    assert got.tolist() == [[-1, -1, -1, -1], [-1, -1, -1, -1], [-1, -1, 1, 2], [-1, 0, 1, 2], [-1, 0, 1, 2]]
    assert rules.state_predecessors(torch.tensor([5]), 0).shape == (1, 0)


def test_rolled_state_keeps_the_last_rows_of_old_state_and_accepted_rows():
    state = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    new = -1 - torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    got = rules.rolled_state(state, new, torch.tensor([1, 4]))
    for s, n in enumerate((1, 4)):
        assert torch.equal(got[s], torch.cat([state[s], new[s, :n]])[-3:])
    assert torch.equal(rules.rolled_state(state, new, torch.tensor([0, 0])), state)


def test_delivered_tokens_stop_at_the_first_stop_token_within_the_budget():
    tokens = torch.tensor([[5, 9, 7, 9], [5, 6, 7, 8], [9, 1, 1, 1], [5, 6, 7, 8]])
    counts = torch.tensor([4, 4, 1, 3])
    stop_ids = torch.tensor([[9, -1], [9, -1], [9, 1], [-1, -1]])
    generated, max_new = torch.tensor([0, 0, 0, 5]), torch.tensor([10, 3, 10, 7])
    delivered, done = rules.delivered_tokens(tokens, counts, stop_ids, generated, max_new)
    # stop at the first 9 (2 tokens); budget 3 of 4; a stop token as the only token; budget 2 left of 3 tokens
    assert delivered.tolist() == [2, 3, 1, 2] and done.tolist() == [True, True, True, True]
    delivered, done = rules.delivered_tokens(tokens[:, :2], torch.tensor([2, 2, 0, 1]), stop_ids,
                                             torch.zeros(4, dtype=torch.long), torch.full((4,), 10))
    # a stop token past the step's count does not count; neither do rows of an idle slot (count 0)
    assert delivered.tolist() == [2, 2, 0, 1] and done.tolist() == [True, False, False, False]


def test_the_engine_and_the_reference_loop_call_the_one_rule():
    assert step_torch.state_predecessors is rules.state_predecessors is decode_cache.state_predecessors
    assert slots.rolled_state is rules.rolled_state is cache.rolled_state
    assert step_torch.delivered_tokens is rules.delivered_tokens is loop.delivered_tokens
