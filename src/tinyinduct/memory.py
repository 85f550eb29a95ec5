"""How much memory a config will need, against what the machine has free: refuse a run that
cannot fit before any model is built (`train.allow_large=true` tries anyway).

The estimate counts float32 parameters, their gradients and AdamW's two moments for the
`train.n_seeds` stacked models, the activations one training step keeps for the backward pass,
and one evaluation (one model at a time, every activation cached, attention patterns included).
It is an estimate: close enough to refuse `model.d_model=1000000` at once rather than after
half a minute of swapping.
"""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError, RunConfig

FLOAT = 4  # bytes
COMPOSITION_SAMPLES = 200  # composition.composition_baseline's random pairs
GIB = 2**30
# Fields that size the run, with the default each is compared to when naming the culprit.
SIZE_FIELDS = {"model.d_model": 64, "model.d_head": 16, "model.n_heads": 4, "model.n_layers": 2,
               "model.n_ctx": 64, "model.d_vocab": 512, "data.batch_size": 32,
               "data.eval_batch_size": 64, "train.n_seeds": 1}


def parameter_count(cfg: RunConfig) -> int:
    """Parameters of one model (embeddings, per-head Q/K/V/O, trained biases, unembedding)."""
    m = cfg.model
    biases = 3 * m.n_heads * m.d_head + m.d_model if m.attn_bias else 0
    per_layer = 4 * m.n_heads * m.d_model * m.d_head + biases
    norms = 2 * m.d_model * (m.n_layers + 1) if m.normalization == "LN" else 0
    return (m.d_vocab * m.d_model + m.n_ctx * m.d_model + m.n_layers * per_layer
            + m.d_model * m.d_vocab + m.d_vocab + norms)


def _activations(cfg: RunConfig, batch: int) -> int:
    """Floats one forward pass keeps for `batch` sequences of one model: residual stream, q, k, v,
    z, attention scores and pattern per layer, then logits and their softmax."""
    m, t = cfg.model, cfg.data.seq_len
    per_layer = batch * t * (3 * m.d_model + 4 * m.n_heads * m.d_head) \
        + 2 * batch * m.n_heads * t * t
    return m.n_layers * per_layer + 3 * batch * t * m.d_vocab


def _weight_scores(cfg: RunConfig) -> int:
    """Floats of the composition scores of one evaluation: the random baseline multiplies
    COMPOSITION_SAMPLES pairs of `[d_model, d_model]` matrices, the model's own scores every
    `W_OV` / `W_QK` and the products of each pair of heads in different layers."""
    m, d = cfg.model, cfg.model.d_model
    baseline = 3 * COMPOSITION_SAMPLES * d * d if m.n_layers >= 2 else 0
    own = 2 * m.n_layers * m.n_heads * d * d + 3 * m.n_heads ** 2 * d * d
    return max(baseline, own)


def estimate_bytes(cfg: RunConfig) -> int:
    """Peak bytes of a run of `cfg`: weights, gradients, AdamW state and one step's activations
    for every stacked seed, plus one evaluation."""
    k = cfg.train.n_seeds
    weights = 4 * k * parameter_count(cfg)  # parameters, gradients, two AdamW moments
    train_step = 2 * k * _activations(cfg, cfg.data.batch_size)  # forward kept + backward
    # probe and training-like batch, attribution's patched passes beside the cached one
    evaluation = 2 * _activations(cfg, cfg.data.eval_batch_size) + _weight_scores(cfg)
    return FLOAT * (weights + train_step + evaluation)


def available_bytes(device: str) -> int | None:
    """Free memory on `device` ("cpu", "cuda", ...): MemAvailable from /proc/meminfo on CPU, the
    CUDA driver's free figure on a GPU; None where it cannot be read (the check is skipped)."""
    if device.startswith("cuda"):
        try:
            import torch

            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except Exception:
            return None
    if device != "cpu":  # mps shares the system memory, but torch does not say how much is free
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # not a dependency: used where it happens to be installed

        return int(psutil.virtual_memory().available)
    except Exception:
        return None


def largest_size_field(cfg: RunConfig) -> str:
    """The size setting furthest above its default: most likely the one the user typed."""
    def ratio(name: str) -> float:
        section, field = name.split(".")
        return getattr(getattr(cfg, section), field) / SIZE_FIELDS[name]
    return max(SIZE_FIELDS, key=ratio)


def check_memory(cfg: RunConfig, device: str, available: int | None = None) -> int:
    """Refuse (`ConfigError`) a config whose estimate exceeds the free memory of `device`, unless
    `cfg.train.allow_large`; return the estimate in bytes. `available` overrides the reading."""
    need = estimate_bytes(cfg)
    have = available_bytes(device) if available is None else available
    if have is not None and need > have and not cfg.train.allow_large:
        name = largest_size_field(cfg)
        section, field = name.split(".")
        raise ConfigError(name, getattr(getattr(cfg, section), field),
                          f"this config needs about {need / GIB:.1f} GiB on {device}, "
                          f"{have / GIB:.1f} GiB is free: make it smaller, or set "
                          f"train.allow_large=true to try anyway")
    return need
