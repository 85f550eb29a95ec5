"""Hand-built induction circuits: the two mechanisms of the walkthrough, as exact weights.

Both circuits predict `B` at the second `A` of `... A B ... A` with one head per layer, in a
residual stream laid out as one-hot blocks (so every weight is a readable 0/1 map):

    TOK [d_vocab]       the current token            (W_E)
    POS [n_ctx]         the current position         (W_pos)
    MOVED [max(V, N)]   what the layer-0 head wrote  (previous token, or earlier position)
    OUT [d_vocab]       what the layer-1 head wrote  (read by W_U)

**K-composition** (`k_composition_weights`). Layer 0 is a previous-token head: query `POS[i]`
matches key `POS[i-1]`, and its OV circuit copies `TOK[i-1]` into `MOVED` ("my previous token
was A"). The layer-1 induction head's query reads `TOK[i]` (A), its key reads `MOVED[j]`: it
attends to the position whose previous token is A, i.e. to `B`, and its OV circuit copies `B`
into `OUT`. Layer 1's *key* input needs layer 0; its query input does not.

**Q-composition** (`q_composition_weights`). Layer 0 is a duplicate-token head: query `TOK[i]`
matches key `TOK[j]` of the earlier copy of A (its own position is pushed down through `POS`),
and its OV circuit moves the *position* `POS[j]` into `MOVED`. The layer-1 head's query reads
`MOVED` and does the pointer arithmetic `j -> j + 1`, its key reads `POS[k]`: it attends to
`j + 1`, which holds B. Layer 1's *query* input needs layer 0; its key input does not.

Q-composition cannot be written with `positional="shortformer"`: there `W_pos` is added only to
the query and key inputs, the value input is `W_E[tok]` (plus earlier heads' outputs, which are
themselves mixes of token embeddings), so no OV circuit can read a position and `MOVED` can
never hold `j`. `q_composition_weights` refuses that mode; the tests show the weights fail there.

Attention logits are `strength` where a head should attend and 0 elsewhere, so patterns are
one-hot up to `exp(-strength)`.
"""

from __future__ import annotations

from typing import Dict

import torch

from .config import ModelConfig
from .model import AttnOnlyTransformer

State = Dict[str, torch.Tensor]


def circuit_config(d_vocab: int = 64, n_ctx: int = 32, positional: str = "standard") -> ModelConfig:
    """The smallest `ModelConfig` holding the one-hot layout: 2 layers of one head, no norms,
    no biases; `d_head = d_vocab + n_ctx` (room for a token and a position)."""
    moved = max(d_vocab, n_ctx)
    return ModelConfig(n_layers=2, n_heads=1, d_model=2 * d_vocab + n_ctx + moved,
                       d_head=d_vocab + n_ctx, n_ctx=n_ctx, d_vocab=d_vocab,
                       positional=positional, normalization="none", attn_bias=False)


class _Layout:
    """Index ranges of the residual blocks for a config made by `circuit_config`."""

    def __init__(self, cfg: ModelConfig):
        V, N = cfg.d_vocab, cfg.n_ctx
        expected = circuit_config(V, N, cfg.positional)
        if (cfg.d_model, cfg.d_head, cfg.n_heads, cfg.n_layers, cfg.normalization) != (
                expected.d_model, expected.d_head, 1, 2, "none"):
            raise ValueError("hand-built circuits need the config of circuit_config(d_vocab, "
                             f"n_ctx): d_model={expected.d_model}, d_head={expected.d_head}, "
                             "n_heads=1, n_layers=2, normalization=none")
        self.V, self.N = V, N
        self.tok, self.pos = 0, V
        self.moved = V + N
        self.out = V + N + max(V, N)


def _empty_state(cfg: ModelConfig) -> State:
    """Every key of the model's state dict, zero (the unused `IGNORE` buffers kept as they are)."""
    state = AttnOnlyTransformer(cfg).state_dict()
    return {k: v if k.endswith("IGNORE") else torch.zeros_like(v) for k, v in state.items()}


def _start(cfg: ModelConfig, unembed_scale: float):
    """`(layout, state)` with what both circuits share: one-hot embeddings, `W_U` reading OUT,
    and the layer-1 OV circuit that copies the attended token into OUT."""
    lay = _Layout(cfg)
    state = _empty_state(cfg)
    V, N = lay.V, lay.N
    state["embed.W_E"][:, lay.tok:lay.tok + V] = torch.eye(V)
    state["pos_embed.W_pos"][:, lay.pos:lay.pos + N] = torch.eye(N)
    state["unembed.W_U"][lay.out:lay.out + V, :] = unembed_scale * torch.eye(V)
    state["blocks.1.attn.W_V"][0, lay.tok:lay.tok + V, :V] = torch.eye(V)
    state["blocks.1.attn.W_O"][0, :V, lay.out:lay.out + V] = torch.eye(V)
    return lay, state


def _qk_gain(cfg: ModelConfig, strength: float) -> float:
    """Entry of W_Q and W_K such that a one-hot match gives an attention logit of `strength`."""
    return (strength * cfg.d_head ** 0.5) ** 0.5


def k_composition_weights(cfg: ModelConfig, strength: float = 30.0,
                          unembed_scale: float = 20.0) -> State:
    """State dict of a perfect induction circuit by K-composition (see the module docstring).
    Works with both positional modes: the layer-0 head reads positions in its query and key
    inputs, where both modes put them."""
    lay, state = _start(cfg, unembed_scale)
    V, N, g = lay.V, lay.N, _qk_gain(cfg, strength)
    a0, a1 = "blocks.0.attn.", "blocks.1.attn."
    # layer 0, previous-token head: query POS[i] -> e_i, key POS[j] -> e_{j+1}
    state[a0 + "W_Q"][0, lay.pos:lay.pos + N, :N] = g * torch.eye(N)
    state[a0 + "W_K"][0, lay.pos:lay.pos + N - 1, 1:N] = g * torch.eye(N - 1)
    # ...whose OV circuit copies the attended token into MOVED
    state[a0 + "W_V"][0, lay.tok:lay.tok + V, :V] = torch.eye(V)
    state[a0 + "W_O"][0, :V, lay.moved:lay.moved + V] = torch.eye(V)
    # layer 1, induction head: query TOK[i], key MOVED[j] (the token before j)
    state[a1 + "W_Q"][0, lay.tok:lay.tok + V, :V] = g * torch.eye(V)
    state[a1 + "W_K"][0, lay.moved:lay.moved + V, :V] = g * torch.eye(V)
    return state


def q_composition_weights(cfg: ModelConfig, strength: float = 30.0,
                          unembed_scale: float = 20.0) -> State:
    """State dict of a perfect induction circuit by Q-composition (see the module docstring).
    Refuses `positional="shortformer"`, where no head can move a position."""
    if cfg.positional == "shortformer":
        raise ValueError("Q-composition needs positions in the residual stream: with "
                         "positional=shortformer the value input never holds W_pos, so the "
                         "layer-0 head cannot move the earlier copy's position to the query")
    lay, state = _start(cfg, unembed_scale)
    V, N, g = lay.V, lay.N, _qk_gain(cfg, strength)
    a0, a1 = "blocks.0.attn.", "blocks.1.attn."
    # layer 0, duplicate-token head: logit = strength * ([same token] - [same position])
    state[a0 + "W_Q"][0, lay.tok:lay.tok + V, :V] = g * torch.eye(V)
    state[a0 + "W_K"][0, lay.tok:lay.tok + V, :V] = g * torch.eye(V)
    state[a0 + "W_Q"][0, lay.pos:lay.pos + N, V:V + N] = -g * torch.eye(N)
    state[a0 + "W_K"][0, lay.pos:lay.pos + N, V:V + N] = g * torch.eye(N)
    # ...whose OV circuit moves the attended *position* j into MOVED
    state[a0 + "W_V"][0, lay.pos:lay.pos + N, :N] = torch.eye(N)
    state[a0 + "W_O"][0, :N, lay.moved:lay.moved + N] = torch.eye(N)
    # layer 1: query MOVED[j] -> e_{j+1} (pointer arithmetic), key POS[k] -> e_k
    state[a1 + "W_Q"][0, lay.moved:lay.moved + N - 1, 1:N] = g * torch.eye(N - 1)
    state[a1 + "W_K"][0, lay.pos:lay.pos + N, :N] = g * torch.eye(N)
    return state


def build_model(cfg: ModelConfig, state: State) -> AttnOnlyTransformer:
    """An `AttnOnlyTransformer` in eval mode holding `state`."""
    model = AttnOnlyTransformer(cfg)
    model.load_state_dict(state)
    return model.eval()


def k_composition_model(d_vocab: int = 64, n_ctx: int = 32, positional: str = "standard"
                        ) -> AttnOnlyTransformer:
    """The K-composition induction circuit as a ready model."""
    cfg = circuit_config(d_vocab, n_ctx, positional)
    return build_model(cfg, k_composition_weights(cfg))


def q_composition_model(d_vocab: int = 64, n_ctx: int = 32) -> AttnOnlyTransformer:
    """The Q-composition induction circuit as a ready model (standard positions only)."""
    cfg = circuit_config(d_vocab, n_ctx)
    return build_model(cfg, q_composition_weights(cfg))
