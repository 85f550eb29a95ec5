"""The hand-built K- and Q-composition circuits: perfect on the probe, attributed correctly."""

import pytest
import torch

from tinyinduct.circuits import (
    build_model,
    circuit_config,
    k_composition_model,
    k_composition_weights,
    q_composition_model,
    q_composition_weights,
)
from tinyinduct.config import DataConfig, ModelConfig
from tinyinduct.data import induction_mask, make_probe
from tinyinduct.evaluate import partner_summary
from tinyinduct.metrics import (
    attribution_verdict,
    composition_partners,
    head_scores,
    induction_score,
    masked_mean,
    mechanism_attribution,
    per_position_loss,
)
from tinyinduct.model import AttnOnlyTransformer

V, N = 64, 32
PROBE = make_probe(DataConfig(d_vocab=V, seq_len=N, min_copy_len=4, max_copy_len=15,
                              eval_batch_size=64), seed=5)


def scores_and_losses(model):
    logits, cache = model.run_with_cache(PROBE.tokens)
    loss = per_position_loss(logits, PROBE.tokens)
    return (head_scores(cache, PROBE.tokens, PROBE.second_copy),
            masked_mean(loss, PROBE.second_copy).item(), masked_mean(loss, PROBE.first_copy).item())


@pytest.mark.parametrize("positional", ["standard", "shortformer"])
def test_k_composition_circuit_is_a_perfect_induction_circuit(positional):
    scores, second, first = scores_and_losses(k_composition_model(V, N, positional))
    assert scores["heads/prev_token/L0H0"] > 0.99
    assert scores["heads/induction/L1H0"] > 0.99
    assert second < 0.25 * first  # ambiguous repeats in a 64-token vocabulary cost a little
    attribution = mechanism_attribution(k_composition_model(V, N, positional), PROBE.tokens)
    head = attribution["L1H0"]
    assert head["verdict"] == "K" and attribution["run"] == {"head": "L1H0", "verdict": "K"}
    assert head["full"] > 0.99 and head["q_removed"] > 0.99
    assert head["k_removed"] < 0.1 and head["qk_removed"] < 0.1


def test_q_composition_circuit_is_a_perfect_induction_circuit():
    model = q_composition_model(V, N)
    scores, second, first = scores_and_losses(model)
    assert scores["heads/duplicate/L0H0"] > 0.99  # layer 0 finds the earlier copy of A
    assert scores["heads/prev_token/L0H0"] < 0.2
    assert scores["heads/induction/L1H0"] > 0.99
    assert second < 0.25 * first
    head = mechanism_attribution(model, PROBE.tokens)["L1H0"]
    assert head["verdict"] == "Q"
    assert head["full"] > 0.99 and head["k_removed"] > 0.99
    assert head["q_removed"] < 0.1 and head["qk_removed"] < 0.1


def test_composition_partner_is_the_layer0_head():
    k_model, q_model = k_composition_model(V, N), q_composition_model(V, N)
    assert composition_partners(k_model, PROBE.tokens, "L1H0", ("K",))["L0H0"] < 0.1
    assert composition_partners(k_model, PROBE.tokens, "L1H0", ("Q",))["L0H0"] > 0.99
    assert composition_partners(q_model, PROBE.tokens, "L1H0", ("Q",))["L0H0"] < 0.1


def test_run_summary_names_the_partner_head():
    k = partner_summary(k_composition_model(V, N), PROBE,
                        {"mechanism_head": "L1H0", "mechanism": "K"})
    assert k["composes_with"] == "L0H0" and k["previous_token_head"] == "L0H0"
    assert k["composes_with_prev_token_score"] > 0.99
    assert k["composes_with_scores"]["L0H0"] < 0.1
    q = partner_summary(q_composition_model(V, N), PROBE,
                        {"mechanism_head": "L1H0", "mechanism": "Q"})
    assert q["composes_with"] == "L0H0"
    assert q["previous_token_head"] is None  # a duplicate-token head, not a previous-token one
    none = partner_summary(k_composition_model(V, N), PROBE,
                           {"mechanism_head": "L1H0", "mechanism": "none"})
    assert set(none.values()) == {None}


def test_attribution_matches_the_models_own_blocking():
    """For two layers, removing layer 0 from one input of layer 1 is the model's blocking."""
    torch.manual_seed(0)
    for positional in ("standard", "shortformer"):
        model = AttnOnlyTransformer(ModelConfig(d_vocab=V, n_ctx=N, positional=positional))
        attribution = mechanism_attribution(model, PROBE.tokens)
        for blocked, key in ((["K"], "k_removed"), (["Q"], "q_removed"),
                             (["Q", "K"], "qk_removed")):
            _, cache = model.run_with_cache(PROBE.tokens, blocked_composition=blocked)
            expected = induction_score(cache["blocks.1.attn.hook_pattern"], PROBE.tokens,
                                       induction_mask(PROBE.tokens))
            got = torch.tensor([attribution[f"L1H{h}"][key] for h in range(4)])
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_q_composition_is_impossible_with_shortformer():
    with pytest.raises(ValueError, match="shortformer"):
        q_composition_weights(circuit_config(V, N, "shortformer"))
    # the same weights in a shortformer model: layer 0 cannot move a position, the head is gone
    cfg = circuit_config(V, N, "shortformer")
    model = build_model(cfg, q_composition_weights(circuit_config(V, N)))
    scores, _, _ = scores_and_losses(model)
    assert scores["heads/induction/L1H0"] < 0.2


def test_shortformer_values_never_see_positions():
    """Why: every value vector of a shortformer model is the same whatever W_pos is."""
    torch.manual_seed(1)
    model = AttnOnlyTransformer(ModelConfig(d_vocab=V, n_ctx=N, positional="shortformer"))
    _, before = model.run_with_cache(PROBE.tokens)
    with torch.no_grad():
        model.pos_embed.W_pos.normal_()
    _, after = model.run_with_cache(PROBE.tokens)
    torch.testing.assert_close(before["blocks.0.attn.hook_v"], after["blocks.0.attn.hook_v"])
    assert not torch.allclose(before["blocks.0.attn.hook_pattern"],
                              after["blocks.0.attn.hook_pattern"])


def test_weights_are_a_full_state_dict_and_refuse_other_shapes():
    cfg = circuit_config(V, N)
    state = k_composition_weights(cfg)
    assert set(state) == set(AttnOnlyTransformer(cfg).state_dict())
    assert state["blocks.0.attn.W_Q"].shape == (1, cfg.d_model, cfg.d_head)
    with pytest.raises(ValueError, match="circuit_config"):
        k_composition_weights(ModelConfig(d_vocab=V, n_ctx=N))


def test_attribution_in_a_deeper_model_changes_only_the_scored_layer():
    """Layer 2's `k_removed` reads the direct path at layer 2 only; with layer 1 silenced
    (W_O = 0) that is exactly the model's own blocking of every layer >= 1."""
    torch.manual_seed(2)
    model = AttnOnlyTransformer(ModelConfig(n_layers=3, d_vocab=V, n_ctx=N))
    with torch.no_grad():
        model.blocks[1].attn.W_O.zero_()
    attribution = mechanism_attribution(model, PROBE.tokens)
    assert set(attribution) == {f"L{layer}H{h}" for layer in (1, 2) for h in range(4)} | {"run"}
    for blocked, key in ((["K"], "k_removed"), (["Q"], "q_removed")):
        _, cache = model.run_with_cache(PROBE.tokens, blocked_composition=blocked)
        expected = induction_score(cache["blocks.2.attn.hook_pattern"], PROBE.tokens,
                                   induction_mask(PROBE.tokens))
        got = torch.tensor([attribution[f"L2H{h}"][key] for h in range(4)])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # ...and layer 1's own removal does not leak into layer 2's full score
    _, cache = model.run_with_cache(PROBE.tokens)
    full = induction_score(cache["blocks.2.attn.hook_pattern"], PROBE.tokens,
                           induction_mask(PROBE.tokens))
    assert attribution["L2H0"]["full"] == pytest.approx(full[0].item())


@pytest.mark.parametrize("k_removed,q_removed,qk_removed,verdict", [
    (0.05, 0.85, 0.05, "K"),  # keys need layer 0, queries do not
    (0.85, 0.05, 0.05, "Q"),
    (0.2, 0.2, 0.05, "mixed"),  # both sides needed
    (0.8, 0.8, 0.05, "mixed"),  # either side suffices, removing both breaks it
    (0.85, 0.85, 0.85, "none"),  # needs no earlier head at all (e.g. a positional head)
])
def test_attribution_verdict_rules(k_removed, q_removed, qk_removed, verdict):
    scores = {"full": 0.9, "k_removed": k_removed, "q_removed": q_removed,
              "qk_removed": qk_removed}
    assert attribution_verdict(scores) == verdict
    assert attribution_verdict({**scores, "full": 0.2}) == "none"  # not an induction head
