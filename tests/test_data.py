import pytest
import torch

from tinyinduct.config import DataConfig
from tinyinduct.data import (
    BOS,
    RepeatedSegmentData,
    induction_mask,
    induction_sources,
    make_probe,
    probe_lengths,
    repeated_tokens_probe,
)


def config(**overrides):
    return DataConfig(**{**dict(d_vocab=512, seq_len=64, batch_size=256, min_copy_len=16,
                                max_copy_len=31), **overrides})


def copy_layout(batch):
    """Per sequence: (start of first copy, start of second copy, predictable length)."""
    out = []
    for first, second in zip(batch.first_copy, batch.second_copy):
        f, s = first.nonzero().flatten(), second.nonzero().flatten()
        out.append((f[0].item(), s[0].item(), len(s)))
        assert len(f) == len(s)
        assert torch.equal(f, torch.arange(f[0], f[0] + len(f)))  # contiguous
        assert torch.equal(s, torch.arange(s[0], s[0] + len(s)))
    return out


@pytest.mark.parametrize("kind", ["uniform", "bigram"])
def test_copies_are_where_the_mask_says(kind):
    batch = RepeatedSegmentData(config(kind=kind), seed=3).sample()
    tokens = batch.tokens
    assert torch.all(tokens[:, 0] == BOS) and torch.all(tokens[:, 1:] > 0)
    for b, (start1, start2, n) in enumerate(copy_layout(batch)):
        # the segment (n + 1 tokens: n predictable successors) repeats exactly
        assert torch.equal(tokens[b, start1:start1 + n + 1], tokens[b, start2:start2 + n + 1])
        assert start2 >= start1 + n + 1  # the copies do not overlap
    # masked positions whose token occurred once before are predictable from the tokens alone
    # (the others, a token repeated by chance, are ambiguous: scores leave them out)
    unambiguous = batch.second_copy & (induction_sources(tokens) >= 0)
    assert torch.all(induction_mask(tokens)[unambiguous])
    assert unambiguous.sum() > 0.9 * batch.second_copy.sum()


def test_lengths_honoured_and_offsets_vary():
    cfg = config(min_copy_len=10, max_copy_len=20)
    layout = copy_layout(RepeatedSegmentData(cfg, seed=0).sample(512))
    lengths = {n + 1 for _, _, n in layout}
    assert lengths == set(range(10, 21))
    distances = {s2 - s1 for s1, s2, _ in layout}
    assert len(distances) > 20  # the distance between copies takes many values
    assert len({s1 for s1, _, _ in layout}) > 10
    assert all(s2 + n + 1 <= cfg.seq_len for _, s2, n in layout)


def test_seed_reproduces_and_differs():
    a = RepeatedSegmentData(config(), seed=1).sample()
    b = RepeatedSegmentData(config(), seed=1).sample()
    c = RepeatedSegmentData(config(), seed=2).sample()
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.second_copy, b.second_copy)
    assert not torch.equal(a.tokens, c.tokens)


def test_bigram_background_follows_its_chain():
    data = RepeatedSegmentData(config(kind="bigram", bigram_successors=3), seed=5)
    batch = data.sample()
    tokens, succ = batch.tokens, data.successors
    in_copy = batch.first_copy | batch.second_copy
    in_copy = in_copy | in_copy.roll(1, 1)  # the token after a copy's last predictable slot too
    checked = 0
    for b in range(tokens.shape[0]):
        for t in range(2, tokens.shape[1]):
            if not (in_copy[b, t - 1] or in_copy[b, t] or in_copy[b, t - 2]):
                assert tokens[b, t].item() in succ[tokens[b, t - 1]].tolist()
                checked += 1
    assert checked > 1000


def test_canonical_probe_and_several_lengths():
    cfg = config(eval_batch_size=64)
    assert probe_lengths(64) == [7, 15, 23, 31]
    g = torch.Generator().manual_seed(0)
    canonical = repeated_tokens_probe(31, 4, 64, 512, g)
    assert torch.equal(canonical.tokens[:, 1:32], canonical.tokens[:, 32:63])
    assert torch.all(canonical.second_copy[:, 32:62]) and canonical.second_copy.sum() == 4 * 30
    probe = make_probe(cfg, seed=0)
    assert probe.tokens.shape == (64, 64)
    distances = {int(s.nonzero()[0] - f.nonzero()[0])
                 for f, s in zip(probe.first_copy, probe.second_copy)}
    assert {7, 15, 23, 31} <= distances and len(distances) > 8
    assert torch.equal(make_probe(cfg, seed=0).tokens, probe.tokens)


def test_induction_sources_from_tokens():
    tokens = torch.tensor([[0, 5, 6, 7, 9, 5, 6, 7, 6, 4, 4]])
    #                        0  1  2  3  4  5  6  7  8  9 10
    src = induction_sources(tokens)[0].tolist()
    # the third 6 (pos 8) has two earlier occurrences: ambiguous; the second 4 follows the first
    assert src == [-1, -1, -1, -1, -1, 2, 3, 4, -1, -1, -1]
    mask = induction_mask(tokens)[0].tolist()
    # 5 -> 6 and 6 -> 7 are predictable, 7 -> 6 is not (9 followed 7 before)
    assert mask == [False] * 5 + [True, True] + [False] * 4
