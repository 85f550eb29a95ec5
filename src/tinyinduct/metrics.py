"""Metric functions over attention patterns, logits and tokens (no training code), and the
causal K/Q mechanism attribution, which reruns the model's forward pass with hooks that remove
earlier heads from one input of a layer.
Weight-only scores (composition, copying) live in `composition.py`, phase change in `phase.py`.

Conventions: `pattern` is `[batch, head, query_pos, key_pos]` (TransformerLens `hook_pattern`);
position `i` of `logits` predicts token `i + 1`. Head scores are plain means of attention weight
(not TransformerLens `head_detector`'s `mul` form), so a perfect head scores 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict

import torch
import torch.nn.functional as F

from .data import induction_mask, induction_sources
from .hooks import direct_path_hooks

if TYPE_CHECKING:
    from .model import AttnOnlyTransformer


def per_position_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting `tokens[:, i+1]` at position i: `[batch, pos - 1]`."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(),
                           reduction="none").view(tokens.shape[0], -1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is true (NaN if it is nowhere true)."""
    mask = mask[..., : values.shape[-1]]
    return values[mask].mean() if mask.any() else values.new_tensor(float("nan"))


def induction_score(
    pattern: torch.Tensor,  # [batch, head, q, k]
    tokens: torch.Tensor,  # [batch, pos]
    mask: torch.Tensor | None = None,  # [batch, pos] bool; default induction_mask(tokens)
    sources: torch.Tensor | None = None,  # [batch, pos]; induction_sources(tokens), if at hand
) -> torch.Tensor:  # [head]
    """Mean attention from each scored position to the token after the previous occurrence of
    the current token. Scored: `mask` positions (default: those predictable by induction)."""
    src = induction_sources(tokens) if sources is None else sources
    mask = induction_mask(tokens) if mask is None else mask
    mask = mask & (src >= 0)
    index = src.clamp(min=0)[:, None, :, None].expand(-1, pattern.shape[1], -1, 1)
    to_src = pattern.gather(-1, index).squeeze(-1)  # [batch, head, q]
    return (to_src * mask[:, None]).sum((0, 2)) / mask.sum().clamp(min=1)


def prev_token_score(pattern: torch.Tensor) -> torch.Tensor:  # [batch, head, q, k] -> [head]
    """Mean attention from position i to i - 1, over i >= 1."""
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, 2))


def duplicate_token_score(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean total attention to earlier occurrences of the current token, over positions that
    have one: `[head]`."""
    n = tokens.shape[1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)
    dup = (tokens[:, :, None] == tokens[:, None, :]) & earlier  # [batch, q, k]
    has = dup.any(-1)  # [batch, q]
    mass = (pattern * dup[:, None]).sum(-1)  # [batch, head, q]
    return (mass * has[:, None]).sum((0, 2)) / has.sum().clamp(min=1)


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def head_scores(
    cache: Dict[str, torch.Tensor], tokens: torch.Tensor, mask: torch.Tensor | None = None
) -> Dict[str, float]:
    """`heads/{induction,prev_token,duplicate}/L{l}H{h}` for every head in a cache."""
    out: Dict[str, float] = {}
    sources = induction_sources(tokens)  # the same targets for every layer
    mask = induction_mask(tokens) if mask is None else mask
    layer = 0
    while f"blocks.{layer}.attn.hook_pattern" in cache:
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        scores = {
            "induction": induction_score(pattern, tokens, mask, sources),
            "prev_token": prev_token_score(pattern),
            "duplicate": duplicate_token_score(pattern, tokens),
        }
        for kind, values in scores.items():
            for head, value in enumerate(values.tolist()):
                out[f"heads/{kind}/{head_label(layer, head)}"] = value
        layer += 1
    return out


def best_induction_head(scores: Dict[str, float], min_layer: int = 1) -> tuple:
    """(label, score) of the best induction head in layers >= `min_layer` (None, nan if none)."""
    prefix = "heads/induction/"
    candidates = {k[len(prefix):]: v for k, v in scores.items()
                  if k.startswith(prefix) and int(k[len(prefix) + 1:].split("H")[0]) >= min_layer}
    if not candidates:
        return None, float("nan")
    label = max(candidates, key=candidates.get)
    return label, candidates[label]


def icl_positions(n_ctx: int) -> tuple:
    """(early, late) token indices of the in-context learning score: Olsson et al.'s tokens 50
    and 500 of 512, scaled to `n_ctx` (6 and 62 for 64)."""
    return max(1, round(50 * n_ctx / 512)), min(n_ctx - 1, round(500 * n_ctx / 512))


def icl_score(loss: torch.Tensor, early: int, late: int) -> float:
    """Mean loss on token `late` minus mean loss on token `early` over the batch (`loss` is
    `per_position_loss`, whose column `t - 1` is the loss of token `t`). Negative: later tokens
    are predicted better, i.e. the model uses its context."""
    return (loss[:, late - 1].mean() - loss[:, early - 1].mean()).item()


# --- Mechanism attribution: which input (K or Q) of an induction head needs earlier heads ---

KEEP_FRACTION = 0.5  # a removal "breaks" a head when less than this share of its score survives
MIN_INDUCTION = 0.3  # below this full score a head is not an induction head: verdict "none"


def attribution_verdict(scores: Dict[str, float], min_score: float = MIN_INDUCTION) -> str:
    """`K` if removing the key-side composition breaks the head and the query-side one does not,
    `Q` for the reverse, `mixed` if it needs both (or either one suffices but removing both
    breaks it), `none` if it is no induction head or needs no composition at all."""
    full = scores["full"]
    if not full >= min_score:
        return "none"
    k_ok, q_ok, kq_ok = (scores[k] >= KEEP_FRACTION * full
                         for k in ("k_removed", "q_removed", "qk_removed"))
    if not k_ok and q_ok:
        return "K"
    if k_ok and not q_ok:
        return "Q"
    if not k_ok and not q_ok or not kq_ok:
        return "mixed"
    return "none"


REMOVALS = {"k_removed": ("K",), "q_removed": ("Q",), "qk_removed": ("Q", "K")}


def _pattern(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def pattern_under(model: AttnOnlyTransformer, tokens: torch.Tensor, layer: int,
                  fwd_hooks: list) -> torch.Tensor:  # [batch, head, q, k]
    """Layer `layer`'s attention pattern in one forward pass with `fwd_hooks` added."""
    with model.hooks(fwd_hooks):
        _, cache = model.run_with_cache(tokens, names_filter=_pattern(layer))
    return cache[_pattern(layer)]


def _head_removed(model: AttnOnlyTransformer, layer: int, inputs: tuple, writer: int,
                  head: int) -> list:
    """Hooks removing head `head` of layer `writer` (its `z @ W_O`, without `b_O`) from the
    `inputs` (among Q, K) of layer `layer`, through the split-input points."""
    seen = {}
    W_O = model.blocks[writer].attn.W_O[head]  # [d_head, d_model]

    def keep_z(z: torch.Tensor, hook) -> None:
        seen["z"] = z

    def minus_head(split_input: torch.Tensor, hook) -> torch.Tensor:  # [b, p, h, d_model]
        return split_input - (seen["z"][:, :, head] @ W_O)[:, :, None]

    return [(f"blocks.{writer}.attn.hook_z", keep_z)] + [
        (f"blocks.{layer}.hook_{x.lower()}_input", minus_head) for x in inputs]


@torch.no_grad()
def mechanism_attribution(model: AttnOnlyTransformer, tokens: torch.Tensor,
                          cache: Dict[str, torch.Tensor] | None = None,
                          min_score: float = MIN_INDUCTION) -> Dict[str, Any]:
    """For each head of layer >= 1: its induction score on `tokens` as is (`full`), with every
    earlier head's output removed from its key input only (`k_removed`), from its query input
    only (`q_removed`), from both (`qk_removed`), and a `verdict` among K, Q, mixed, none.

    Each removal is one forward pass with `direct_path_hooks` on the layer's split inputs (the
    input reads the token embedding, plus position where the model puts it in the residual
    stream): only the scored layer is changed, earlier layers run as usual, and any hooks
    already set (interventions) act as in every other pass. Targets come from the tokens
    (`induction_mask`). `out["run"]` holds the run's verdict: that of the best head. Pass the
    `cache` of `model.run_with_cache(tokens)` to reuse its patterns for `full`.
    """
    if cache is None:
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("pattern"))
    shortformer = model.cfg.positional == "shortformer"
    mask, src = induction_mask(tokens), induction_sources(tokens)
    out: Dict[str, Any] = {}
    for layer in range(1, model.cfg.n_layers):
        patterns = {"full": cache[_pattern(layer)]}
        for key, inputs in REMOVALS.items():
            hooks = direct_path_hooks([layer], inputs, shortformer)
            patterns[key] = pattern_under(model, tokens, layer, hooks)
        scores = {name: induction_score(p, tokens, mask, src) for name, p in patterns.items()}
        for h in range(model.cfg.n_heads):
            head = {k: v[h].item() for k, v in scores.items()}
            head["verdict"] = attribution_verdict(head, min_score)
            out[head_label(layer, h)] = head
    best = max(out, key=lambda k: out[k]["full"]) if out else None
    out["run"] = {"head": best, "verdict": out[best]["verdict"] if best else "none"}
    return out


def attribution_row(attribution: Dict[str, Any]) -> Dict[str, Any]:
    """`mechanism/L1H0/k_removed`, ... and `mechanism/verdict` for a metrics row."""
    row: Dict[str, Any] = {}
    for label, scores in attribution.items():
        if label != "run":
            row.update({f"mechanism/{label}/{k}": v for k, v in scores.items() if k != "verdict"})
    row["mechanism/verdict"] = attribution["run"]["verdict"]
    if attribution["run"]["head"] is not None:  # a one-layer model has no head to attribute
        row["mechanism/head"] = attribution["run"]["head"]
    return row


@torch.no_grad()
def composition_partners(model: AttnOnlyTransformer, tokens: torch.Tensor, head: str,
                         inputs: tuple = ("K",)) -> Dict[str, float]:
    """Induction score of `head` (e.g. "L1H2") when one earlier head's output is removed from
    its `inputs` (among Q, K), for each earlier head: the head whose removal hurts most is the one
    it composes with. One forward pass per earlier head, the removal a hook on the head's layer's
    split inputs."""
    layer, h = (int(x) for x in head[1:].split("H"))
    mask, src = induction_mask(tokens), induction_sources(tokens)
    out = {}
    for writer in range(layer):
        for a in range(model.cfg.n_heads):
            hooks = _head_removed(model, layer, inputs, writer, a)
            pattern = pattern_under(model, tokens, layer, hooks)[:, h:h + 1]
            out[head_label(writer, a)] = induction_score(pattern, tokens, mask, src).item()
    return out
