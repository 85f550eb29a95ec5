"""Mechanism attribution and the partner search give the numbers they gave before they were
expressed as hooks: `tests/data/attribution_reference.json` was written by `reference()` below
at commit 8b3229c, from the hand-copied forward pieces (`metrics._qk`, `_pattern`,
`_cached_qk`) that the hooks replace. The largest difference measured then: 2.2e-8."""

import functools
import json
from pathlib import Path

import pytest
import torch

from tinyinduct.circuits import k_composition_model, q_composition_model
from tinyinduct.config import DataConfig, ModelConfig
from tinyinduct.data import make_probe
from tinyinduct.metrics import composition_partners, mechanism_attribution
from tinyinduct.model import AttnOnlyTransformer

REFERENCE = Path(__file__).parent / "data" / "attribution_reference.json"
V, N = 64, 32
PROBE = make_probe(DataConfig(d_vocab=V, seq_len=N, min_copy_len=4, max_copy_len=15,
                              eval_batch_size=32), seed=7)


def random_model(seed, **overrides):
    """A seeded random model with every weight, bias and norm parameter non-trivial."""
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**dict(n_layers=2, n_heads=3, d_model=32, d_head=8, n_ctx=N, d_vocab=V,
                                attn_bias=True, init_range=0.3), **overrides})
    model = AttnOnlyTransformer(cfg)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


@functools.lru_cache(maxsize=1)
def models():
    """name -> (model, partner searches as (head, inputs))"""
    searches = [("L1H0", ("K",)), ("L1H1", ("Q",)), ("L1H2", ("Q", "K"))]
    out = {}
    for positional in ("standard", "shortformer"):
        for normalization in ("none", "LN"):
            name = f"random-{positional}-{normalization}"
            out[name] = (random_model(3, positional=positional, normalization=normalization),
                         searches)
        out[f"k_circuit-{positional}"] = (k_composition_model(V, N, positional),
                                          [("L1H0", ("K",)), ("L1H0", ("Q",))])
        out[f"deep-{positional}"] = (random_model(4, positional=positional, n_layers=3),
                                     [("L2H1", ("K",)), ("L2H0", ("Q", "K"))])
        out[f"blocked_k-{positional}"] = (random_model(5, positional=positional,
                                                       blocked_composition=["K"]), [])
    out["q_circuit"] = (q_composition_model(V, N), [("L1H0", ("Q",)), ("L1H0", ("K",))])
    return out


def reference():
    out = {}
    for name, (model, searches) in models().items():
        out[name] = {
            "attribution": mechanism_attribution(model, PROBE.tokens),
            "partners": [[head, list(inputs), composition_partners(model, PROBE.tokens, head,
                                                                   inputs)]
                         for head, inputs in searches],
        }
    return out


def assert_same(got, expected, where):
    if isinstance(expected, dict):
        assert set(got) == set(expected), where
        for key in expected:
            assert_same(got[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=1e-6), where
    else:
        assert got == expected, where


@pytest.mark.parametrize("name", sorted(models()))
def test_attribution_and_partners_match_the_recorded_numbers(name):
    expected = json.loads(REFERENCE.read_text())[name]
    model, searches = models()[name]
    assert_same(mechanism_attribution(model, PROBE.tokens), expected["attribution"], name)
    for (head, inputs), (_, _, scores) in zip(searches, expected["partners"], strict=True):
        assert_same(composition_partners(model, PROBE.tokens, head, inputs), scores,
                    f"{name}/{head}/{inputs}")


if __name__ == "__main__":  # rewrites the reference (deliberately, never to make a test pass)
    REFERENCE.write_text(json.dumps(reference(), indent=1, sort_keys=True) + "\n")
