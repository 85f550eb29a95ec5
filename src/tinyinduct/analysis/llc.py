"""Per-head local learning coefficient over training (Lau et al. 2023; Hoogland et al. 2024;
Wang et al. 2024 for the weight-restricted, per-head form), estimated with devinterp
(`pip install "tinyinduct[llc]"`: an optional extra, it brings transformers and datasets).

The LLC at weights w* is estimated by SGLD sampling of the tempered, localized posterior
`exp(-n_beta L(w) - localization/2 |w - w*|^2)` started at w*:
`llc = n_beta * (mean sampled loss - L(w*))`. Restricted to one head (devinterp's
`create_param_masks(model, "l1h2")`: that head's slices of W_Q, W_K, W_V, W_O), only those weights
move; the rest of the model stays at its snapshot.

devinterp treats any model with `cfg.n_heads` as a TransformerLens model and calls
`model.to(device, print_details=False)` and `model(input_ids, return_type="logits")`:
`DevinterpModel` is the model with those two signatures, nothing else changed.

Calibration (`tests/test_llc.py`). For a loss exactly quadratic in d weights,
`0.5 * sum(a * (w - w*)^2)`, the true LLC is d/2. Without localization, lr 1e-3 and n_beta 30
recover it within 10% (a = 10); with localization gamma the estimator's target is
`d/2 * n_beta a / (n_beta a + gamma)`, and the SGLD step inflates it by about
`1 / (1 - lr (n_beta a + gamma) / 4)`: at the defaults below that factor is 0.83 at a = 10, 1.0 at
a = 18 and 1.2 at a = 30, and the chain diverges past a ~ 63; restricted by a mask to k of the
weights the estimate is k/2; a head whose weights cannot change the loss gets exactly 0. Only
comparisons at fixed settings mean much: across snapshots, or across heads.

The defaults were chosen on a real shortformer run (default config): lr 1e-3, n_beta 30,
localization 100, 2 chains x 100 draws of 32 sequences. The per-draw loss settles within ~40
draws; L1H0 (an induction head) went from 0.05 at step 150 to 1.6 at step 500 (formed), the
previous-token head L0H0 from 0.04 to 8.9. Cost: ~30 s per head (8 heads: ~4 minutes per
snapshot) on one thread of a busy 2-core CPU; `analyze_run(..., llc=True)` uses at most
`MAX_SNAPSHOTS` snapshots.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Sequence

import numpy as np
import torch

from ..data import RepeatedSegmentData
from ..model import AttnOnlyTransformer

if TYPE_CHECKING:
    from ..runs import Run

LLC_SEED = 20_221_200  # the sampling data: neither a training nor an evaluation seed
INSTALL_HINT = 'the LLC needs devinterp: pip install "tinyinduct[llc]"'


@dataclass(frozen=True)
class LLCSettings:
    """SGLD settings of one estimate (devinterp's names)."""

    lr: float = 1e-3  # SGLD step epsilon
    n_beta: float = 30.0  # inverse temperature
    localization: float = 100.0  # gamma: pull towards the snapshot's weights
    num_chains: int = 2
    num_draws: int = 100
    batch_size: int = 32
    n_sequences: int = 1024  # training-distribution sequences the sampler draws batches from


DEFAULT_SETTINGS = LLCSettings()
MAX_SNAPSHOTS = 12  # analyze_run estimates at this many snapshots, spread over the saved ones


class DevinterpModel(AttnOnlyTransformer):
    """The model with the two TransformerLens signatures devinterp calls."""

    def to(self, *args, print_details: bool = False, **kwargs):  # noqa: ARG002
        return super().to(*args, **kwargs)

    def forward(self, tokens: torch.Tensor, return_type: str = "logits",
                **kwargs) -> torch.Tensor:  # [batch, pos] -> [batch, pos, d_vocab]
        if return_type != "logits":
            raise ValueError(f"return_type={return_type!r}: only 'logits' is supported")
        return super().forward(tokens, **kwargs)


def devinterp_model(model: AttnOnlyTransformer) -> DevinterpModel:
    wrapped = DevinterpModel(model.cfg)
    wrapped.load_state_dict(model.state_dict())
    return wrapped


def _devinterp():
    try:
        from devinterp.slt import llc as llc_module
        from devinterp.slt import sampler
        from devinterp.slt.weight_restrictions import create_param_masks
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from None
    return llc_module, sampler, create_param_masks


def head_restriction(head: str) -> str:
    """`L1H2` -> devinterp's restriction string `l1h2`."""
    return head.lower()


def head_masks(model: torch.nn.Module, head: str) -> Dict[str, torch.Tensor | None]:
    """devinterp's parameter masks selecting one head's weights (`head` like `L1H2`)."""
    return _devinterp()[2](model, head_restriction(head))


@contextlib.contextmanager
def _quiet(sampler_module):
    """devinterp draws a progress bar per chain (heads x snapshots x chains of them) and warns
    that its SGLD class is deprecated: both silenced while sampling."""
    from tqdm.auto import trange

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = sampler_module.trange
        sampler_module.trange = functools.partial(trange, disable=True)
        try:
            yield
        finally:
            sampler_module.trange = original


def sampling_dataset(tokens: torch.Tensor):  # [n, pos] -> a datasets.Dataset of input_ids
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": tokens}).with_format("torch")


def estimate_llc(model: torch.nn.Module, dataset, settings: LLCSettings = DEFAULT_SETTINGS,
                 param_masks: Dict[str, Any] | None = None,
                 loss_fn: Callable | None = None, seed: int = 100) -> tuple:
    """(mean, std over chains) of devinterp's LLC estimate at `model`'s weights, restricted to
    `param_masks` (None: every weight). `dataset`: a datasets.Dataset with `input_ids`."""
    llc_module, sampler_module, _ = _devinterp()
    with _quiet(sampler_module), tempfile.TemporaryDirectory() as tmp:
        result = llc_module.llc(
            model, dataset, {}, lr=settings.lr, n_beta=settings.n_beta,
            localization=settings.localization, num_chains=settings.num_chains,
            num_draws=settings.num_draws, batch_size=settings.batch_size,
            param_masks=param_masks, loss_fn=loss_fn, init_seed=seed, device="cpu",
            num_init_loss_batches=4, output_path=Path(tmp) / "samples.zarr")
        return float(result.llc_mean), float(result.llc_std)


@dataclass
class HeadLLC:
    steps: List[int]
    heads: List[str]
    mean: Dict[str, List[float]]  # head -> LLC at each step
    std: Dict[str, List[float]]  # head -> std over chains at each step
    settings: LLCSettings
    seconds_per_snapshot: float = 0.0
    extra: Dict[str, Any] = field(default_factory=dict)


def spread_steps(steps: Sequence[int], n: int = MAX_SNAPSHOTS) -> List[int]:
    """At most `n` of `steps`, evenly spread by index (so as dense as the record was), always
    the first and the last."""
    steps = sorted(steps)
    if len(steps) <= n:
        return steps
    return sorted({steps[round(i * (len(steps) - 1) / (n - 1))] for i in range(n)})


def llc_per_head(run: Run, steps: Sequence[int] | None = None,
                 settings: LLCSettings = DEFAULT_SETTINGS,
                 heads: Sequence[str] | None = None) -> HeadLLC:
    """The weight-restricted LLC of every head (or `heads`) at each saved step (or `steps`),
    on `settings.n_sequences` fixed training-distribution sequences."""
    _devinterp()  # fail early, before any sampling, if devinterp is missing
    data = RepeatedSegmentData(run.config.data, seed=LLC_SEED).sample(settings.n_sequences)
    dataset = sampling_dataset(data.tokens)
    heads = list(heads or run.model.head_labels)
    steps = spread_steps(run.snapshot_steps) if steps is None else list(steps)
    out = HeadLLC([], heads, {h: [] for h in heads}, {h: [] for h in heads}, settings)
    start = time.perf_counter()

    def per_head(model, step):
        wrapped = devinterp_model(model)
        with torch.enable_grad():  # replay runs its functions without gradients; SGLD needs them
            return {h: estimate_llc(wrapped, dataset, settings, head_masks(wrapped, h))
                    for h in heads}

    for row in run.replay(per_head, steps):
        out.steps.append(row["step"])
        for h in heads:
            out.mean[h].append(row[h][0])
            out.std[h].append(row[h][1])
    out.seconds_per_snapshot = (time.perf_counter() - start) / max(1, len(out.steps))
    return out


def plot_llc(result: HeadLLC, rows: List[Dict[str, Any]], summary: Dict[str, Any],
             path: Path) -> Path:
    """One panel per layer: each head's restricted LLC over training (± std over chains), and
    below it the same heads' induction and previous-token scores from the run's metrics."""
    from matplotlib.figure import Figure

    from ..plots import _series

    layers = sorted({int(h[1:].split("H")[0]) for h in result.heads})
    fig = Figure(figsize=(6.5 * len(layers), 8), layout="constrained")
    axes = np.array(fig.subplots(2, len(layers), sharex=True, squeeze=False))
    colors = [f"C{i}" for i in range(10)]
    phase = summary.get("phase_change_step")
    for col, layer in enumerate(layers):
        top, bottom = axes[0, col], axes[1, col]
        for i, head in enumerate(h for h in result.heads if h.startswith(f"L{layer}H")):
            color = colors[i % len(colors)]
            mean, std = np.array(result.mean[head]), np.array(result.std[head])
            top.plot(result.steps, mean, marker="o", ms=3, color=color, label=head)
            top.fill_between(result.steps, mean - std, mean + std, color=color, alpha=0.2)
            for kind, style in (("induction", "-"), ("prev_token", ":")):
                x, y = _series(rows, f"heads/{kind}/{head}")
                bottom.plot(x, y, ls=style, color=color,
                            label=f"{head} {kind.replace('_', '-')}")
        for ax in (top, bottom):
            if phase is not None:
                ax.axvline(phase, color="tab:red", lw=1.2)
            ax.set_xscale("symlog", linthresh=max(1, min([s for s in result.steps if s > 0],
                                                         default=1)))
        top.set_title(f"layer {layer}: weight-restricted LLC per head")
        top.set_ylabel("LLC")
        top.legend(fontsize=8)
        bottom.set_ylabel("head score")
        bottom.set_xlabel("step")
        bottom.set_ylim(-0.02, 1.02)
        bottom.legend(fontsize=7, ncol=2)
    s = result.settings
    fig.suptitle(f"SGLD lr {s.lr:g}, n_beta {s.n_beta:g}, localization {s.localization:g}, "
                 f"{s.num_chains} chains x {s.num_draws} draws, batch {s.batch_size}; "
                 f"{result.seconds_per_snapshot:.0f} s per snapshot", fontsize=9)
    fig.savefig(path, dpi=110)
    return path


def _series(rows: List[Dict[str, Any]], key: str) -> tuple:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return tuple(zip(*points)) if points else ((), ())
