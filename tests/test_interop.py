"""The TransformerLens round trip, checked against the real library (transformer-lens 3.x)."""

import pytest
import torch

from tinyinduct import AttnOnlyTransformer, ModelConfig
from tinyinduct.interop import from_transformer_lens, to_transformer_lens

tl = pytest.importorskip("transformer_lens")
pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")

SMALL = dict(n_layers=2, n_heads=3, d_model=24, d_head=5, n_ctx=16, d_vocab=40)
CONDITIONS = [(pos, norm, bias) for pos in ("standard", "shortformer") for norm in ("none", "LN")
              for bias in (False, True)]


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial values everywhere: biases and LayerNorm weights too, not just W_*."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def assert_same_function(ours: AttnOnlyTransformer, theirs, n_layers: int) -> None:
    tokens = torch.randint(0, SMALL["d_vocab"], (4, SMALL["n_ctx"]),
                           generator=torch.Generator().manual_seed(1))
    logits, cache = ours.run_with_cache(tokens)
    their_logits, their_cache = theirs.run_with_cache(tokens)
    torch.testing.assert_close(logits, their_logits, atol=1e-5, rtol=1e-5)
    for layer in range(n_layers):
        name = f"blocks.{layer}.attn.hook_pattern"
        torch.testing.assert_close(cache[name], their_cache[name], atol=1e-5, rtol=1e-5)
    # every hook we record exists in TransformerLens under the same name, with the same value
    for name, value in cache.items():
        theirs_value = their_cache[name]
        if theirs_value.dim() == value.dim() + 1:  # use_split_qkv_input: ln1 sees head copies
            theirs_value = theirs_value[:, :, 0]
        torch.testing.assert_close(value, theirs_value, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("positional,normalization,attn_bias", CONDITIONS)
def test_to_transformer_lens_computes_the_same_function(positional, normalization, attn_bias):
    torch.manual_seed(0)
    ours = perturbed(AttnOnlyTransformer(ModelConfig(
        **SMALL, positional=positional, normalization=normalization, attn_bias=attn_bias)), 2)
    hooked = to_transformer_lens(ours)
    assert isinstance(hooked, tl.HookedTransformer)
    assert hooked.cfg.positional_embedding_type == positional
    assert hooked.cfg.normalization_type == (None if normalization == "none" else "LN")
    assert_same_function(ours, hooked, SMALL["n_layers"])
    # a copy, not a view: training one leaves the other alone
    with torch.no_grad():
        hooked.blocks[0].attn.W_Q.mul_(2)
    assert not torch.equal(hooked.blocks[0].attn.W_Q, ours.blocks[0].attn.W_Q)


@pytest.mark.parametrize("positional,normalization,attn_bias", CONDITIONS)
def test_from_transformer_lens_computes_the_same_function(positional, normalization, attn_bias):
    cfg = tl.HookedTransformerConfig(
        **SMALL, attn_only=True, act_fn=None, positional_embedding_type=positional,
        normalization_type=None if normalization == "none" else "LN", seed=3)
    hooked = tl.HookedTransformer(cfg)
    if attn_bias:
        perturbed(hooked, 4)  # TransformerLens initialises biases at zero
    ours = from_transformer_lens(hooked)
    assert isinstance(ours, AttnOnlyTransformer)
    assert (ours.cfg.positional, ours.cfg.normalization) == (positional, normalization)
    assert ours.cfg.attn_bias == attn_bias
    assert_same_function(ours, hooked, SMALL["n_layers"])


@pytest.mark.parametrize("positional,normalization,attn_bias", CONDITIONS[::3])
def test_round_trip_keeps_config_and_every_weight(positional, normalization, attn_bias):
    torch.manual_seed(5)
    cfg = ModelConfig(**SMALL, positional=positional, normalization=normalization,
                      attn_bias=attn_bias, init_range=0.05)
    ours = perturbed(AttnOnlyTransformer(cfg), 6)
    back = from_transformer_lens(to_transformer_lens(ours))
    assert back.cfg == cfg
    before, after = ours.state_dict(), back.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("blocked,positional,normalization", [
    (["K"], "standard", "none"), (["Q"], "shortformer", "LN"), (["Q", "K"], "shortformer", "none"),
    (["V"], "standard", "LN"), (["K", "V"], "shortformer", "LN")])
def test_blocked_composition_converts_with_split_inputs(blocked, positional, normalization):
    torch.manual_seed(7)
    cfg = ModelConfig(**{**SMALL, "n_layers": 3}, positional=positional,
                      normalization=normalization, attn_bias=True, blocked_composition=blocked)
    ours = perturbed(AttnOnlyTransformer(cfg), 8)
    hooked = to_transformer_lens(ours)
    assert hooked.cfg.use_split_qkv_input
    assert_same_function(ours, hooked, 3)
    # the blocking is no optional extra: it survives reset_hooks, and without it logits differ
    hooked.reset_hooks()
    tokens = torch.randint(0, SMALL["d_vocab"], (2, SMALL["n_ctx"]))
    torch.testing.assert_close(hooked(tokens), ours(tokens), atol=1e-5, rtol=1e-5)
    unblocked = ours(tokens, blocked_composition=[])
    assert (hooked(tokens) - unblocked).abs().max() > 1e-4  # 10x the tolerance above
    back = from_transformer_lens(hooked)
    assert back.cfg == cfg


def test_split_inputs_with_foreign_hooks_are_refused():
    cfg = tl.HookedTransformerConfig(**SMALL, attn_only=True, act_fn=None,
                                     use_split_qkv_input=True)
    hooked = tl.HookedTransformer(cfg)
    assert from_transformer_lens(hooked).cfg.blocked_composition == []  # no hooks: plain model
    hooked.add_perma_hook("blocks.1.hook_k_input", lambda x, hook: 0 * x)
    with pytest.raises(ValueError, match="use_split_qkv_input"):
        from_transformer_lens(hooked)


@pytest.mark.parametrize("overrides,field", [
    (dict(attn_only=False, d_mlp=8, act_fn="relu"), "attn_only"),
    (dict(positional_embedding_type="rotary", rotary_dim=4), "positional_embedding_type"),
    (dict(normalization_type="RMS"), "normalization_type"),
    (dict(use_attn_scale=False), "use_attn_scale"),
])
def test_a_model_tinyinduct_cannot_express_is_refused_naming_the_field(overrides, field):
    base = dict(**SMALL, attn_only=True, act_fn=None, normalization_type=None)
    hooked = tl.HookedTransformer(tl.HookedTransformerConfig(**{**base, **overrides}))
    with pytest.raises(ValueError, match=field):
        from_transformer_lens(hooked)
