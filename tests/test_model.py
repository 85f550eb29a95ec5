import pytest
import torch

from tinyinduct import AttnOnlyTransformer, ConfigError, ModelConfig

SMALL = dict(n_layers=2, n_heads=3, d_model=24, d_head=5, n_ctx=16, d_vocab=40)


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return AttnOnlyTransformer(ModelConfig(**{**SMALL, **overrides}))


def expected_state_dict(cfg, ln=False):
    h, d, e, v, n = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_vocab, cfg.n_ctx
    keys = {"embed.W_E": (v, d), "pos_embed.W_pos": (n, d)}
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        if ln:
            keys.update({p + "ln1.w": (d,), p + "ln1.b": (d,)})
        keys.update({
            p + "attn.W_Q": (h, d, e), p + "attn.W_K": (h, d, e), p + "attn.W_V": (h, d, e),
            p + "attn.W_O": (h, e, d), p + "attn.b_Q": (h, e), p + "attn.b_K": (h, e),
            p + "attn.b_V": (h, e), p + "attn.b_O": (d,), p + "attn.mask": (0, 0),
            p + "attn.IGNORE": (),
        })
    if ln:
        keys.update({"ln_final.w": (d,), "ln_final.b": (d,)})
    keys.update({"unembed.W_U": (d, v), "unembed.b_U": (v,)})
    return keys


@pytest.mark.parametrize("normalization", ["none", "LN"])
@pytest.mark.parametrize("attn_bias", [False, True])
def test_state_dict_names_and_shapes_are_transformer_lens(normalization, attn_bias):
    model = make_model(normalization=normalization, attn_bias=attn_bias, n_layers=3)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_state_dict(model.cfg, ln=normalization == "LN")
    trainable = {n for n, _ in model.named_parameters()}
    assert ("blocks.0.attn.b_Q" in trainable) == attn_bias
    assert "blocks.0.attn.W_Q" in trainable and "blocks.0.attn.mask" not in trainable


@pytest.mark.parametrize("normalization", ["none", "LN"])
@pytest.mark.parametrize("positional", ["standard", "shortformer"])
def test_state_dict_matches_real_transformer_lens(normalization, positional):
    tl = pytest.importorskip("transformer_lens")
    cfg = tl.HookedTransformerConfig(
        n_layers=2, d_model=24, d_head=5, n_heads=3, n_ctx=16, d_vocab=40, attn_only=True,
        normalization_type=None if normalization == "none" else "LN",
        positional_embedding_type=positional, act_fn=None)
    theirs = {k: tuple(v.shape) for k, v in tl.HookedTransformer(cfg).state_dict().items()}
    model = make_model(normalization=normalization, positional=positional)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == theirs


def test_logits_and_cache_shapes():
    model = make_model()
    tokens = torch.randint(0, 40, (2, 10))
    logits, cache = model.run_with_cache(tokens)
    assert logits.shape == (2, 10, 40)
    b, p, h, d, e = 2, 10, 3, 24, 5
    shapes = {"hook_embed": (b, p, d), "hook_pos_embed": (b, p, d)}
    for layer in range(2):
        s = f"blocks.{layer}."
        shapes.update({
            s + "hook_resid_pre": (b, p, d), s + "hook_attn_out": (b, p, d),
            s + "hook_resid_post": (b, p, d), s + "attn.hook_q": (b, p, h, e),
            s + "attn.hook_k": (b, p, h, e), s + "attn.hook_v": (b, p, h, e),
            s + "attn.hook_z": (b, p, h, e), s + "attn.hook_attn_scores": (b, h, p, p),
            s + "attn.hook_pattern": (b, h, p, p),
        })
    shapes.update({"unembed.hook_in": (b, p, d), "unembed.hook_out": (b, p, 40)})
    assert {k: tuple(v.shape) for k, v in cache.items()} == shapes
    pattern = cache["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(b, h, p))
    assert torch.all(pattern.triu(1) == 0)


@pytest.mark.parametrize("positional", ["standard", "shortformer"])
@pytest.mark.parametrize("normalization", ["none", "LN"])
@pytest.mark.parametrize("attn_bias", [False, True])
def test_fused_and_explicit_attention_agree(positional, normalization, attn_bias):
    model = make_model(positional=positional, normalization=normalization, attn_bias=attn_bias)
    with torch.no_grad():
        for p in model.parameters():  # non-trivial biases and norms too
            p.add_(0.05 * torch.randn_like(p))
    tokens = torch.randint(0, 40, (3, 16))
    fast = model(tokens)
    explicit, _ = model.run_with_cache(tokens)
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positional", ["standard", "shortformer"])
def test_causal_changing_a_later_token_never_changes_earlier_logits(positional):
    model = make_model(positional=positional)
    tokens = torch.randint(0, 40, (2, 12))
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 40
    for forward in (model, lambda t: model.run_with_cache(t)[0]):
        a, b = forward(tokens), forward(changed)
        torch.testing.assert_close(a[:, :7], b[:, :7], atol=0, rtol=0)
        assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_shortformer_values_carry_no_position():
    model = make_model(positional="shortformer")
    tokens = torch.randint(0, 40, (2, 16))
    _, before = model.run_with_cache(tokens)
    with torch.no_grad():
        model.pos_embed.W_pos.copy_(model.pos_embed.W_pos[torch.randperm(16)])
    _, after = model.run_with_cache(tokens)
    torch.testing.assert_close(before["blocks.0.attn.hook_v"], after["blocks.0.attn.hook_v"],
                               atol=0, rtol=0)
    torch.testing.assert_close(before["blocks.0.hook_resid_pre"],
                               after["blocks.0.hook_resid_pre"], atol=0, rtol=0)
    # ...while queries and keys do see position, and so does the pattern
    assert not torch.allclose(before["blocks.0.attn.hook_k"], after["blocks.0.attn.hook_k"])


def test_standard_values_do_carry_position():
    model = make_model(positional="standard")
    tokens = torch.randint(0, 40, (2, 16))
    _, before = model.run_with_cache(tokens)
    with torch.no_grad():
        model.pos_embed.W_pos.copy_(model.pos_embed.W_pos[torch.randperm(16)])
    _, after = model.run_with_cache(tokens)
    assert not torch.allclose(before["blocks.0.attn.hook_v"], after["blocks.0.attn.hook_v"])


@pytest.mark.parametrize("blocked", ["Q", "K", "V"])
@pytest.mark.parametrize("positional", ["standard", "shortformer"])
def test_blocked_inputs_ignore_earlier_heads(blocked, positional):
    model = make_model(positional=positional)
    tokens = torch.randint(0, 40, (2, 16))
    hook = {"Q": "hook_q", "K": "hook_k", "V": "hook_v"}[blocked]
    _, before = model.run_with_cache(tokens, blocked_composition=[blocked])
    with torch.no_grad():
        model.blocks[0].attn.W_O.mul_(-3.0)  # layer 0 now writes something else
    _, after = model.run_with_cache(tokens, blocked_composition=[blocked])
    torch.testing.assert_close(before[f"blocks.1.attn.{hook}"], after[f"blocks.1.attn.{hook}"],
                               atol=0, rtol=0)
    unblocked = ({"hook_q", "hook_k", "hook_v"} - {hook}).pop()
    assert not torch.allclose(before[f"blocks.1.attn.{unblocked}"],
                              after[f"blocks.1.attn.{unblocked}"])


def test_any_number_of_layers_and_d_head_independent_of_d_model():
    model = make_model(n_layers=1, d_head=7)
    assert model(torch.randint(0, 40, (1, 5))).shape == (1, 5, 40)
    model = make_model(n_layers=4, d_head=32)
    assert len(model.blocks) == 4 and model(torch.randint(0, 40, (1, 5))).shape == (1, 5, 40)


@pytest.mark.parametrize("field,value", [
    ("positional", "rotary"), ("normalization", "RMS"), ("n_layers", 0), ("d_head", -1),
    ("blocked_composition", ["X"]), ("blocked_composition", ["K", "K"]),
])
def test_bad_model_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"model.{field}"):
        ModelConfig(**{**SMALL, field: value})


def test_too_long_sequence_is_refused_clearly():
    with pytest.raises(ValueError, match="n_ctx"):
        make_model()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("positional,normalization", [("standard", "none"), ("shortformer", "LN")])
def test_torch_compile_gives_the_same_logits_and_gradients(positional, normalization):
    """Under torch.compile the model takes its explicit path (the fused path's autograd functions
    do not trace); aot_eager traces it as inductor would, without generating code."""
    from tinyinduct.stack import next_token_loss

    model = make_model(positional=positional, normalization=normalization, attn_bias=True)
    tokens = torch.randint(0, 40, (3, 16))
    grads = []
    for loss_fn in (lambda t: next_token_loss(model(t), t),
                    torch.compile(lambda t: next_token_loss(model(t), t), backend="aot_eager",
                                  fullgraph=True)):
        model.zero_grad()
        loss = loss_fn(tokens)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = grads
    torch.testing.assert_close(compiled_loss, eager_loss)
    for eager, compiled in zip(eager_grads, compiled_grads):
        torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-5)
