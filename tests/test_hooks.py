"""Hook points: TransformerLens 3.x names, semantics and shorthand keys, checked against the real
library; the lean path when no hook is set; hooks gone after use, also after an error."""

import functools

import pytest
import torch

from tinyinduct import AttnOnlyTransformer, ModelConfig
from tinyinduct.hooks import ActivationCache, HookPoint, get_act_name
from tinyinduct.interop import to_transformer_lens

tl = pytest.importorskip("transformer_lens")
pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")

SMALL = dict(n_layers=2, n_heads=3, d_model=24, d_head=5, n_ctx=16, d_vocab=40)
CONDITIONS = [(pos, norm) for pos in ("standard", "shortformer") for norm in ("none", "LN")]
TOKENS = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(0))


@functools.cache
def model_pair(positional="standard", normalization="none", seed=0, **tl_overrides):
    """Our model with non-trivial weights everywhere, and its TransformerLens twin (shared
    between tests, which leave no hooks behind)."""
    torch.manual_seed(seed)
    ours = AttnOnlyTransformer(ModelConfig(**SMALL, positional=positional,
                                           normalization=normalization, attn_bias=True))
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theirs = to_transformer_lens(ours)
    for key, value in tl_overrides.items():
        setattr(theirs.cfg, key, value)
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("positional,normalization", CONDITIONS)
def test_cache_names_are_exactly_transformer_lens(positional, normalization):
    ours, theirs = model_pair(positional, normalization)
    _, cache = ours.run_with_cache(TOKENS)
    _, their_cache = theirs.run_with_cache(TOKENS)
    assert list(cache) == list(their_cache.keys())  # the same names, in the same order
    assert len(cache) == (28 if normalization == "LN" else 22)
    for name, value in cache.items():
        torch.testing.assert_close(value, their_cache[name], atol=1e-5, rtol=1e-5, msg=name)
    # every hook point we offer exists in TransformerLens (which has more: MLPs, hook_result)
    assert set(ours.hook_dict) <= set(theirs.hook_dict)
    assert {n for n in ours.hook_dict if n not in cache} == {
        f"blocks.{layer}.hook_{x}_input" for layer in range(2) for x in "qkv"}


def zero_head_1(z, hook):
    z[:, :, 1] = 0.0  # in place, as TransformerLens users often write it
    return z


def uniform_pattern(pattern, hook):
    n = pattern.shape[-1]
    uniform = torch.ones(n, n).tril() / torch.arange(1, n + 1)[:, None]
    pattern[:, 0] = uniform
    return pattern


def scale_resid(resid, hook):
    return resid * (1.5 if hook.layer() == 1 else 1.0)


def keys_from_embed(k_input, hook):  # needs use_split_qkv_input on TransformerLens' side
    return k_input * 0.5


RECORDED = []


def record_name(activation, hook):
    RECORDED.append(hook.name)  # reads only: returns None


USER_HOOKS = [
    ("blocks.0.attn.hook_z", zero_head_1),
    ("blocks.1.attn.hook_pattern", uniform_pattern),
    (lambda name: name.endswith("resid_pre"), scale_resid),
    ("blocks.1.hook_k_input", keys_from_embed),
    ("blocks.0.ln1.hook_normalized", lambda x, hook: x.flip(-1)),
    ("ln_final.hook_scale", lambda x, hook: x * 2),
    ("unembed.hook_in", lambda x, hook: x + 1.0),
    ("hook_pos_embed", lambda x, hook: torch.zeros_like(x)),
]


@pytest.mark.parametrize("positional,normalization,name,fn", [
    (pos, norm, name, fn) for pos, norm in CONDITIONS for name, fn in USER_HOOKS
    if norm == "LN" or "ln" not in str(name)])
def test_a_transformer_lens_hook_function_gives_the_same_result_on_both(
        positional, normalization, name, fn):
    ours, theirs = model_pair(positional, normalization, use_split_qkv_input="input" in str(name))
    plain = ours(TOKENS)
    got = ours.run_with_hooks(TOKENS, fwd_hooks=[(name, fn)])
    expected = theirs.run_with_hooks(TOKENS, fwd_hooks=[(name, fn)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, plain)  # the hook did change something
    torch.testing.assert_close(ours(TOKENS), plain, atol=0, rtol=0)  # and is gone


def test_hooks_see_their_name_and_reading_hooks_change_nothing():
    ours, theirs = model_pair(use_split_qkv_input=True)
    RECORDED.clear()
    plain = ours(TOKENS)
    out = ours.run_with_hooks(TOKENS, fwd_hooks=[(lambda n: True, record_name)])
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    ours_order = list(RECORDED)
    RECORDED.clear()
    theirs.run_with_hooks(TOKENS, fwd_hooks=[(lambda n: n in ours.hook_dict, record_name)])
    assert ours_order == RECORDED  # the same points in the same order, split inputs included
    assert len(RECORDED) == 22 + 6


def test_hooks_are_removed_after_an_error_in_a_hook_or_the_block():
    model, _ = model_pair()

    def broken(x, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.attn.hook_pattern", broken)])
    assert not model.has_hooks()
    with pytest.raises(KeyError):
        with model.hooks([("blocks.0.hook_resid_pre", record_name)]):
            assert model.has_hooks()
            raise KeyError("inside")
    assert not model.has_hooks()
    # hooks added for good stay through a run_with_hooks and go with reset_hooks
    model.add_hook("blocks.0.attn.hook_z", zero_head_1)
    model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.attn.hook_z", zero_head_1)])
    assert [n for n, p in model.hook_dict.items() if p.has_hooks()] == ["blocks.0.attn.hook_z"]
    model.reset_hooks()
    assert not model.has_hooks()


def test_an_unknown_hook_name_is_one_line_naming_it_and_the_allowed_ones():
    model, _ = model_pair()
    with pytest.raises(ValueError) as err:
        model.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.hook_resid_pre", record_name),
                                                ("blocks.5.attn.hook_pattern", record_name)])
    message = str(err.value)
    assert "\n" not in message and "'blocks.5.attn.hook_pattern'" in message
    assert "blocks.{l}.attn.hook_pattern" in message and "(l in 0..1)" in message
    assert "unembed.hook_out" in message
    assert not model.has_hooks()  # nothing was added, not even the valid first one


def test_cache_is_detached_and_takes_transformer_lens_shorthand():
    model, theirs = model_pair(normalization="LN")
    logits, cache = model.run_with_cache(TOKENS)
    _, their_cache = theirs.run_with_cache(TOKENS)
    assert isinstance(cache, ActivationCache)
    assert logits.requires_grad and not any(v.requires_grad for v in cache.values())
    keys = [("pattern", 1), ("q", 0), ("resid_pre", 1), ("resid_post", -1), "embed", "pos_embed",
            ("attn_scores", 0), ("scale", 0, "ln1"), ("normalized", 1, "ln1"), "normalized",
            "scale", "k1", "z0", ("attn_out", 0), "blocks.1.attn.hook_v", ("attn", 1, "a")]
    for key in keys:
        torch.testing.assert_close(cache[key], their_cache[key], atol=1e-5, rtol=1e-5,
                                   msg=str(key))
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
    with pytest.raises(KeyError, match="blocks.0.mlp.hook_post"):
        cache["post", 0]


@pytest.mark.parametrize("args", [
    ("embed",), ("pattern", 1), ("k6",), ("scale4ln1",), ("pre5",), ("normalized", 27, "ln2"),
    ("resid_pre", 3), ("attn", 2), ("attn_logits", 0), ("key", 1, "a"), ("z", 0, "attention"),
    ("scale",), ("hook_embed",), ("blocks.0.attn.hook_q",), ("resid_mid", 1, "b"),
])
def test_shorthand_resolution_follows_transformer_lens(args):
    from transformer_lens.utilities import get_act_name as theirs

    assert get_act_name(*args) == theirs(*args)


def calls_of_hook_points(model, run):
    """Names of the hook points called while `run()` executes."""
    called = []
    names = {id(p): n for n, p in model.hook_dict.items()}

    def spy(module, inputs, output):
        if isinstance(module, HookPoint):
            called.append(names[id(module)])

    handle = torch.nn.modules.module.register_module_forward_hook(spy)
    try:
        run()
    finally:
        handle.remove()
    return called


def test_no_hook_means_the_lean_path_and_a_hook_leaves_other_layers_fused():
    model, _ = model_pair(normalization="LN")
    assert calls_of_hook_points(model, lambda: model(TOKENS)) == []
    called = calls_of_hook_points(model, lambda: model.run_with_hooks(
        TOKENS, fwd_hooks=[("blocks.1.attn.hook_pattern", record_name)]))
    assert "blocks.1.attn.hook_q" in called and "blocks.0.hook_resid_pre" in called
    assert not any(n.startswith("blocks.0.attn.") for n in called)  # layer 0 stayed fused


@pytest.mark.parametrize("positional", ["standard", "shortformer"])
def test_gradients_through_the_hooked_path_match_the_lean_path(positional):
    model, _ = model_pair(positional, "LN")
    model.train()

    def grads(run):
        model.zero_grad()
        run().logsumexp(-1).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    lean = grads(lambda: model(TOKENS))
    hooked = grads(lambda: model.run_with_hooks(TOKENS, fwd_hooks=[
        (lambda n: n.endswith(("hook_pattern", "hook_k_input", "hook_scale")), record_name)]))
    for name in lean:
        torch.testing.assert_close(hooked[name], lean[name], atol=1e-5, rtol=1e-4, msg=name)
