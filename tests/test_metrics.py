import math

import pytest
import torch
import torch.nn.functional as F

from tinyinduct.config import DataConfig
from tinyinduct.data import induction_sources, make_probe
from tinyinduct.metrics import (
    best_induction_head,
    duplicate_token_score,
    head_scores,
    induction_score,
    masked_mean,
    per_position_loss,
    prev_token_score,
)

PROBE = make_probe(DataConfig(eval_batch_size=64), seed=11)


def one_hot_pattern(targets: torch.Tensor) -> torch.Tensor:
    """[batch, pos] key index per query -> a [batch, 1, pos, pos] pattern attending only there."""
    return F.one_hot(targets, targets.shape[1]).float()[:, None]


def induction_pattern(tokens):
    src = induction_sources(tokens)
    fallback = torch.zeros_like(src)  # BOS where there is nothing to induct from
    return one_hot_pattern(torch.where(src >= 0, src, fallback))


def prev_token_pattern(tokens):
    return one_hot_pattern((torch.arange(tokens.shape[1]) - 1).clamp(min=0).expand_as(tokens))


def fixed_offset_pattern(tokens, length):
    """The positional head that solves `[BOS, r, r]` of one length: attend to i - L + 1."""
    i = torch.arange(tokens.shape[1])
    return one_hot_pattern(torch.where(i - length + 1 >= 0, i - length + 1, 0).expand_as(tokens))


def test_hand_set_induction_head_scores_one():
    tokens = PROBE.tokens
    pattern = torch.cat([induction_pattern(tokens), prev_token_pattern(tokens)], dim=1)
    induction = induction_score(pattern, tokens, PROBE.second_copy)
    assert induction[0].item() == pytest.approx(1.0)
    assert induction[1].item() < 0.05
    prev = prev_token_score(pattern)
    assert prev[1].item() == pytest.approx(1.0)
    assert prev[0].item() < 0.35  # an induction head attends to i - 1 only by coincidence


def test_fixed_offset_positional_head_is_not_an_induction_head():
    tokens = PROBE.tokens
    longest = (tokens.shape[1] - 1) // 2
    for length in (longest, 16):
        pattern = fixed_offset_pattern(tokens, length)
        # it is perfect on the one probe length it matches...
        rows = (PROBE.second_copy.sum(1) == longest - 1)
        rows &= PROBE.second_copy[:, longest + 1] & PROBE.first_copy[:, 1]
        if length == longest:
            on_canonical = induction_score(pattern[rows], tokens[rows], PROBE.second_copy[rows])
            assert on_canonical.item() == pytest.approx(1.0)
        # ...and far from an induction head over the default probes
        assert induction_score(pattern, tokens, PROBE.second_copy).item() < 0.3


def test_duplicate_token_score():
    tokens = torch.tensor([[0, 3, 4, 3, 5, 4]])
    dup = torch.zeros(1, 1, 6, 6)
    dup[0, 0, :, 0] = 1.0
    dup[0, 0, 3] = torch.tensor([0, 1.0, 0, 0, 0, 0])  # 3 -> earlier 3
    dup[0, 0, 5] = torch.tensor([0, 0, 0.5, 0, 0, 0.5])  # half on the earlier 4
    assert duplicate_token_score(dup, tokens).item() == pytest.approx(0.75)


def test_per_position_loss_and_masked_mean():
    logits = torch.randn(2, 5, 7)
    tokens = torch.randint(0, 7, (2, 5))
    loss = per_position_loss(logits, tokens)
    assert loss.shape == (2, 4)
    expected = -logits[1, 2].log_softmax(-1)[tokens[1, 3]]
    assert loss[1, 2].item() == pytest.approx(expected.item(), rel=1e-6)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 2] = True
    assert masked_mean(loss, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    assert math.isnan(masked_mean(loss, torch.zeros_like(mask)).item())


def test_head_scores_keys_and_best_head():
    tokens = PROBE.tokens
    cache = {
        "blocks.0.attn.hook_pattern": torch.cat([prev_token_pattern(tokens)] * 2, dim=1),
        "blocks.1.attn.hook_pattern": torch.cat(
            [prev_token_pattern(tokens), induction_pattern(tokens)], dim=1),
    }
    scores = head_scores(cache, tokens, PROBE.second_copy)
    assert scores["heads/induction/L1H1"] == pytest.approx(1.0)
    assert scores["heads/prev_token/L0H0"] == pytest.approx(1.0)
    assert len(scores) == 3 * 4
    assert best_induction_head(scores) == ("L1H1", pytest.approx(1.0))
    # layer-0 heads are never the "best induction head"
    scores["heads/induction/L0H0"] = 5.0
    assert best_induction_head(scores)[0] == "L1H1"


def test_head_scores_default_mask_is_the_induction_mask():
    tokens = PROBE.tokens
    cache = {"blocks.0.attn.hook_pattern": induction_pattern(tokens)}
    from tinyinduct.data import induction_mask

    assert head_scores(cache, tokens) == head_scores(cache, tokens, induction_mask(tokens))
    assert head_scores(cache, tokens)["heads/induction/L0H0"] == pytest.approx(1.0)
