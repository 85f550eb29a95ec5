"""Interventions on a model, from an `InterveneConfig`: clamp a head's attention pattern, ablate a
head's output (both forward hooks, so training and evaluation see them alike), freeze parameters,
graft parameters from another run's checkpoint.

Use in a loop over a plain `AttnOnlyTransformer` (batch `[b, p]`):

    graft(model, spec)                                   # once, before step 0
    with intervened(model, spec):                        # every forward pass inside: training,
        ...                                              # evaluation, attribution
        loss.backward()
        drop_frozen_grads(model, spec, step)             # before clipping and optimizer.step()

The hooks need the explicit attention path in the layers they touch; other layers stay fused.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch
import torch.nn.functional as F

from .config import (
    ConfigError,
    InterveneConfig,
    ModelConfig,
    parse_head,
    select_parameters,
)
from .data import BOS, induction_sources
from .hooks import HookFn
from .model import AttnOnlyTransformer
from .runs import CHECKPOINT_DIR, LAST_CHECKPOINT

Tokens = Callable[[], torch.Tensor]  # the tokens [b, p] of the forward pass in progress


def clamp_target(kind: str, tokens: torch.Tensor, dtype: torch.dtype = torch.float32
                 ) -> torch.Tensor:  # [b, q, k]
    """The attention pattern a clamped head is given: `previous_token` (i -> i - 1, BOS to
    itself), `induction` (i -> the token after the previous occurrence of token i, as
    `data.induction_sources` finds it; BOS where there is none), `uniform` (evenly over the
    positions <= i), `bos` (everything on position 0)."""
    b, n = tokens.shape
    idx = torch.arange(n, device=tokens.device)
    if kind == "uniform":
        row = torch.ones(n, n, dtype=dtype, device=tokens.device).tril()
        return (row / row.sum(-1, keepdim=True)).expand(b, n, n)
    if kind == "previous_token":
        src = (idx - 1).clamp(min=0).expand(b, n)
    elif kind == "induction":
        src = induction_sources(tokens)
        src = torch.where(src >= 0, src, BOS)
    elif kind == "bos":
        src = torch.zeros_like(tokens)
    else:
        raise ValueError(f"unknown clamp pattern {kind!r}")
    return F.one_hot(src, n).to(dtype)


def _head_mask(n_heads: int, head: int, device: torch.device) -> torch.Tensor:  # [h] bool
    return torch.arange(n_heads, device=device) == head


def clamp_hook(head: int, kind: str, tokens: Tokens) -> HookFn:
    """A `hook_pattern` hook giving `head` the pattern `kind` (no gradient reaches its Q, K)."""
    def clamp(pattern: torch.Tensor, hook) -> torch.Tensor:  # [b, h, q, k]
        target = clamp_target(kind, tokens(), pattern.dtype)[:, None]
        mask = _head_mask(pattern.shape[1], head, pattern.device)[None, :, None, None]
        return torch.where(mask, target, pattern)

    return clamp


def ablate_hook(head: int, ablation: str) -> HookFn:
    """A `hook_z` hook ablating `head`: `zero` sets its z to 0, `mean` to its mean over the batch
    and positions of the same pass, detached (a constant vector: no token, no position, no
    gradient to its W_Q, W_K, W_V)."""
    def ablate(z: torch.Tensor, hook) -> torch.Tensor:  # [b, p, h, e]
        mask = _head_mask(z.shape[2], head, z.device)[None, None, :, None]
        fill = 0.0 if ablation == "zero" else z.detach().mean(dim=(0, 1), keepdim=True)
        return torch.where(mask, fill, z)

    return ablate


def intervention_hooks(spec: InterveneConfig, cfg: ModelConfig, tokens: Tokens
                       ) -> List[Tuple[str, HookFn]]:
    """The forward hooks of the clamps and ablations in `spec`, as `(name, fn)` pairs for
    `model.hooks(...)`. `tokens()` must return the tokens of the pass in progress (only the
    `induction` clamp reads them); `TokenSource` provides that."""
    hooks = []
    for label, kind in dict(spec.clamp_pattern).items():
        layer, head = parse_head(label, cfg, "intervene.clamp_pattern")
        hooks.append((f"blocks.{layer}.attn.hook_pattern", clamp_hook(head, kind, tokens)))
    for label in spec.ablate:
        layer, head = parse_head(label, cfg, "intervene.ablate")
        hooks.append((f"blocks.{layer}.attn.hook_z", ablate_hook(head, spec.ablation)))
    return hooks


class TokenSource:
    """The tokens of the forward pass in progress, recorded by a pre-hook on `model.embed` (the
    one module every path, `forward` and `final_residual` alike, calls with the tokens)."""

    def __init__(self):
        self.tokens: torch.Tensor | None = None

    def attach(self, model: AttnOnlyTransformer) -> torch.utils.hooks.RemovableHandle:
        return model.embed.register_forward_pre_hook(self._record)

    def _record(self, module: torch.nn.Module, args: tuple) -> None:
        self.tokens = args[0]

    def __call__(self) -> torch.Tensor:
        if self.tokens is None:
            raise RuntimeError("no forward pass in progress: attach the TokenSource first")
        return self.tokens


@contextmanager
def intervened(model: AttnOnlyTransformer, spec: InterveneConfig
               ) -> Iterator[AttnOnlyTransformer]:
    """Every forward pass of `model` inside the block runs with the clamps and ablations of
    `spec`; all of them are removed afterwards, also on an error."""
    source = TokenSource()
    handle = source.attach(model)
    try:
        with model.hooks(intervention_hooks(spec, model.cfg, source)):
            yield model
    finally:
        handle.remove()


def frozen_parameters(model: torch.nn.Module, spec: InterveneConfig, step: int
                      ) -> List[Tuple[str, torch.nn.Parameter]]:
    """`(name, parameter)` of the parameters `spec.freeze` selects at `step` (none before
    `spec.freeze_from_step`)."""
    if not spec.freeze or step < spec.freeze_from_step:
        return []
    params = dict(model.named_parameters())
    return [(name, params[name]) for name in select_parameters(list(params), spec.freeze)]


def drop_frozen_grads(model: torch.nn.Module, spec: InterveneConfig, step: int) -> List[str]:
    """Set the gradient of every frozen parameter to None; call after `backward()`, before
    clipping and `optimizer.step()`. AdamW skips a parameter without a gradient entirely (no
    update, no weight decay, no moment update), so it stays bit-unchanged; a zero gradient would
    not do (weight decay and the running moments still move it). Returns the names."""
    frozen = frozen_parameters(model, spec, step)
    for _, param in frozen:
        param.grad = None
    return [name for name, _ in frozen]


def checkpoint_path(graft_from: str | Path) -> Path:
    """A run directory's `checkpoints/last.pt`, or the checkpoint file itself."""
    path = Path(graft_from)
    return path / CHECKPOINT_DIR / LAST_CHECKPOINT if path.is_dir() else path


@torch.no_grad()
def graft(model: torch.nn.Module, spec: InterveneConfig) -> List[str]:
    """Copy the parameters `spec.graft` selects (TransformerLens names or prefixes such as
    `blocks.0`) from the model in `spec.graft_from`'s checkpoint into `model`, in place. Only
    parameters are copied (not the zero bias buffers of a model without `attn_bias`). Returns the
    names copied; a missing checkpoint or a shape that differs is a `ConfigError`."""
    if not spec.graft:
        return []
    path = checkpoint_path(spec.graft_from)
    if not path.is_file():
        raise ConfigError("intervene.graft_from", spec.graft_from,
                          f"no checkpoint at {path}: give a run directory holding "
                          f"{CHECKPOINT_DIR}/{LAST_CHECKPOINT}, or a checkpoint file")
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    params = dict(model.named_parameters())
    names = select_parameters(list(params), list(spec.graft))
    for name in names:  # every shape checked before anything is copied
        source = state.get(name)
        if source is None or source.shape != params[name].shape:
            found = "absent" if source is None else f"shape {tuple(source.shape)}"
            raise ConfigError("intervene.graft", name, f"{found} in {path}, shape "
                              f"{tuple(params[name].shape)} in this model")
    for name in names:
        params[name].copy_(state[name])
    return names


def describe(spec: InterveneConfig) -> Dict[str, Any]:
    """The interventions that are active, for a run's summary (empty: none)."""
    out: Dict[str, Any] = {}
    if spec.clamp_pattern:
        out["clamp_pattern"] = dict(spec.clamp_pattern)
    if spec.ablate:
        out["ablate"] = list(spec.ablate)
        out["ablation"] = spec.ablation
    if spec.freeze:
        out["freeze"] = list(spec.freeze)
        out["freeze_from_step"] = spec.freeze_from_step
    if spec.graft:
        out["graft"] = list(spec.graft)
        out["graft_from"] = str(spec.graft_from)
    return out
