"""K models as one stacked computation: `train.n_seeds = K` seeds trained at once (K = 1 is the
plain case: every run trains through this module).

Model k is exactly the run `seed + k` would train alone: the same init, data stream, optimizer,
schedule and evaluation; only the arithmetic is batched. Parameters are stacked on a leading model
axis (`W_Q: [K, h, d, e]`) under one model's names, so `make_optimizer` groups them unchanged and
each seed's optimizer state is a slice. Matmuls become batched matmuls, attention one kernel call
over `K * batch` sequences, the loss a sum of per-model means (each model gets its own gradient;
unembedding and loss fused in cache-sized chunks), gradient clipping is per model. For evaluation
and checkpoints each seed's weights are copied into a plain `AttnOnlyTransformer`.

`train_step` is the one training step, shared by the loop and `scripts/bench.py`.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F
import torch.optim.optimizer as optimizer_module
from torch import nn

from . import native
from .fused_loss import IGNORE, unembed_mean_cross_entropy
from .model import AttnOnlyTransformer, fused_attention, layer_norm
from .step_profile import part


def next_token_targets(tokens: torch.Tensor) -> torch.Tensor:  # [..., pos] -> [..., pos]
    """`tokens[..., i+1]` at position i; the last position gets `IGNORE` instead of being sliced
    off the logits, which would copy the largest tensor forward and back."""
    return torch.cat([tokens[..., 1:], torch.full_like(tokens[..., :1], IGNORE)], dim=-1)


def _stacked_norm(ln: nn.Module, x: torch.Tensor) -> torch.Tensor:  # x [K, b, p, d]
    return layer_norm(x, ln.w[:, None, None], ln.b[:, None, None], ln.eps)


class _StackedBlock:
    """What `AttnOnlyTransformer._attn_inputs` needs of a block (its norm), for stacked weights."""

    def __init__(self, block: nn.Module):
        self.ln1 = getattr(block, "ln1", None)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.ln1 is None else _stacked_norm(self.ln1, x)


class StackedTransformer(nn.Module):
    """K `AttnOnlyTransformer`s with one config as one module: `forward(tokens [K, b, p])` returns
    `[K, b, p, d_vocab]`, model k's logits on its own batch, computed by the same fused path."""

    def __init__(self, models: Sequence[AttnOnlyTransformer]):
        super().__init__()
        self.cfg = models[0].cfg
        self.n_models = len(models)
        self.shell = copy.deepcopy(models[0])  # one model's module tree and parameter names
        for name, _ in models[0].named_parameters():
            owner, _, leaf = name.rpartition(".")
            stacked = torch.stack([m.get_parameter(name).detach() for m in models])
            setattr(self.shell.get_submodule(owner), leaf, nn.Parameter(stacked))

    def set_hooks(self, fwd_hooks: Sequence[tuple]) -> None:
        """Forward hooks `(name, fn)` on `blocks.{l}.attn.hook_pattern` / `hook_z`, with
        TransformerLens' signature `fn(activation, hook)`, applied to each model's own slice
        (`[b, h, q, k]`, `[b, p, h, e]`) as on a plain model. Only the layers they touch leave
        the fused attention path. `self.tokens` holds the slice's tokens while they run."""
        self.layer_hooks: Dict[int, Dict[str, list]] = {}
        for name, fn in fwd_hooks:
            parts = name.split(".")
            if len(parts) != 4 or parts[0] != "blocks" or parts[3] not in ("hook_pattern",
                                                                           "hook_z"):
                raise ValueError(f"stacked models take hook_pattern and hook_z hooks, not {name}")
            per_layer = self.layer_hooks.setdefault(int(parts[1]), {})
            per_layer.setdefault(parts[3], []).append((name, fn))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [K, b, p] -> [K, b, p, d_vocab]
        u = self.shell.unembed
        return torch.baddbmm(u.b_U[:, None], self.final_residual(tokens).flatten(1, 2),
                             u.W_U).view(*tokens.shape, -1)

    def final_residual(self, tokens: torch.Tensor) -> torch.Tensor:  # -> [K, b, p, d_model]
        m, cfg = self.shell, self.cfg
        shortformer = cfg.positional == "shortformer"
        n_models, d_vocab = tokens.shape[0], m.embed.W_E.shape[1]
        offset = torch.arange(n_models, device=tokens.device)[:, None, None] * d_vocab
        # F.embedding, not W_E[k, tokens]: its backward sums rows in a fixed order on any number
        # of threads, where advanced indexing accumulates in parallel (bits vary run to run)
        with part("embedding"):
            embed = F.embedding(tokens + offset, m.embed.W_E.flatten(0, 1))  # [K, b, p, d]
            pos = m.pos_embed.W_pos[:, None, : tokens.shape[-1]]  # [K, 1, p, d]
            resid = embed if shortformer else embed + pos
        direct, blocked = resid, set(cfg.blocked_composition)
        for layer, block in enumerate(m.blocks):
            inputs = AttnOnlyTransformer._attn_inputs(
                _StackedBlock(block), resid, direct, pos, shortformer,
                blocked if layer > 0 else set())
            a = block.attn
            hooks = getattr(self, "layer_hooks", {}).get(layer)
            if hooks:
                resid = resid + self._hooked_attention(a, inputs, hooks, tokens)
                continue
            biases = (a.b_Q, a.b_K, a.b_V, a.b_O) if a.attn_bias else None
            resid = fused_attention(inputs, (a.W_Q, a.W_K, a.W_V, a.W_O), biases, a.scale,
                                    residual=resid)
        if hasattr(m, "ln_final"):
            resid = _stacked_norm(m.ln_final, resid)
        return resid

    def _hooked_attention(self, a: nn.Module, inputs: tuple, hooks: Dict[str, list],
                          tokens: torch.Tensor) -> torch.Tensor:  # -> [K, b, p, d]
        """The explicit attention of one layer, each model's pattern and z passed through the
        hooks (TransformerLens layouts), as `Attention.forward` does for one model."""
        q_in, k_in, v_in = inputs
        q = torch.einsum("kbpd,khde->kbphe", q_in, a.W_Q)
        key = torch.einsum("kbpd,khde->kbphe", k_in, a.W_K)
        v = torch.einsum("kbpd,khde->kbphe", v_in, a.W_V)
        if a.attn_bias:  # stacked parameters; without them the biases are one model's zeros
            q, key, v = (x + b[:, None, None] for x, b in ((q, a.b_Q), (key, a.b_K), (v, a.b_V)))
        n = q.shape[2]
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = torch.einsum("kbqhe,kbshe->kbhqs", q, key) * a.scale
        pattern = self._each_model(scores.masked_fill(future, float("-inf")).softmax(-1),
                                   hooks.get("hook_pattern"), tokens)
        z = self._each_model(torch.einsum("kbhqs,kbshe->kbqhe", pattern, v), hooks.get("hook_z"),
                             tokens)
        out = torch.einsum("kbqhe,khed->kbqd", z, a.W_O)
        return out + a.b_O[:, None, None] if a.attn_bias else out

    def _each_model(self, activation: torch.Tensor, hooks: list | None,
                    tokens: torch.Tensor) -> torch.Tensor:
        if not hooks:
            return activation
        slices = []
        for k in range(activation.shape[0]):
            x = activation[k]
            self.tokens = tokens[k]
            for name, fn in hooks:
                out = fn(x, _Hook(name))
                x = x if out is None else out
            slices.append(x)
        self.tokens = None
        return torch.stack(slices)

    @torch.no_grad()
    def copy_to(self, k: int, model: AttnOnlyTransformer) -> AttnOnlyTransformer:
        """Write model k's weights into a plain `model` (for evaluation and checkpoints)."""
        for name, p in model.named_parameters():
            p.copy_(self.shell.get_parameter(name)[k])
        return model

    @torch.no_grad()
    def copy_from(self, k: int, model: AttnOnlyTransformer) -> None:
        """Write a plain `model`'s weights into slot k (a resumed seed)."""
        for name, p in model.named_parameters():
            self.shell.get_parameter(name)[k].copy_(p)

    @torch.no_grad()
    def keep_models(self, keep: Sequence[int]) -> None:
        """Keep only the models `keep` (in that order), as new parameters: the others stop
        costing compute. The optimizer must be rebuilt around the new parameters."""
        index = torch.tensor(list(keep), device=self.shell.embed.W_E.device)
        for name, p in list(self.shell.named_parameters()):
            owner, _, leaf = name.rpartition(".")
            setattr(self.shell.get_submodule(owner), leaf,
                    nn.Parameter(p.detach().index_select(0, index)))
        self.n_models = len(keep)


class _Hook:
    """What a hook function may read of its hook point: its name."""

    def __init__(self, name: str):
        self.name = name


def per_model_loss(model: StackedTransformer, tokens: torch.Tensor) -> torch.Tensor:  # [K]
    """Each model's mean next-token cross-entropy on its own batch `tokens[k]`. The logits are
    the largest tensor of a step (K times so when stacked): the unembedding and the loss are fused
    over cache-sized chunks, the gradient computed as each chunk passes (`fused_loss`)."""
    u = model.shell.unembed
    resid, targets = model.final_residual(tokens).flatten(1, 2), next_token_targets(tokens)
    with part("unembed_loss"):
        return unembed_mean_cross_entropy(resid, u.W_U, u.b_U, targets.flatten(1))


@torch.no_grad()
def clip_grad_norm_per_model_(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` applied to each model (slice k of every gradient) on its
    own: one model's large gradient never scales another's. Returns the norms `[K]`."""
    grads = [p.grad for p in params if p.grad is not None]
    K = grads[0].shape[0]
    # torch's foreach kernels: two calls for all the gradients, not three operations for each
    slice_norms = torch._foreach_norm([g[k] for k in range(K) for g in grads])
    norms = torch.stack(slice_norms).view(K, len(grads)).pow(2).sum(1).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, coef.view(()) if K == 1 else  # one factor: its fast path
                        [coef.view(-1, *(1,) * (g.dim() - 1)) for g in grads])
    return norms


def _native_adamw(optimizer: torch.optim.Optimizer):
    """AdamW's groups as `clip_and_adamw` (`native`) takes them, or None where torch's own step
    must run: not `AdamW(fused=True)` with plain hyperparameters, step hooks, a parameter without
    a gradient or without state (the first step; a frozen parameter), or not float32 on a CPU."""
    if type(optimizer) is not torch.optim.AdamW or (
            optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
            or optimizer_module._global_optimizer_pre_hooks
            or optimizer_module._global_optimizer_post_hooks):
        return None
    lists: tuple = ([], [], [], [], [])
    sizes, lrs, decays = [], [], []
    betas, eps = optimizer.param_groups[0]["betas"], optimizer.param_groups[0]["eps"]
    for group in optimizer.param_groups:
        if (not group["fused"] or group["amsgrad"] or group["maximize"] or group["capturable"]
                or group["differentiable"] or group["betas"] != betas or group["eps"] != eps
                or not all(isinstance(x, float) for x in (group["lr"], *betas, eps))):
            return None
        for p in group["params"]:
            state = optimizer.state.get(p)
            if p.grad is None or not state or not native.runs_on(p):
                return None
            for out, t in zip(lists, (p, p.grad, state["exp_avg"], state["exp_avg_sq"],
                                      state["step"])):
                out.append(t)
        sizes.append(len(group["params"]))
        lrs.append(group["lr"])
        decays.append(float(group["weight_decay"]))
    return (*lists, sizes, lrs, decays, float(betas[0]), float(betas[1]), float(eps))


def clip_and_step(model: StackedTransformer, optimizer: torch.optim.Optimizer,
                  grad_clip: float) -> None:
    """Per-model gradient clipping (where `grad_clip` > 0), then the optimizer's step: by
    `clip_and_adamw` where tinyinduct's kernels run and the optimizer is the loop's AdamW (the
    same operations as below in one C++ call, bit for bit the same: tested), else by
    `clip_grad_norm_per_model_` and `optimizer.step()`."""
    groups = _native_adamw(optimizer)
    if groups is None:
        if grad_clip > 0:
            clip_grad_norm_per_model_(list(model.parameters()), grad_clip)
        optimizer.step()
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    native.extension().clip_and_adamw(grads, float(grad_clip), *groups)
    optimizer._opt_called = True  # what the LR scheduler's wrapper of `step` records


def train_step(model: StackedTransformer, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, tokens: torch.Tensor,
               grad_clip: float, after_backward: Callable[[], Any] | None = None
               ) -> torch.Tensor:  # tokens [K, b, p] -> losses [K], detached
    """One optimizer step of every model on its own batch: loss, backward, (`after_backward`,
    e.g. dropping frozen parameters' gradients), per-model clipping, AdamW, schedule. No host
    sync."""
    losses = per_model_loss(model, tokens)
    optimizer.zero_grad(set_to_none=True)
    losses.sum().backward()
    if after_backward is not None:
        after_backward()
    with part("optimizer"):
        clip_and_step(model, optimizer, grad_clip)
        scheduler.step()
    return losses.detach()


def seed_optimizer_state(optimizer: torch.optim.Optimizer, k: int) -> Dict[str, Any]:
    """Model k's AdamW state, shaped as a single model's `optimizer.state_dict()` (cloned
    slices, so a checkpoint does not carry the other models' moments)."""
    full = optimizer.state_dict()
    state = {i: {name: (t[k].clone() if t.dim() > 0 else t.clone()) for name, t in s.items()}
             for i, s in full["state"].items()}
    return {"state": state, "param_groups": copy.deepcopy(full["param_groups"])}


def stacked_optimizer_state(states: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The inverse of `seed_optimizer_state`: K single-model states as one stacked state (the
    scalar step counts are the same for every model)."""
    first = states[0]
    state = {i: {name: (torch.stack([s["state"][i][name] for s in states]) if t.dim() > 0
                        else t.clone()) for name, t in per_param.items()}
             for i, per_param in first["state"].items()}
    return {"state": state, "param_groups": copy.deepcopy(first["param_groups"])}


def select_optimizer_state(optimizer: torch.optim.Optimizer,
                           keep: Sequence[int]) -> Dict[str, Any]:
    """The stacked state of models `keep` only (for the optimizer rebuilt after
    `StackedTransformer.keep_models`)."""
    return stacked_optimizer_state([seed_optimizer_state(optimizer, k) for k in keep])


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting `tokens[:, i+1]` at position i from one model's
    `logits [b, p, V]` (what `per_model_loss` computes without the logits; for comparisons)."""
    return F.cross_entropy(logits.flatten(0, -2), next_token_targets(tokens).flatten(),
                           ignore_index=IGNORE)
