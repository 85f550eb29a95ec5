"""The headline induction score measures what the model was trained for: the probe's copies of
training lengths; each probe length has its own score beside it."""

import pytest
import torch

from tinyinduct.config import DataConfig
from tinyinduct.data import induction_sources, make_probe
from tinyinduct.evaluate import _rows_of, in_distribution, scores_by_length
from tinyinduct.metrics import head_scores


def induction_pattern(tokens, works):  # [b, p], [b] bool -> [b, 1, p, p]
    """Attention to the token after the previous occurrence where `works`, else to BOS."""
    b, n = tokens.shape
    pattern = torch.zeros(b, 1, n, n)
    pattern[:, 0, :, 0] = 1.0
    src = induction_sources(tokens)
    for i in range(b):
        if works[i]:
            for q in range(n):
                if src[i, q] >= 0:
                    pattern[i, 0, q] = 0.0
                    pattern[i, 0, q, src[i, q]] = 1.0
    return pattern


def test_a_head_that_works_on_training_lengths_only_scores_one_on_the_headline():
    probe = make_probe(DataConfig(), seed=0)
    lengths = probe.copy_lengths
    assert probe.train_copy_lengths == (16, 31)
    assert set(lengths[~in_distribution(probe)].tolist()) == {7, 15}
    works = lengths >= 16  # generalises to no shorter copy, as the trained heads here
    pattern = induction_pattern(probe.tokens, works)
    cache = {"blocks.0.attn.hook_pattern": pattern, "blocks.1.attn.hook_pattern": pattern}
    pick = in_distribution(probe)
    headline = head_scores(_rows_of(cache, pick, 2), probe.tokens[pick],
                           probe.second_copy[pick])
    assert headline["heads/induction/L1H0"] == pytest.approx(1.0)
    whole = head_scores(cache, probe.tokens, probe.second_copy)["heads/induction/L1H0"]
    assert whole < 0.9  # what the probe as a whole said before: pulled down by lengths 7, 15
    by_length = scores_by_length(cache, probe, 2)
    assert by_length["heads/induction_len7/L1H0"] == pytest.approx(0.0)
    assert by_length["heads/induction_len15/L1H0"] == pytest.approx(0.0)
    assert by_length["heads/induction_len23/L1H0"] == pytest.approx(1.0)
    assert by_length["heads/induction_len31/L1H0"] == pytest.approx(1.0)
