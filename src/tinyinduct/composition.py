"""Weight-based circuit scores: Q/K/V composition between heads, and OV copying.

Right-multiplying conventions (TransformerLens): `W_OV[h] = W_V[h] @ W_O[h]` and
`W_QK[h] = W_Q[h] @ W_K[h].T`, both `[d_model, d_model]`. What head `a` writes is `x @ W_OV[a]`;
head `b` reads it through its query (`W_QK[b]`), its key (`W_QK[b].T`) or its value (`W_OV[b]`).
The composition score (Elhage et al. 2021) is `||A @ B||_F / (||A||_F ||B||_F)`: 1 when `a`
writes exactly into the subspace `b` reads, about `sqrt(d_head / d_model)`-ish for unrelated
matrices, hence the random-matrix baseline logged beside it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Tuple

import torch

COMPOSITION_KINDS = ("Q", "K", "V")


def composition_score(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """`||A @ B||_F / (||A||_F ||B||_F)` over the last two dims (0 where a factor is zero)."""
    norms = torch.linalg.matrix_norm(A) * torch.linalg.matrix_norm(B)
    return torch.linalg.matrix_norm(A @ B) / norms.clamp(min=1e-30)


def ov_qk(attn) -> Tuple[torch.Tensor, torch.Tensor]:
    """`(W_OV, W_QK)` of every head of one attention layer: `[n_heads, d_model, d_model]` each."""
    return attn.W_V @ attn.W_O, attn.W_Q @ attn.W_K.transpose(-1, -2)


@torch.no_grad()
def composition_scores(model) -> Dict[str, float]:
    """`comp/{Q,K,V}/L{a}H{i}->L{b}H{j}` for every head pair in layers `a < b`."""
    circuits = [ov_qk(block.attn) for block in model.blocks]
    out: Dict[str, float] = {}
    for la, (ov_a, _) in enumerate(circuits):
        for lb in range(la + 1, len(circuits)):
            ov_b, qk_b = circuits[lb]
            reads = {"Q": qk_b, "K": qk_b.transpose(-1, -2), "V": ov_b}
            for kind, B in reads.items():
                scores = composition_score(ov_a[:, None], B[None])  # [heads_a, heads_b]
                for i, row in enumerate(scores.tolist()):
                    for j, value in enumerate(row):
                        out[f"comp/{kind}/L{la}H{i}->L{lb}H{j}"] = value
    return out


@lru_cache(maxsize=16)
def composition_baseline(d_model: int, d_head: int, samples: int = 200, seed: int = 0) -> float:
    """Mean composition score of random Gaussian factors with the model's shapes: `A = V @ O`,
    `B = Q @ K.T` (`[d_model, d_head] @ [d_head, d_model]`). The same for Q, K and V pairs,
    since every product of two such rank-`d_head` matrices has this distribution."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(4, samples, d_model, d_head, generator=g)
    A = f[0] @ f[1].transpose(-1, -2)
    B = f[2] @ f[3].transpose(-1, -2)
    return composition_score(A, B).mean().item()


@torch.no_grad()
def copying_score(model, layer: int) -> torch.Tensor:  # [n_heads]
    """Eigenvalue positivity `sum(lambda) / sum(|lambda|)` of each head's full OV circuit
    `W_E @ W_OV @ W_U` (`[d_vocab, d_vocab]`): +1 for a head that copies the token it attends to,
    -1 for one that suppresses it. Computed from the `d_head x d_head` matrix
    `W_O @ W_U @ W_E @ W_V`, which has the same non-zero eigenvalues."""
    attn = model.blocks[layer].attn
    small = attn.W_O @ model.unembed.W_U @ model.embed.W_E @ attn.W_V  # [heads, d_head, d_head]
    if not torch.isfinite(small).all():  # diverged weights: LAPACK may crash on NaN input
        return torch.full(small.shape[:1], float("nan"))
    eig = torch.linalg.eigvals(small.double())
    return (eig.sum(-1).real / eig.abs().sum(-1).clamp(min=1e-30)).float()


def copying_scores(model) -> Dict[str, float]:
    """`heads/copying/L{l}H{h}` for every head."""
    return {f"heads/copying/L{layer}H{h}": v
            for layer in range(len(model.blocks))
            for h, v in enumerate(copying_score(model, layer).tolist())}


def weight_scores(model) -> Dict[str, float]:
    """Every weight-based score of one evaluation, with the baseline as `comp/baseline`."""
    cfg = model.cfg
    out = composition_scores(model)
    out["comp/baseline"] = composition_baseline(cfg.d_model, cfg.d_head)
    out.update(copying_scores(model))
    return out


def composition_table(row: Dict[str, float]) -> List[Tuple[str, str, str, float, float]]:
    """`(kind, writer, reader, score, baseline)` for each `comp/` key of a metrics row."""
    baseline = row.get("comp/baseline", float("nan"))
    table = []
    for key, value in row.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "comp" and parts[1] in COMPOSITION_KINDS:
            writer, reader = parts[2].split("->")
            table.append((parts[1], writer, reader, value, baseline))
    return table
