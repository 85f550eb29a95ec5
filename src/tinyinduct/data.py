"""Synthetic repeated-subsequence data (`A B ... A B`), generated on the fly on the device.

Every sequence starts with BOS (token 0). One segment of random tokens, of a random length, sits
at a random place and is copied once, later, at a random distance: the offset between the copies
varies, so only a real induction circuit (find the earlier occurrence of the current token, predict
what followed it) can predict the second copy; a fixed-offset positional head cannot.

Masks are over *prediction positions*: position `i` predicts token `i + 1`.
- `second_copy`: `i` in the second copy whose next token is predictable by induction;
- `first_copy`: the same relative positions in the first copy (unpredictable, the baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .config import CHAIN_SEED_OFFSET, DataConfig

BOS = 0


@dataclass
class Batch:
    tokens: torch.Tensor  # [batch, pos] int64
    first_copy: torch.Tensor  # [batch, pos] bool
    second_copy: torch.Tensor  # [batch, pos] bool (the induction-predictable positions)
    # (min, max) copy length training uses, for a probe: its sequences in that range are the
    # in-distribution ones
    train_copy_lengths: tuple | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def copy_lengths(self) -> torch.Tensor:  # [batch] int64
        """Each sequence's segment length (its second copy's predictable positions, plus one)."""
        return self.second_copy.sum(1) + 1

    @staticmethod
    def cat(batches: Sequence[Batch]) -> Batch:
        return Batch(*(torch.cat([getattr(b, f) for b in batches])
                       for f in ("tokens", "first_copy", "second_copy")))


def place_copies(
    background: torch.Tensor,  # [batch, pos] int64
    segment: torch.Tensor,  # [batch, pos] int64, the first `length` tokens are copied
    length: torch.Tensor,  # [batch] int64
    start1: torch.Tensor,  # [batch] int64
    start2: torch.Tensor,  # [batch] int64, >= start1 + length
) -> Batch:
    """Write `segment[:length]` at `start1` and again at `start2`; return tokens and masks."""
    idx = torch.arange(background.shape[1], device=background.device)[None, :]
    length, start1, start2 = length[:, None], start1[:, None], start2[:, None]
    in_first = (idx >= start1) & (idx < start1 + length)
    in_second = (idx >= start2) & (idx < start2 + length)
    offset = torch.where(in_first, idx - start1, idx - start2).clamp(min=0)
    tokens = torch.where(in_first | in_second, segment.gather(1, offset), background)
    # the last token of a copy is followed by background: its successor is not predictable
    return Batch(tokens, in_first & (idx < start1 + length - 1),
                 in_second & (idx < start2 + length - 1))


class RepeatedSegmentData:
    """Seeded generator of training batches; `sample()` returns a fresh `Batch` each call."""

    def __init__(self, cfg: DataConfig, seed: int, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.successors: torch.Tensor | None = None  # [d_vocab, k] for kind=bigram
        if cfg.kind == "bigram":
            # the chain is part of the data distribution: fixed by the seed, on its own generator
            chain = torch.Generator(self.device).manual_seed(seed + CHAIN_SEED_OFFSET)
            self.successors = torch.randint(1, cfg.d_vocab, (cfg.d_vocab, cfg.bigram_successors),
                                            generator=chain, device=self.device)

    def _randint(self, low: int, high, shape) -> torch.Tensor:
        """Uniform integers in [low, high); `high` may be a tensor (elementwise bound)."""
        if isinstance(high, torch.Tensor):
            u = torch.rand(shape, generator=self.generator, device=self.device)
            return low + (u * (high - low)).long().clamp(max=high - low - 1)
        return torch.randint(low, high, shape, generator=self.generator, device=self.device)

    def background(self, batch_size: int) -> torch.Tensor:  # [batch, seq_len]
        cfg = self.cfg
        if self.successors is None:
            tokens = self._randint(1, cfg.d_vocab, (batch_size, cfg.seq_len))
        else:
            k = self.successors.shape[1]
            choice = self._randint(0, k, (batch_size, cfg.seq_len))
            tokens = torch.empty(batch_size, cfg.seq_len, dtype=torch.long, device=self.device)
            tokens[:, 0] = self._randint(1, cfg.d_vocab, (batch_size,))
            for t in range(1, cfg.seq_len):
                tokens[:, t] = self.successors[tokens[:, t - 1], choice[:, t]]
        tokens[:, 0] = BOS
        return tokens

    def sample(self, batch_size: int | None = None) -> Batch:
        cfg = self.cfg
        n = batch_size or cfg.batch_size
        length = self._randint(cfg.min_copy_len, cfg.max_copy_len + 1, (n,))
        slack = cfg.seq_len - 1 - 2 * length  # free positions around and between the copies
        a, b = self._randint(0, slack + 1, (n,)), self._randint(0, slack + 1, (n,))
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        start1 = 1 + lo
        start2 = start1 + length + (hi - lo)
        segment = self._randint(1, cfg.d_vocab, (n, cfg.seq_len))
        return place_copies(self.background(n), segment, length, start1, start2)


def probe_lengths(seq_len: int) -> list:
    """Segment lengths of the `[BOS, r, r, fill]` probes: four lengths up to the longest fit."""
    longest = (seq_len - 1) // 2
    return sorted({max(1, longest * k // 4) for k in (1, 2, 3, 4)})


def repeated_tokens_probe(
    length: int, n: int, seq_len: int, d_vocab: int, generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> Batch:
    """The canonical probe `[BOS, r_1..r_L, r_1..r_L]`, padded with random tokens to `seq_len`."""
    draw = dict(generator=generator, device=device)
    background = torch.randint(1, d_vocab, (n, seq_len), **draw)
    background[:, 0] = BOS
    segment = torch.randint(1, d_vocab, (n, seq_len), **draw)
    full = lambda v: torch.full((n,), v, dtype=torch.long, device=device)  # noqa: E731
    return place_copies(background, segment, full(length), full(1), full(1 + length))


def make_probe(cfg: DataConfig, seed: int, device: torch.device | str = "cpu") -> Batch:
    """The fixed evaluation batch every head score and copy loss is measured on.

    Half are `[BOS, r, r]` probes at several lengths (so the distance between copies takes
    several values), half are copies at random places on a uniform background. Always uniform
    random tokens, whatever the training background, so copy losses are comparable.
    """
    generator = torch.Generator(device).manual_seed(seed)
    lengths = probe_lengths(cfg.seq_len)
    per_length = max(1, cfg.eval_batch_size // (2 * len(lengths)))
    parts = [repeated_tokens_probe(L, per_length, cfg.seq_len, cfg.d_vocab, generator, device)
             for L in lengths]
    uniform = RepeatedSegmentData(
        DataConfig(**{**cfg.__dict__, "kind": "uniform"}), seed=seed + 1, device=device)
    parts.append(uniform.sample(cfg.eval_batch_size - per_length * len(lengths)))
    probe = Batch.cat(parts)
    probe.train_copy_lengths = (cfg.min_copy_len, cfg.max_copy_len)
    return probe


def induction_sources(tokens: torch.Tensor) -> torch.Tensor:  # [batch, pos] -> [batch, pos]
    """For each position `i`, `j + 1` where `j` is the one earlier occurrence of `tokens[i]`
    (the token an induction head should attend to); -1 where the token has no earlier occurrence,
    more than one (which one to follow is ambiguous), or occurred just before (`j + 1 == i`)."""
    n = tokens.shape[1]
    idx = torch.arange(n, device=tokens.device)
    same = (tokens[:, :, None] == tokens[:, None, :]) & (idx[None, :] < idx[:, None])  # j < i
    j = torch.where(same, idx, -1).amax(dim=-1)
    unique = same.sum(-1) == 1
    return torch.where(unique & (j + 1 < idx), j + 1, -1)


def induction_mask(tokens: torch.Tensor) -> torch.Tensor:  # [batch, pos] -> [batch, pos] bool
    """Positions predictable by induction, from the tokens alone: the current token occurred
    before and the token after that occurrence is the next token here."""
    src = induction_sources(tokens)
    nxt = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], -1)], dim=1)
    return (src >= 0) & (tokens.gather(1, src.clamp(min=0)) == nxt)
