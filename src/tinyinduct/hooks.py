"""Hook points with TransformerLens semantics, and the activation cache.

A `HookPoint` is an identity module placed on an activation (`pattern = self.hook_pattern(
pattern)`); a hook function `fn(activation, hook)` added to it reads the activation and may return
a replacement (None keeps it), exactly as in TransformerLens 3.x, so its users' hook functions run
unchanged. `hook.name` is the point's TransformerLens name. Hooks are PyTorch forward hooks:
several on one point run in the order they were added, each seeing the previous one's output.

`ActivationCache` is a dict of detached activations by full name that also takes TransformerLens'
shorthand keys (`cache["pattern", 1]`, `cache["resid_pre", 0]`, `cache["embed"]`), resolved by the
rules of TransformerLens' `utils.get_act_name`.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

HookFn = Callable[..., torch.Tensor | None]  # fn(activation, hook) -> replacement or None
NameFilter = Union[str, Sequence[str], Callable[[str], bool], None]
FwdHooks = Iterable[Tuple[Union[str, Callable[[str], bool]], HookFn]]


class HookPoint(nn.Module):
    """Identity on its input; hook functions added with `add_hook` see and may replace it."""

    def __init__(self):
        super().__init__()
        self.name: str | None = None  # set by `name_hook_points` from the root module
        self.ctx: dict = {}  # scratch space for hook functions, as in TransformerLens

    def add_hook(self, hook: HookFn, dir: str = "fwd") -> RemovableHandle:
        """Run `hook(activation, hook=self)` on every forward call; a returned tensor replaces
        the activation. Only forward hooks exist here (`dir="fwd"`)."""
        if dir != "fwd":
            raise ValueError(f"dir={dir!r}: tinyinduct hook points take forward hooks only "
                             "(dir='fwd'); use torch autograd for gradients")

        def full_hook(module: nn.Module, inputs: tuple, output: torch.Tensor):
            return hook(output, hook=self)

        full_hook.__name__ = repr(hook)
        return self.register_forward_hook(full_hook)

    def has_hooks(self) -> bool:
        return bool(self._forward_hooks)

    def remove_hooks(self, dir: str = "fwd") -> None:
        self._forward_hooks.clear()

    def layer(self) -> int:
        """The block index in this point's name (`blocks.1.attn.hook_q` -> 1)."""
        if self.name is None or not self.name.startswith("blocks."):
            raise ValueError(f"hook point {self.name!r} belongs to no layer")
        return int(self.name.split(".")[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __repr__(self) -> str:
        return f"HookPoint(name={self.name!r})"


def name_hook_points(root: nn.Module) -> Dict[str, HookPoint]:
    """Every `HookPoint` under `root` by its module path, which also becomes its `.name`."""
    points = {}
    for name, module in root.named_modules():
        if isinstance(module, HookPoint):
            module.name = name
            points[name] = module
    return points


def describe_names(names: Iterable[str]) -> str:
    """The names in one line, layers folded: `hook_embed, blocks.{l}.hook_resid_pre, ...`."""
    folded: List[str] = []
    for name in names:
        pattern = re.sub(r"^blocks\.\d+\.", "blocks.{l}.", name)
        if pattern not in folded:
            folded.append(pattern)
    return ", ".join(folded)


def matching_points(points: Dict[str, HookPoint], name_or_filter: str | NameFilter
                    ) -> List[HookPoint]:
    """The points a name (exact) or a filter function selects; an unknown name is a ValueError
    naming it and listing the known ones."""
    if callable(name_or_filter):
        return [p for name, p in points.items() if name_or_filter(name)]
    if name_or_filter not in points:
        layers = sorted({int(n.split(".")[1]) for n in points if n.startswith("blocks.")})
        where = f" (l in 0..{layers[-1]})" if layers else ""
        raise ValueError(f"unknown hook name {name_or_filter!r}; allowed{where}: "
                         f"{describe_names(points)}")
    return [points[name_or_filter]]


@contextmanager
def attached(points: Dict[str, HookPoint], fwd_hooks: FwdHooks) -> Iterator[None]:
    """Add `(name_or_filter, fn)` hooks for the duration of the block; exactly these are
    removed afterwards, also when the block (or a hook) raises. Names are checked first, so an
    unknown one adds nothing."""
    pairs = [(point, fn) for name, fn in fwd_hooks for point in matching_points(points, name)]
    handles = []
    try:
        for point, fn in pairs:
            handles.append(point.add_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


def names_matching(names: Iterable[str], names_filter: NameFilter) -> List[str]:
    """TransformerLens' `names_filter`: None (all), a name, a list of names, or a function."""
    names = list(names)
    if names_filter is None:
        return names
    if isinstance(names_filter, str):
        return [n for n in names if n == names_filter]
    if callable(names_filter):
        return [n for n in names if names_filter(n)]
    return [n for n in names if n in set(names_filter)]


def caching_hooks(names: Iterable[str], cache: dict) -> List[Tuple[str, HookFn]]:
    """Hooks that store each named activation, detached, in `cache` under its full name."""
    def store(activation: torch.Tensor, hook: HookPoint) -> None:
        cache[hook.name] = activation.detach()

    return [(name, store) for name in names]


# --- TransformerLens' shorthand names (utils.get_act_name) ---

_LAYER_TYPE_ALIAS = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "",
                     "attention": "attn"}
_ACT_NAME_ALIAS = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q",
                   "value": "v", "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_ATTN_NAMES = ("k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores")
_MLP_NAMES = ("pre", "post", "mid", "pre_linear")


def get_act_name(name: str, layer: int | str | None = None, layer_type: str | None = None
                 ) -> str:
    """The full hook name of a shorthand, by TransformerLens' rules: `("pattern", 1)` ->
    `blocks.1.attn.hook_pattern`, `"embed"` -> `hook_embed`, `"k6"` -> `blocks.6.attn.hook_k`,
    `("scale", 0, "ln1")` -> `blocks.0.ln1.hook_scale`, `"normalized"` -> `ln_final.hook_...`."""
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name  # already a full name
    match = re.match(r"([a-z]+)(\d+)([a-z]?.*)", name)
    if match is not None:
        name, layer, layer_type = match.groups(0)
    name = _ACT_NAME_ALIAS.get(name, name)
    full = f"blocks.{layer}." if layer is not None else ""
    if name in _ATTN_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIAS:
        layer_type = _LAYER_TYPE_ALIAS[layer_type]
    if layer_type:
        full += f"{layer_type}."
    full += f"hook_{name}"
    if name in ("scale", "normalized") and layer is None:
        full = f"ln_final.{full}"
    return full


class ActivationCache(dict):
    """Activations by full hook name, also indexed TransformerLens' way: `cache["pattern", 1]`,
    `cache["q", 0]`, `cache["resid_pre", -1]` (negative layers count from the end),
    `cache["embed"]`."""

    def __init__(self, data: Any = (), n_layers: int | None = None):
        super().__init__(data)
        self.n_layers = n_layers

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, str) and dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        if isinstance(key, str):
            name = get_act_name(key)
        else:
            key = tuple(key)
            if len(key) > 1 and key[1] is not None and int(key[1]) < 0:
                if self.n_layers is None:
                    raise KeyError(f"{key!r}: a negative layer needs the cache's n_layers")
                key = (key[0], self.n_layers + int(key[1]), *key[2:])
            name = get_act_name(*key)
        if not dict.__contains__(self, name):
            raise KeyError(f"{key!r} means {name!r}, which is not in this cache "
                           f"(it holds {describe_names(self)})")
        return dict.__getitem__(self, name)

    def __repr__(self) -> str:
        return f"ActivationCache({describe_names(self)})"


def direct_path_hooks(layers: Iterable[int], inputs: Iterable[str], shortformer: bool
                      ) -> List[Tuple[str, HookFn]]:
    """Hooks making `inputs` (among Q, K, V) of `layers` read the direct path, the token
    embedding plus (standard positions) the positional one, instead of the residual stream: no
    earlier head reaches them. They replace TransformerLens' split inputs
    `blocks.{l}.hook_{q,k,v}_input` with what `hook_embed` (+ `hook_pos_embed`) held in the same
    forward pass, so they also run on TransformerLens 3.x with `use_split_qkv_input=True`."""
    seen: Dict[str, torch.Tensor] = {}

    def keep(activation: torch.Tensor, hook: HookPoint) -> None:
        seen[hook.name] = activation

    def direct(split_input: torch.Tensor, hook: HookPoint) -> torch.Tensor:  # [b, p, h, d]
        path = seen["hook_embed"] if shortformer else seen["hook_embed"] + seen["hook_pos_embed"]
        return path[:, :, None].expand_as(split_input)

    return [("hook_embed", keep), ("hook_pos_embed", keep)] + [
        (f"blocks.{layer}.hook_{x.lower()}_input", direct) for layer in layers for x in inputs]
