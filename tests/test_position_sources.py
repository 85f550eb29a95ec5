"""Where layer 0 can write position: known answers for the linear readout of position and for
attention to BOS, on hand-made activations and on a hand-built model."""

import torch

from tinyinduct.analysis.position import (
    bos_attention,
    earlier_position_r2,
    layer0_position,
    position_r2,
)
from tinyinduct.config import ModelConfig
from tinyinduct.data import Batch
from tinyinduct.model import AttnOnlyTransformer


def copies(b: int, p: int, seed: int = 0) -> Batch:
    """Sequences of random tokens (BOS first) with a segment of 4 copied at varying distances."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 8, (b, p), generator=g)
    tokens[:, 0] = 0
    first, second = torch.zeros(b, p, dtype=torch.bool), torch.zeros(b, p, dtype=torch.bool)
    for s in range(b):
        start1 = 1 + s % 3
        start2 = start1 + 4 + (s * 5) % (p - start1 - 8)
        tokens[s, start2:start2 + 4] = tokens[s, start1:start1 + 4]
        first[s, start1:start1 + 4] = True
        second[s, start2:start2 + 3] = True  # the predictable positions
    return Batch(tokens, first, second)


def test_an_output_that_states_position_reads_back_fully_and_noise_not_at_all():
    b, p, d = 8, 32, 6
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(d, generator=g)
    stated = torch.arange(p, dtype=torch.float32)[None, :, None] * direction  # position x dir
    stated = stated.expand(b, p, d) + 0.5  # plus a constant the readout absorbs
    assert position_r2(stated) > 1 - 1e-9
    noise = torch.randn(b, p, d, generator=g)
    assert position_r2(noise) < 0.05


def test_bos_attention_is_the_mean_weight_on_position_zero_after_it():
    pattern = torch.zeros(2, 2, 4, 4)
    pattern[:, 0, :, 0] = 1.0  # head 0: always BOS
    pattern[:, 1] = torch.eye(4)  # head 1: itself (BOS only from BOS, which is left out)
    assert bos_attention(pattern).tolist() == [1.0, 0.0]


def test_a_uniform_layer0_head_counts_positions_a_model_reads_from_it():
    """Shortformer, W_pos = 0, W_Q = 0: layer 0 attends evenly over the context, so its output at
    position j is the mean of j + 1 values; with BOS's value the only one, that is
    v_BOS / (j + 1): position, written by attention alone."""
    cfg = ModelConfig(n_layers=2, n_heads=1, d_model=4, d_head=4, n_ctx=16, d_vocab=8,
                      positional="shortformer")
    model = AttnOnlyTransformer(cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.embed.W_E[0, 0] = 1.0  # BOS: direction 0; other tokens: direction 1
        model.embed.W_E[1:, 1] = 1.0
        attn = model.blocks[0].attn
        attn.W_V[0] = torch.eye(4)
        attn.W_O[0, 0, 0] = 1.0  # write only the BOS direction
    batch = copies(6, 16, seed=1)
    found = layer0_position(model, batch)
    # mean over positions j = 1..15 of 1 / (j + 1)
    expected = sum(1 / (j + 1) for j in range(1, 16)) / 15
    assert abs(found["bos_attention"]["L0H0"] - expected) < 1e-6
    # 1 / (j + 1) is a monotone function of j: a linear readout gets most, not all, of it
    assert 0.6 < found["position_r2"] < 0.9  # corr(j, 1 / (j + 1))^2 = 0.71 over 1..15
    # a head that writes nothing (W_O = 0) says nothing about position
    with torch.no_grad():
        attn.W_O.zero_()
    assert layer0_position(model, batch)["position_r2"] < 0.05


def test_an_output_that_states_the_earlier_occurrence_beats_the_own_position():
    batch = copies(12, 32)
    start2 = batch.second_copy.float().argmax(1)
    start1 = batch.first_copy.float().argmax(1)
    j = torch.arange(32)[None].expand(12, 32)
    earlier = (j - (start2 - start1)[:, None]).float()  # where each token last occurred
    out = torch.stack([earlier, torch.zeros_like(earlier)], dim=-1)  # [b, p, 2]
    assert torch.equal(batch.tokens[batch.second_copy],
                       batch.tokens.gather(1, earlier.long().clamp(min=0))[batch.second_copy])
    with_out, own_only = earlier_position_r2(out, batch)
    assert with_out > 1 - 1e-9
    assert own_only < 0.9  # the distance varies between sequences: j alone falls short
    # an output with nothing in it adds nothing to the own position
    assert abs(earlier_position_r2(torch.zeros(12, 32, 2), batch)[0] - own_only) < 1e-9
