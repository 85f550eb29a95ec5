"""TransformerLens round trip: `to_transformer_lens(model)` and `from_transformer_lens(model)`.

Our state dict already has TransformerLens 3.x's keys and shapes, so a conversion is a config
mapping plus `load_state_dict`; a model trained with `blocked_composition` also gets
`use_split_qkv_input=True` and permanent hooks that feed its blocked inputs from the
embeddings. TransformerLens is an optional extra (`pip install "tinyinduct[tl]"`, which pins
`transformer-lens<4`).

TransformerLens 4.x removed `HookedTransformer`; its native `TransformerBridge` has no shortformer
positions (and no blocked composition), so tinyinduct converts to 3.x only. A 4.x user has two
ways: run the same hook functions on tinyinduct's own model, which has TransformerLens' hook
names, `fn(activation, hook)` semantics, `run_with_hooks`, `run_with_cache` and shorthand cache
keys, and needs no TransformerLens at all; or install `transformer-lens<4` (the `tl` extra) in
the environment where they convert.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Dict

import torch

from .config import ModelConfig
from .hooks import direct_path_hooks
from .model import AttnOnlyTransformer

if TYPE_CHECKING:  # the import is deferred so tinyinduct works without TransformerLens
    from transformer_lens import HookedTransformer

# Set on a converted HookedTransformer whose split inputs carry tinyinduct's blocking hooks.
BLOCKED_ATTRIBUTE = "tinyinduct_blocked_composition"

# Buffers that both models keep in their state dicts but that carry no weights.
_NON_WEIGHTS = ("attn.mask", "attn.IGNORE")

# TransformerLens options that change the function computed, with the only value we share.
_TL_REQUIRED: Dict[str, Any] = {
    "attn_only": True,
    "positional_embedding_type": ("standard", "shortformer"),
    "normalization_type": (None, "LN"),
    "attention_dir": "causal",
    "use_attn_scale": True,
    "eps": 1e-5,
    "n_key_value_heads": None,
    "use_local_attn": False,
    "scale_attn_by_inverse_layer_idx": False,
    "use_qk_norm": False,
    "use_logn_attn": False,
    "clip_qkv": None,
    "final_rms": False,
    "post_embedding_ln": False,
    "use_normalization_before_and_after": False,
    "use_attention_sinks": False,
}


def _import_transformer_lens():
    try:
        import transformer_lens
    except ImportError as err:
        raise ImportError('TransformerLens is not installed: pip install "tinyinduct[tl]" '
                          '(it pins transformer-lens<4, which has HookedTransformer)') from err
    if not hasattr(transformer_lens, "HookedTransformer"):
        raise ImportError(f"transformer-lens {getattr(transformer_lens, '__version__', '?')} has "
                          'no HookedTransformer (removed in 4.x): pip install "transformer-lens<4"')
    return transformer_lens


def _weights(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith(_NON_WEIGHTS)}


def _load_weights(target: torch.nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Copy every weight; only the two weightless buffers may be left as they were."""
    missing, unexpected = target.load_state_dict(_weights(state), strict=False)
    missing = [k for k in missing if not k.endswith(_NON_WEIGHTS)]
    if missing or unexpected:
        raise ValueError(f"state dicts do not match: missing {missing}, unexpected {unexpected}")


def to_transformer_lens(model: AttnOnlyTransformer) -> HookedTransformer:
    """A TransformerLens 3.x `HookedTransformer` computing exactly what `model` computes.

    Weights are copied (the two models share no tensors); it lives on `model`'s device and dtype.
    A model trained with `blocked_composition` becomes a model with `use_split_qkv_input=True`
    whose blocked inputs of layers >= 1 (`blocks.{l}.hook_{q,k,v}_input`) are replaced, by
    permanent hooks (`reset_hooks()` keeps them), with the token embedding plus, for standard
    positions, the positional one, as tinyinduct computes them. Its cache then also holds the
    split inputs, and its `ln1` hooks see per-head copies (`[batch, pos, head, ...]`).
    TransformerLens 4.x has no `HookedTransformer`: see the module docstring.
    """
    tl = _import_transformer_lens()
    cfg = model.cfg
    param = next(model.parameters())
    tl_cfg = tl.HookedTransformerConfig(
        n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model, d_head=cfg.d_head,
        n_ctx=cfg.n_ctx, d_vocab=cfg.d_vocab, d_vocab_out=cfg.d_vocab,
        attn_only=True, act_fn=None, d_mlp=None,
        normalization_type="LN" if cfg.normalization == "LN" else None,
        positional_embedding_type=cfg.positional,
        initializer_range=cfg.init_range,
        # Sequences carry their own BOS (token 0) and there is no tokenizer to add one.
        default_prepend_bos=False,
        init_weights=False, device=str(param.device), dtype=param.dtype,
        model_name="tinyinduct", use_split_qkv_input=bool(cfg.blocked_composition),
    )
    with warnings.catch_warnings():  # 3.x warns that 4.x drops the class we target on purpose
        warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
        hooked = tl.HookedTransformer(tl_cfg)
    _load_weights(hooked, model.state_dict())
    if cfg.blocked_composition:
        for name, fn in direct_path_hooks(range(1, cfg.n_layers), cfg.blocked_composition,
                                          cfg.positional == "shortformer"):
            hooked.add_perma_hook(name, fn)
        setattr(hooked, BLOCKED_ATTRIBUTE, list(cfg.blocked_composition))
    return hooked.train(model.training)


def model_config_from_transformer_lens(tl_cfg: Any, attn_bias: bool = False,
                                       blocked_composition: list | None = None) -> ModelConfig:
    """The `ModelConfig` of a TransformerLens config, or a ValueError naming what does not fit."""
    for name, allowed in _TL_REQUIRED.items():
        value = getattr(tl_cfg, name, allowed if not isinstance(allowed, tuple) else allowed[0])
        ok = value in allowed if isinstance(allowed, tuple) else value == allowed
        if not ok:
            raise ValueError(f"TransformerLens cfg.{name}={value!r} has no tinyinduct "
                             f"counterpart; allowed: {allowed!r}")
    if not math.isclose(tl_cfg.attn_scale, math.sqrt(tl_cfg.d_head)):
        raise ValueError(f"TransformerLens cfg.attn_scale={tl_cfg.attn_scale}: tinyinduct "
                         f"scales scores by sqrt(d_head) = {math.sqrt(tl_cfg.d_head)}")
    if tl_cfg.d_vocab_out != tl_cfg.d_vocab:
        raise ValueError(f"TransformerLens cfg.d_vocab_out={tl_cfg.d_vocab_out}: tinyinduct "
                         f"needs it equal to d_vocab ({tl_cfg.d_vocab})")
    init_range = tl_cfg.initializer_range if tl_cfg.initializer_range > 0 else 0.1
    return ModelConfig(
        n_layers=tl_cfg.n_layers, n_heads=tl_cfg.n_heads, d_model=tl_cfg.d_model,
        d_head=tl_cfg.d_head, n_ctx=tl_cfg.n_ctx, d_vocab=tl_cfg.d_vocab,
        positional=tl_cfg.positional_embedding_type,
        normalization="LN" if tl_cfg.normalization_type == "LN" else "none",
        attn_bias=attn_bias, init_range=init_range,
        blocked_composition=list(blocked_composition or []))


def from_transformer_lens(hooked: HookedTransformer,
                          attn_bias: bool | None = None) -> AttnOnlyTransformer:
    """An `AttnOnlyTransformer` computing exactly what a TransformerLens `HookedTransformer` does.

    `attn_bias` (trainable attention biases) defaults to whether any of them is non-zero, so a
    model converted there and back keeps its config (`blocked_composition` included). Raises
    ValueError for a model tinyinduct cannot express (MLPs, rotary positions, other norms, split
    inputs with hooks it did not set, ...), naming the TransformerLens field.
    """
    state = hooked.state_dict()
    if attn_bias is None:
        attn_bias = any(bool(v.any()) for k, v in state.items()
                        if k.split(".")[-1] in ("b_Q", "b_K", "b_V", "b_O"))
    blocked = getattr(hooked, BLOCKED_ATTRIBUTE, None)
    split_hooked = [name for name, point in hooked.hook_dict.items()
                    if name.endswith(("hook_q_input", "hook_k_input", "hook_v_input"))
                    and point.has_hooks()]
    if blocked is None and getattr(hooked.cfg, "use_split_qkv_input", False) and split_hooked:
        raise ValueError(f"TransformerLens cfg.use_split_qkv_input=True with hooks on "
                         f"{split_hooked[0]}: tinyinduct can only express its own blocking hooks "
                         "(from to_transformer_lens); remove the hooks to convert")
    cfg = model_config_from_transformer_lens(hooked.cfg, attn_bias=attn_bias,
                                             blocked_composition=blocked)
    param = next(hooked.parameters())
    model = AttnOnlyTransformer(cfg).to(device=param.device, dtype=param.dtype)
    _load_weights(model, state)
    return model.train(hooked.training)
