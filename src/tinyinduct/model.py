"""A hand-written attention-only transformer with TransformerLens names, shapes and hooks.

Weights are per head and right-multiplied (`q = x @ W_Q[h]`), exactly as in TransformerLens'
`HookedTransformer` with `attn_only=True`, so `state_dict()` keys and shapes match it.

Positional modes:
- `standard`: `resid_0 = W_E[tok] + W_pos[pos]`.
- `shortformer`: `resid_0 = W_E[tok]`; the query and key inputs of every layer are
  `ln1(resid) + W_pos[pos]`, the value input is `ln1(resid)` alone, so no head can move
  positional information.

Two attention paths compute the same function: fused `scaled_dot_product_attention` for training
(no pattern materialised), and the explicit softmax whenever a cache is requested, which records
every TransformerLens hook (`blocks.{l}.attn.hook_pattern`, ...).
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

Cache = Dict[str, torch.Tensor]


class LayerNorm(nn.Module):
    """TransformerLens `LayerNorm` (eps 1e-5, parameters `w`, `b`)."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., d_model] -> same
        return layer_norm(x, self.w, self.b, self.eps)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [b, p, d_model] -> [b, p, d_vocab]
        # addmm adds the bias inside the matmul: no extra pass over the largest tensor
        return torch.addmm(self.b_U, x.reshape(-1, x.shape[-1]), self.W_U).view(
            *x.shape[:-1], -1)


def fused_attention(
    inputs: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],  # q_in, k_in, v_in [..., b, p, d]
    weights: Tuple[torch.Tensor, ...],  # W_Q, W_K, W_V [..., h, d, e], W_O [..., h, e, d]
    biases: Tuple[torch.Tensor, ...] | None,  # b_Q, b_K, b_V [..., h, e], b_O [..., d]; None: 0
    scale: float,
) -> torch.Tensor:  # [..., b, p, d]
    """Causal attention through `scaled_dot_product_attention`, heads-first layout. The leading
    `...` is empty for one model and the model axis for stacked models. Inputs that are one
    tensor share one matmul (their weights concatenated along the head axis); zero biases are
    skipped rather than added."""
    n_heads = weights[0].shape[-3]
    qkv: list = [None, None, None]
    for i, x in enumerate(inputs):
        if qkv[i] is not None:
            continue
        same = [j for j in range(i, 3) if inputs[j] is x]
        W = torch.cat([weights[j] for j in same], dim=-3) if len(same) > 1 else weights[i]
        y = torch.einsum("...bpd,...hde->...bhpe", x, W)
        if biases is not None:
            y = y + torch.cat([biases[j] for j in same], dim=-2)[..., None, :, None, :]
        for j, part in zip(same, y.split(n_heads, dim=-3)):
            qkv[j] = part
    q, k, v = qkv
    lead = q.shape[:-3]  # SDPA wants one batch axis: fold the model axis into it
    z = F.scaled_dot_product_attention(*(t.reshape(-1, *t.shape[-3:]) for t in (q, k, v)),
                                       is_causal=True, scale=scale)
    out = torch.einsum("...bhpe,...hed->...bpd", z.view(*lead, *z.shape[-3:]), weights[3])
    return out if biases is None else out + biases[3][..., None, None, :]


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

    def forward(
        self,
        q_in: torch.Tensor,  # [b, p, d_model]
        k_in: torch.Tensor,  # [b, p, d_model]
        v_in: torch.Tensor,  # [b, p, d_model]
        cache: Cache | None = None,
        prefix: str = "",
    ) -> torch.Tensor:  # [b, p, d_model]
        if cache is None:  # fused path: no pattern materialised
            biases = (self.b_Q, self.b_K, self.b_V, self.b_O) if self.attn_bias else None
            return fused_attention((q_in, k_in, v_in), (self.W_Q, self.W_K, self.W_V, self.W_O),
                                   biases, self.scale)

        # explicit path, TransformerLens layouts: q/k/v/z [b, p, h, e], scores [b, h, q, k]
        q = torch.einsum("bpd,hde->bphe", q_in, self.W_Q) + self.b_Q
        k = torch.einsum("bpd,hde->bphe", k_in, self.W_K) + self.b_K
        v = torch.einsum("bpd,hde->bphe", v_in, self.W_V) + self.b_V
        n = q.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale
        scores = scores.masked_fill(~causal, float("-inf"))
        pattern = scores.softmax(dim=-1)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        out = torch.einsum("bqhe,hed->bqd", z, self.W_O) + self.b_O
        cache.update({
            f"{prefix}hook_q": q, f"{prefix}hook_k": k, f"{prefix}hook_v": v,
            f"{prefix}hook_attn_scores": scores, f"{prefix}hook_pattern": pattern,
            f"{prefix}hook_z": z,
        })
        return out


class AttnOnlyBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.normalization == "LN":
            self.ln1 = LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln1(x) if hasattr(self, "ln1") else x


class AttnOnlyTransformer(nn.Module):
    """`model(tokens) -> logits [batch, pos, d_vocab]`; `run_with_cache` adds the hooks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg)
        self.blocks = nn.ModuleList(AttnOnlyBlock(cfg) for _ in range(cfg.n_layers))
        if cfg.normalization == "LN":
            self.ln_final = LayerNorm(cfg.d_model)
        self.unembed = Unembed(cfg)
        self.init_weights()

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, init_range) for every weight matrix; biases zero, LayerNorm identity."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.split(".")[-1].startswith("W_"):
                    p.normal_(0.0, self.cfg.init_range, generator=generator)

    def forward(
        self,
        tokens: torch.Tensor,  # [batch, pos] int64
        cache: Cache | None = None,
        blocked_composition: Iterable[str] | None = None,
    ) -> torch.Tensor:  # [batch, pos, d_vocab]
        """Logits. A dict passed as `cache` is filled with every hook's activation.

        `blocked_composition` (default: `cfg.blocked_composition`) lists inputs among Q, K, V that
        layers >= 1 read from the direct path (token embedding, plus position where the
        positional mode puts it) instead of the residual stream.
        """
        return self.unembed(self.final_residual(tokens, cache, blocked_composition))

    def final_residual(
        self,
        tokens: torch.Tensor,  # [batch, pos] int64
        cache: Cache | None = None,
        blocked_composition: Iterable[str] | None = None,
    ) -> torch.Tensor:  # [batch, pos, d_model]
        """What the unembedding reads: the residual stream after the last layer (and
        `ln_final`). `forward` is `unembed(final_residual(...))`."""
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"sequence length {tokens.shape[1]} > n_ctx {self.cfg.n_ctx}")
        blocked = set(self.cfg.blocked_composition if blocked_composition is None
                      else blocked_composition)
        shortformer = self.cfg.positional == "shortformer"
        embed = self.embed(tokens)
        pos = self.pos_embed(tokens)
        resid = embed if shortformer else embed + pos
        direct = resid  # what a blocked input reads instead of the residual stream
        if cache is not None:
            cache["hook_embed"], cache["hook_pos_embed"] = embed, pos
        for layer, block in enumerate(self.blocks):
            prefix = f"blocks.{layer}."
            if cache is not None:
                cache[prefix + "hook_resid_pre"] = resid
            q_in, k_in, v_in = self._attn_inputs(block, resid, direct, pos, shortformer,
                                                 blocked if layer > 0 else set())
            attn_out = block.attn(q_in, k_in, v_in, cache, prefix + "attn.")
            resid = resid + attn_out
            if cache is not None:
                cache[prefix + "hook_attn_out"] = attn_out
                cache[prefix + "hook_resid_post"] = resid
        if hasattr(self, "ln_final"):
            resid = self.ln_final(resid)
        return resid

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

    def run_with_cache(
        self, tokens: torch.Tensor, blocked_composition: Iterable[str] | None = None
    ) -> Tuple[torch.Tensor, Cache]:
        cache: Cache = {}
        logits = self.forward(tokens, cache=cache, blocked_composition=blocked_composition)
        return logits, cache

    @property
    def head_labels(self) -> list:
        return [f"L{layer}H{h}" for layer in range(self.cfg.n_layers)
                for h in range(self.cfg.n_heads)]
