"""The attention record on disk: written atomically, read back exactly, bad files skipped with a
warning that names them."""

import json

import numpy as np
import pytest
import torch

from tinyinduct.data import place_copies
from tinyinduct.record import (
    attention_path,
    copy_spans,
    load_attention,
    load_picture_tokens,
    save_attention,
    save_picture_tokens,
    spans_from_tokens,
)


def causal_pattern(n_layers=2, n_heads=3, T=5, seed=0):  # [n_layers, n_heads, T, T], rows sum to 1
    scores = torch.randn(n_layers, n_heads, T, T, generator=torch.Generator().manual_seed(seed))
    scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    return scores.softmax(-1)


def test_attention_round_trip_in_step_order(tmp_path):
    patterns = {step: causal_pattern(seed=step) for step in (100, 0, 50)}
    for step, pattern in patterns.items():
        path = save_attention(tmp_path, step, pattern)
        assert path == tmp_path / "record" / "attention" / f"step_{step:07d}.npy"
    assert not list((tmp_path / "record" / "attention").glob("*.tmp"))
    steps, array = load_attention(tmp_path)
    assert steps == [0, 50, 100]
    assert array.shape == (3, 2, 3, 5, 5) and array.dtype == np.float16
    for i, step in enumerate(steps):
        np.testing.assert_allclose(array[i], patterns[step].numpy(), atol=1e-3)


def test_missing_record_is_empty(tmp_path):
    steps, array = load_attention(tmp_path)
    assert steps == [] and array.shape[0] == 0
    assert load_picture_tokens(tmp_path) is None


def test_unreadable_or_misshapen_files_are_skipped_by_name(tmp_path):
    for step in (0, 10, 20, 30):
        save_attention(tmp_path, step, causal_pattern())
    attention_path(tmp_path, 10).write_bytes(b"\x93NUMPY torn")  # a writer killed mid-file
    np.save(attention_path(tmp_path, 20), np.zeros((2, 3, 4, 4), dtype=np.float16))
    with pytest.warns(UserWarning) as caught:
        steps, array = load_attention(tmp_path)
    assert steps == [0, 30] and array.shape == (2, 2, 3, 5, 5)
    messages = " ".join(str(w.message) for w in caught)
    assert "step_0000010.npy" in messages and "step_0000020.npy" in messages
    assert "(2, 3, 4, 4)" in messages


def test_save_refuses_a_pattern_of_the_wrong_rank(tmp_path):
    with pytest.raises(ValueError, match="n_layers, n_heads, T, T"):
        save_attention(tmp_path, 0, torch.zeros(3, 5, 5))


def test_picture_tokens_round_trip_and_a_corrupt_file(tmp_path):
    path = save_picture_tokens(tmp_path, torch.tensor([0, 7, 8, 9, 7, 8, 9]), (1, 3), (4, 3))
    assert json.loads(path.read_text()) == {"tokens": [0, 7, 8, 9, 7, 8, 9],
                                            "first_copy": [1, 3], "second_copy": [4, 3]}
    assert load_picture_tokens(tmp_path) == {"tokens": [0, 7, 8, 9, 7, 8, 9],
                                             "first_copy": (1, 3), "second_copy": (4, 3)}
    path.write_text('{"tokens": [0, 1')
    with pytest.warns(UserWarning, match="tokens.json"):
        assert load_picture_tokens(tmp_path) is None


def test_copy_spans_from_masks_and_from_tokens():
    background = torch.arange(100, 120)[None]  # no token repeats by chance
    segment = torch.arange(1, 21)[None]
    batch = place_copies(background, segment, torch.tensor([5]), torch.tensor([2]),
                         torch.tensor([11]))
    assert copy_spans(batch.first_copy[0], batch.second_copy[0]) == ((2, 5), (11, 5))
    assert spans_from_tokens(batch.tokens[0]) == ((2, 5), (11, 5))
    assert spans_from_tokens(torch.arange(10)) is None
