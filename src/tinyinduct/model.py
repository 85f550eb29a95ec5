"""A hand-written attention-only transformer with TransformerLens names, shapes and hooks.

Weights are per head and right-multiplied (`q = x @ W_Q[h]`), exactly as in TransformerLens'
`HookedTransformer` with `attn_only=True`, so `state_dict()` keys and shapes match it.

Positional modes:
- `standard`: `resid_0 = W_E[tok] + W_pos[pos]`.
- `shortformer`: `resid_0 = W_E[tok]`; the query and key inputs of every layer are
  `ln1(resid) + W_pos[pos]`, the value input is `ln1(resid)` alone, so no head can move
  positional information.

Two paths compute the same function. With no hook set anywhere, `model(tokens)` runs the lean
path: fused attention (`causal_attention`), no pattern materialised, no hook point called. As soon
as one hook is set (`run_with_hooks`, `run_with_cache`, `hooks(...)`, `add_hook`), every hook point
is called with TransformerLens 3.x's names and semantics (`hooks.py`), and a layer computes its
attention explicitly (q, k, v, scores, pattern, z) only if a hook sits inside it; other layers stay
fused. The hook points are exactly those TransformerLens fires for this architecture: `hook_embed`,
`hook_pos_embed`, `blocks.{l}.hook_resid_pre`, `blocks.{l}.ln1.hook_{scale,normalized}` (LN),
`blocks.{l}.attn.hook_{q,k,v,attn_scores,pattern,z}`, `blocks.{l}.hook_attn_out`,
`blocks.{l}.hook_resid_post`, `ln_final.hook_{scale,normalized}` (LN), `unembed.hook_{in,out}`;
plus TransformerLens' `use_split_qkv_input` points `blocks.{l}.hook_{q,k,v}_input`
(`[batch, pos, head, d_model]`, the per-head residual each input reads before `ln1`), which fire
only in a layer where one of them has a hook, as if `use_split_qkv_input` were on there.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, Iterator, Tuple

import torch
from einops import repeat
from torch import nn

from .causal_attention import causal_attention, kernel_for
from .config import ModelConfig
from .head_projections import project_heads, project_out
from .hooks import (
    ActivationCache,
    FwdHooks,
    HookFn,
    HookPoint,
    NameFilter,
    attached,
    caching_hooks,
    matching_points,
    name_hook_points,
    names_matching,
)
from .native_layer import attention_layer
from .step_profile import part

Cache = Dict[str, torch.Tensor]
SPLIT_INPUTS = ("hook_q_input", "hook_k_input", "hook_v_input")


class LayerNorm(nn.Module):
    """TransformerLens `LayerNorm` (eps 1e-5, parameters `w`, `b`)."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # [..., 1]
        self.hook_normalized = HookPoint()  # [..., d_model], before w and b

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., d_model] -> same
        if not (self.hook_scale.has_hooks() or self.hook_normalized.has_hooks()):
            return layer_norm(x, self.w, self.b, self.eps)
        x = x - x.mean(-1, keepdim=True)  # the same operations as layer_norm, hooked
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w + self.b


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """TransformerLens' LayerNorm of `x [..., d_model]`; `w`, `b` broadcast against `x`."""
    x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x / scale * w + b


class Embed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [b, p] -> [b, p, d_model]
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [b, p] -> [b, p, d_model]
        return self.W_pos[: tokens.shape[1]].expand(tokens.shape[0], -1, -1)


class Unembed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        # called by the model on the hooked path only (the lean path and fused losses skip them)
        self.hook_in = HookPoint()  # [b, p, d_model]
        self.hook_out = HookPoint()  # [b, p, d_vocab]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [b, p, d_model] -> [b, p, d_vocab]
        # addmm adds the bias inside the matmul: no extra pass over the largest tensor
        return torch.addmm(self.b_U, x.reshape(-1, x.shape[-1]), self.W_U).view(
            *x.shape[:-1], -1)


def fused_attention(
    inputs: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],  # q_in, k_in, v_in [..., b, p, d]
    weights: Tuple[torch.Tensor, ...],  # W_Q, W_K, W_V [..., h, d, e], W_O [..., h, e, d]
    biases: Tuple[torch.Tensor, ...] | None,  # b_Q, b_K, b_V [..., h, e], b_O [..., d]; None: 0
    scale: float,
    residual: torch.Tensor | None = None,  # [..., b, p, d]: added to the output in W_O's matmul
) -> torch.Tensor:  # [..., b, p, d]
    """Causal attention by the faster kernel for its shape (`causal_attention`), between the
    projections of `head_projections` (plus `residual`, if given); where the native kernel runs,
    the whole layer in one C++ call each way (`native_layer`). The leading `...` is empty for
    one model and the model axis for stacked models. Inputs that are one tensor share one
    matmul; zero biases are skipped rather than added."""
    single = inputs[0].dim() == 3  # one model: a model axis of 1 (views)
    lead = (lambda t: t[None]) if single else (lambda t: t)
    G, batch, pos = lead(inputs[0]).shape[:3]
    n_heads, d_head = weights[0].shape[-3], weights[0].shape[-1]
    kernel = kernel_for(G * batch * n_heads, pos, d_head, inputs[0].device, inputs[0].dtype)
    if kernel == "native":
        out = attention_layer(tuple(lead(x) for x in inputs), tuple(lead(w) for w in weights),
                              None if biases is None else tuple(lead(b) for b in biases), scale,
                              None if residual is None else lead(residual))
        return out[0] if single else out
    qkv: list = [None, None, None]
    with part("projections"):
        for i, x in enumerate(inputs):
            if qkv[i] is not None:
                continue
            same = [j for j in range(i, 3) if inputs[j] is x]
            heads = project_heads(lead(x), tuple(lead(weights[j]) for j in same),
                                  None if biases is None else
                                  tuple(lead(biases[j]) for j in same))
            for j, y in zip(same, heads):
                qkv[j] = y  # [G * b, h, p, e]
    with part("attention"):
        z = causal_attention(*qkv, scale, kernel=kernel)  # [G * b, h, p, e]
    with part("projections"):
        out = project_out(z.reshape(G, -1, *z.shape[1:]), lead(weights[3]),
                          None if biases is None else lead(biases[3]),
                          None if residual is None else lead(residual))
        return out[0] if single else out


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        biases = {"b_Q": (h, e), "b_K": (h, e), "b_V": (h, e), "b_O": (d,)}
        for name, shape in biases.items():
            if cfg.attn_bias:
                self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
            else:  # kept as zero buffers so the state dict matches TransformerLens
                self.register_buffer(name, torch.zeros(shape))
        # TransformerLens keeps these two buffers in its state dict; they are unused here.
        self.register_buffer("mask", torch.empty((0, 0), dtype=torch.bool))
        self.register_buffer("IGNORE", torch.tensor(-torch.inf))
        self.scale = 1.0 / math.sqrt(e)
        self.attn_bias = cfg.attn_bias
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()  # [b, h, q, k]
        self.hook_z = HookPoint()  # [b, p, h, e]

    def explicit(self) -> bool:
        """Whether a hook inside this attention needs the pattern materialised."""
        return any(point.has_hooks() for point in (
            self.hook_q, self.hook_k, self.hook_v, self.hook_attn_scores, self.hook_pattern,
            self.hook_z))

    def forward(
        self,
        q_in: torch.Tensor,  # [b, p, d_model], or [b, p, h, d_model] per head
        k_in: torch.Tensor,
        v_in: torch.Tensor,
    ) -> torch.Tensor:  # [b, p, d_model]
        # under torch.compile the explicit path: inductor fuses its plain operations itself,
        # and the fused path's hand-written autograd functions do not trace
        if (q_in.dim() == 3 and k_in.dim() == 3 and v_in.dim() == 3 and not self.explicit()
                and not torch.compiler.is_compiling()):
            biases = (self.b_Q, self.b_K, self.b_V, self.b_O) if self.attn_bias else None
            return fused_attention((q_in, k_in, v_in), (self.W_Q, self.W_K, self.W_V, self.W_O),
                                   biases, self.scale)

        # explicit path, TransformerLens layouts: q/k/v/z [b, p, h, e], scores [b, h, q, k]
        q = self.hook_q(_project(q_in, self.W_Q) + self.b_Q)
        k = self.hook_k(_project(k_in, self.W_K) + self.b_K)
        v = self.hook_v(_project(v_in, self.W_V) + self.b_V)
        n = q.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale
        scores = self.hook_attn_scores(scores.masked_fill(~causal, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        return torch.einsum("bqhe,hed->bqd", z, self.W_O) + self.b_O


def _project(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:  # -> [b, p, h, e]
    """`x @ W[h]` for every head; `x` is `[b, p, d]` or per head `[b, p, h, d]`."""
    return torch.einsum("bphd,hde->bphe" if x.dim() == 4 else "bpd,hde->bphe", x, W)


class AttnOnlyBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.normalization == "LN":
            self.ln1 = LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.hook_resid_pre = HookPoint()  # [b, p, d_model]
        # TransformerLens' use_split_qkv_input points: [b, p, h, d_model], before ln1
        self.hook_q_input, self.hook_k_input, self.hook_v_input = (HookPoint(), HookPoint(),
                                                                   HookPoint())
        self.hook_attn_out = HookPoint()  # [b, p, d_model]
        self.hook_resid_post = HookPoint()  # [b, p, d_model]

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln1(x) if hasattr(self, "ln1") else x


class AttnOnlyTransformer(nn.Module):
    """`model(tokens) -> logits [batch, pos, d_vocab]`. TransformerLens' hook API on top:
    `run_with_cache`, `run_with_hooks`, `hooks(...)`, `add_hook`, `reset_hooks`, `hook_dict`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [b, p, d_model]
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = HookPoint()  # [b, p, d_model]
        self.blocks = nn.ModuleList(AttnOnlyBlock(cfg) for _ in range(cfg.n_layers))
        if cfg.normalization == "LN":
            self.ln_final = LayerNorm(cfg.d_model)
        self.unembed = Unembed(cfg)
        self.hook_dict: Dict[str, HookPoint] = name_hook_points(self)
        self.init_weights()

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, init_range) for every weight matrix; biases zero, LayerNorm identity."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.split(".")[-1].startswith("W_"):
                    p.normal_(0.0, self.cfg.init_range, generator=generator)

    # --- forward ---

    def forward(
        self,
        tokens: torch.Tensor,  # [batch, pos] int64
        cache: Cache | None = None,
        blocked_composition: Iterable[str] | None = None,
    ) -> torch.Tensor:  # [batch, pos, d_vocab]
        """Logits. A dict passed as `cache` is filled with every hook's activation (detached).

        `blocked_composition` (default: `cfg.blocked_composition`) lists inputs among Q, K, V that
        layers >= 1 read from the direct path (token embedding, plus position where the
        positional mode puts it) instead of the residual stream.
        """
        if cache is not None:
            with self.hooks(caching_hooks(self.cached_names(), cache)):
                return self.forward(tokens, blocked_composition=blocked_composition)
        logits = self.unembed(self.final_residual(tokens, blocked_composition=blocked_composition))
        return self.unembed.hook_out(logits) if self.has_hooks() else logits

    def final_residual(
        self,
        tokens: torch.Tensor,  # [batch, pos] int64
        cache: Cache | None = None,
        blocked_composition: Iterable[str] | None = None,
    ) -> torch.Tensor:  # [batch, pos, d_model]
        """What the unembedding reads: the residual stream after the last layer (and
        `ln_final`, and `unembed.hook_in`). `forward` is `unembed(final_residual(...))` (then
        `unembed.hook_out`, which a loss computed from this residual does not see)."""
        if cache is not None:
            with self.hooks(caching_hooks(self.cached_names(), cache)):
                return self.final_residual(tokens, blocked_composition=blocked_composition)
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"sequence length {tokens.shape[1]} > n_ctx {self.cfg.n_ctx}")
        blocked = set(self.cfg.blocked_composition if blocked_composition is None
                      else blocked_composition)
        if self.has_hooks():
            return self._hooked_residual(tokens, blocked)
        shortformer = self.cfg.positional == "shortformer"
        embed = self.embed(tokens)
        pos = self.pos_embed(tokens)
        resid = embed if shortformer else embed + pos
        direct = resid  # what a blocked input reads instead of the residual stream
        for layer, block in enumerate(self.blocks):
            q_in, k_in, v_in = self._attn_inputs(block, resid, direct, pos, shortformer,
                                                 blocked if layer > 0 else set())
            resid = resid + block.attn(q_in, k_in, v_in)
        if hasattr(self, "ln_final"):
            resid = self.ln_final(resid)
        return resid

    def _hooked_residual(self, tokens: torch.Tensor, blocked: set) -> torch.Tensor:
        """`final_residual` through every hook point, in TransformerLens' order."""
        shortformer = self.cfg.positional == "shortformer"
        embed = self.hook_embed(self.embed(tokens))
        pos = self.hook_pos_embed(self.pos_embed(tokens))
        resid = embed if shortformer else embed + pos
        direct = resid
        for layer, block in enumerate(self.blocks):
            resid = block.hook_resid_pre(resid)
            inputs = self._hooked_attn_inputs(block, resid, direct, pos, shortformer,
                                              blocked if layer > 0 else set())
            attn_out = block.hook_attn_out(block.attn(*inputs))
            resid = block.hook_resid_post(resid + attn_out)
        if hasattr(self, "ln_final"):
            resid = self.ln_final(resid)
        return self.unembed.hook_in(resid)

    @staticmethod
    def _hooked_attn_inputs(block: AttnOnlyBlock, resid: torch.Tensor, direct: torch.Tensor,
                            pos: torch.Tensor, shortformer: bool, blocked: set) -> tuple:
        """`_attn_inputs` with TransformerLens' split inputs where one of them is hooked: each
        of Q, K, V then reads its own per-head copy `[b, p, h, d_model]` (of the direct path if
        blocked), through `hook_{q,k,v}_input`, then `ln1`, then position (shortformer)."""
        points = [getattr(block, name) for name in SPLIT_INPUTS]
        split = any(point.has_hooks() for point in points)
        if not split and not blocked:
            return AttnOnlyTransformer._attn_inputs(block, resid, direct, pos, shortformer,
                                                    blocked)
        n_heads = block.attn.W_Q.shape[0]
        inputs = []
        for kind, point in zip("QKV", points):
            x = direct if kind in blocked else resid
            if split:
                x = point(repeat(x, "b p d -> b p h d", h=n_heads))
            x = block.norm(x)
            if shortformer and kind != "V":  # position enters queries and keys only
                x = x + (pos[:, :, None] if split else pos)
            inputs.append(x)
        return tuple(inputs)

    @staticmethod
    def _attn_inputs(
        block: AttnOnlyBlock,
        resid: torch.Tensor,
        direct: torch.Tensor,
        pos: torch.Tensor,
        shortformer: bool,
        blocked: set,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        normed = block.norm(resid)
        normed_direct = block.norm(direct) if blocked else normed
        q_in = normed_direct if "Q" in blocked else normed
        k_in = normed_direct if "K" in blocked else normed
        v_in = normed_direct if "V" in blocked else normed
        if shortformer:  # position enters queries and keys only, after the norm
            q_in, k_in = (q_in + pos, k_in + pos) if q_in is not k_in else (q_in + pos,) * 2
        return q_in, k_in, v_in

    # --- hooks (TransformerLens' API) ---

    def has_hooks(self) -> bool:
        """Whether any hook point has a hook (then the hooked path runs)."""
        return any(point.has_hooks() for point in self.hook_dict.values())

    def cached_names(self) -> list:
        """The names TransformerLens 3.x caches for this architecture (its split-input points
        fire only when hooked, so they are left out)."""
        return [name for name in self.hook_dict if not name.endswith(SPLIT_INPUTS)]

    @contextmanager
    def hooks(self, fwd_hooks: FwdHooks = ()) -> Iterator[AttnOnlyTransformer]:
        """`with model.hooks([(name_or_filter, fn), ...]):` the hooks act inside the block and are
        removed afterwards, also when something raises."""
        with attached(self.hook_dict, fwd_hooks):
            yield self

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks: FwdHooks = (),
                       **kwargs) -> torch.Tensor:
        """Logits with `fwd_hooks` (`(name or filter function, fn(activation, hook))` pairs)
        active for this one forward pass."""
        with self.hooks(fwd_hooks):
            return self.forward(tokens, **kwargs)

    def run_with_cache(self, tokens: torch.Tensor, names_filter: NameFilter = None,
                       **kwargs) -> Tuple[torch.Tensor, ActivationCache]:
        """`(logits, cache)`: the cache holds the named activations (default: all that
        TransformerLens caches), detached, and takes `cache["pattern", 1]`-style keys. Hooks
        already set act first, so the cache sees what they changed."""
        cache = ActivationCache(n_layers=self.cfg.n_layers)
        names = names_matching(self.hook_dict if names_filter is not None
                               else self.cached_names(), names_filter)
        with self.hooks(caching_hooks(names, cache)):
            logits = self.forward(tokens, **kwargs)
        return logits, cache

    def add_hook(self, name_or_filter: str | Callable[[str], bool], hook: HookFn) -> None:
        """Add a hook that stays until `reset_hooks()` (TransformerLens' `add_hook`)."""
        for point in matching_points(self.hook_dict, name_or_filter):
            point.add_hook(hook)

    def reset_hooks(self) -> None:
        """Remove every hook from every hook point."""
        for point in self.hook_dict.values():
            point.remove_hooks()

    @property
    def head_labels(self) -> list:
        return [f"L{layer}H{h}" for layer in range(self.cfg.n_layers)
                for h in range(self.cfg.n_heads)]
