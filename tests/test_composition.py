"""Composition and copying scores of weights, on hand-built matrices with known answers."""

import math

import pytest
import torch

from tinyinduct.circuits import k_composition_model, q_composition_model
from tinyinduct.composition import (
    composition_baseline,
    composition_score,
    composition_scores,
    composition_table,
    copying_score,
    weight_scores,
)
from tinyinduct.config import ModelConfig
from tinyinduct.model import AttnOnlyTransformer


def unit(i, n=6):
    return torch.eye(n)[i]


def test_composition_score_known_answers():
    a = torch.outer(unit(0), unit(1))  # writes into direction 1
    reads_1 = torch.outer(unit(1), unit(3))  # reads direction 1
    reads_2 = torch.outer(unit(2), unit(3))  # reads direction 2
    assert composition_score(a, reads_1).item() == pytest.approx(1.0)
    assert composition_score(a, reads_2).item() == 0.0
    # identity on k of n directions composed with itself: sqrt(k) / (sqrt(k) sqrt(k))
    k = torch.diag(torch.tensor([1.0, 1, 1, 1, 0, 0]))
    assert composition_score(k, k).item() == pytest.approx(1 / 2)
    # scale-free
    assert composition_score(3 * a, 0.1 * reads_1).item() == pytest.approx(1.0)
    assert composition_score(torch.zeros(6, 6), reads_1).item() == 0.0


def test_hand_built_circuits_compose_where_they_should():
    d_vocab, n_ctx = 64, 32
    k = composition_scores(k_composition_model(d_vocab, n_ctx))
    # layer 0 writes "previous token" (rank d_vocab) exactly where layer-1 keys read it
    assert k["comp/K/L0H0->L1H0"] == pytest.approx(1 / math.sqrt(d_vocab))
    assert k["comp/Q/L0H0->L1H0"] == 0.0 and k["comp/V/L0H0->L1H0"] == 0.0
    q = composition_scores(q_composition_model(d_vocab, n_ctx))
    assert q["comp/Q/L0H0->L1H0"] == pytest.approx(1 / math.sqrt(n_ctx))
    assert q["comp/K/L0H0->L1H0"] == 0.0 and q["comp/V/L0H0->L1H0"] == 0.0


def test_random_weights_score_the_baseline():
    cfg = ModelConfig()
    baseline = composition_baseline(cfg.d_model, cfg.d_head)
    assert 0.05 < baseline < 0.5
    torch.manual_seed(0)
    scores = composition_scores(AttnOnlyTransformer(cfg))
    assert len(scores) == 3 * cfg.n_heads ** 2
    mean = sum(scores.values()) / len(scores)
    assert mean == pytest.approx(baseline, rel=0.1)


def test_copying_score():
    model = k_composition_model()
    assert copying_score(model, 1).tolist() == pytest.approx([1.0])
    with torch.no_grad():
        model.blocks[1].attn.W_O.neg_()  # the same head, now suppressing what it attends to
    assert copying_score(model, 1).tolist() == pytest.approx([-1.0])
    assert abs(copying_score(model, 0).item()) < 1e-6  # writes only where W_U does not read


def test_weight_scores_row_and_table():
    row = weight_scores(k_composition_model())
    assert row["heads/copying/L1H0"] == pytest.approx(1.0)
    assert row["comp/baseline"] == pytest.approx(composition_baseline(
        k_composition_model().cfg.d_model, k_composition_model().cfg.d_head))
    table = composition_table(row)
    assert sorted(t[0] for t in table) == ["K", "Q", "V"]
    assert ("K", "L0H0", "L1H0") in [t[:3] for t in table]
    assert all(t[4] == row["comp/baseline"] for t in table)


def test_every_earlier_later_pair_in_a_deeper_model():
    scores = composition_scores(AttnOnlyTransformer(ModelConfig(n_layers=3, n_heads=2)))
    pairs = {k.split("/")[2] for k in scores}
    assert len(scores) == 3 * len(pairs)
    assert pairs == {f"L{a}H{i}->L{b}H{j}" for a, b in ((0, 1), (0, 2), (1, 2))
                     for i in range(2) for j in range(2)}


def test_copying_score_of_diverged_weights_is_nan_not_a_crash():
    torch.manual_seed(0)
    model = AttnOnlyTransformer(ModelConfig(d_vocab=20, n_ctx=8, d_model=16, d_head=4, n_heads=2))
    with torch.no_grad():
        model.embed.W_E[3, 0] = float("nan")
    assert torch.isnan(copying_score(model, 0)).all()
