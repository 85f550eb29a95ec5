#!/usr/bin/env python
"""Training speed of tinyinduct, against TransformerLens and against itself.

    python scripts/bench.py --out bench.json                  # CPU: 1 and 2 threads, ~15 min
    python scripts/bench.py --device cuda --out bench-gpu.json
    python scripts/bench.py --quick --threads 1 --seeds 1,2 --out /tmp/bench.json  # checks it runs

Measures, in one process, interleaving the variants and taking medians over repeats:
1. the training step (forward, backward, AdamW; data pre-generated) of tinyinduct's model (fused
   attention path, and the explicit path that records every hook) and of TransformerLens'
   `HookedTransformer` with the identical config, as tokens/s, the ratio to TransformerLens, model
   FLOPs per token (formula below, checked against torch's FLOP counter) and achieved GFLOP/s as
   a fraction of a matmul peak measured in the same run;
2. many seeds at once: a step of K stacked models (`train.n_seeds=K`, data generation included)
   against K sequential single-model steps, as aggregate tokens/s, at the default batch and at
   a quarter of it;
3. the attention kernels `causal_attention` chooses between (the native kernel, flash and
   batched matmuls), forward + backward of one layer at each config's shape, and which one it
   chooses there;
4. `torch.compile` of the model's loss against tinyinduct's eager step: the compile's seconds,
   the compiled step, and the steps after which the compile has paid for itself;
5. time to induction of the default config (a real default run through `tinyinduct.train`) and
   the share of its wall time spent in evaluation.

With `profile` (CPU), where tinyinduct's step goes, part by part, and the step's floor: what
the step would take if every matmul ran at the matmul peak, every exponential at the rate of one
`torch.exp`, and nothing else cost more than a tiny model's step.

FLOPs per token, forward (multiply-add = 2 FLOPs; causal attention counts the (n_ctx + 1) / 2
keys a token attends to on average; embeddings are lookups, elementwise work is not counted):
    L * (2*d*3*h*e  +  2*h*e*d  +  2*2*h*e*(n+1)/2)  +  2*d*V
training = 3 x forward (the backward pass is two matmuls per forward matmul).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F

from tinyinduct import native_attention
from tinyinduct.causal_attention import SmallContextAttention, kernel_for
from tinyinduct.config import DataConfig, LoggerConfig, ModelConfig, RunConfig, TrainConfig
from tinyinduct.data import RepeatedSegmentData
from tinyinduct.loop import build_model, make_optimizer, resolve_device
from tinyinduct.loop import train as train_run
from tinyinduct.native_attention import NativeAttention
from tinyinduct.stack import StackedTransformer, next_token_loss, train_step
from tinyinduct.step_profile import PARTS as STEP_PARTS
from tinyinduct.step_profile import profile_parts_and_kernels

FLOPS_FORMULA = ("3 * (L * (2*d*3*h*e + 2*h*e*d + 2*2*h*e*(n+1)/2) + 2*d*V) per token "
                 "(forward x3 for training; causal attention averaged over positions)")

# name -> (model fields, batch size); the first is the default training config
CONFIGS = {
    "default": (dict(d_model=64, n_heads=4, d_head=16, n_ctx=64, d_vocab=512), 32),
    "d128-ctx128": (dict(d_model=128, n_heads=8, d_head=16, n_ctx=128, d_vocab=512), 32),
    "d128-ctx256": (dict(d_model=128, n_heads=8, d_head=16, n_ctx=256, d_vocab=512), 16),
}
PARTS = ("models", "profile", "attention", "compile", "seeds", "induction")
QUICK_CONFIGS = {"tiny": (dict(d_model=32, n_heads=2, d_head=8, n_ctx=32, d_vocab=64), 8)}


def part_flops_per_token(m: ModelConfig) -> Dict[str, float]:
    """Training FLOPs per token of the step's parts that do matmuls (the formula's terms)."""
    L, d, h, e, n, V = m.n_layers, m.d_model, m.n_heads, m.d_head, m.n_ctx, m.d_vocab
    return {"projections": 3 * L * (2 * d * 3 * h * e + 2 * h * e * d),
            "attention": 3 * L * 2 * 2 * h * e * (n + 1) / 2,
            "unembed_loss": 3 * 2 * d * V}


def flops_per_token(m: ModelConfig) -> float:
    return sum(part_flops_per_token(m).values())


def run_config(fields: Dict[str, Any], batch: int, device: str) -> RunConfig:
    n_ctx = fields["n_ctx"]
    longest = (n_ctx - 1) // 2
    data = DataConfig(d_vocab=fields["d_vocab"], seq_len=n_ctx, batch_size=batch,
                      min_copy_len=max(1, longest // 2), max_copy_len=longest)
    return RunConfig(device=device, model=ModelConfig(**fields), data=data,
                     logger=LoggerConfig(mode="disabled", progress=False))


class Timer:
    """Seconds per call of `fn`, in blocks of a fixed number of calls (chosen once so that a
    block lasts about `block_s`), synchronising the device around each block."""

    def __init__(self, device: torch.device, block_s: float):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.block_s = block_s

    def calls_per_block(self, fn: Callable[[], Any]) -> int:
        for _ in range(3):  # warm up
            fn()
        return max(2, int(self.block_s / max(self.block(fn, 2), 1e-6)))

    def block(self, fn: Callable[[], Any], calls: int) -> float:
        self.sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        self.sync()
        return (time.perf_counter() - t0) / calls


def interleaved_medians(timer: Timer, fns: Dict[str, Callable[[], Any]],
                        repeats: int) -> Dict[str, float]:
    """Median seconds per call of each function, the variants taking turns block by block."""
    calls = {name: timer.calls_per_block(fn) for name, fn in fns.items()}
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timer.block(fn, calls[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak(device: torch.device, m: ModelConfig, tokens: int, timer: Timer,
                dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of a plain matmul over this model's shapes and one large square."""
    shapes = [(tokens, m.d_model, m.d_vocab), (tokens, m.d_model, 3 * m.n_heads * m.d_head),
              (1024, 1024, 1024) if device.type == "cpu" else (8192, 8192, 8192)]
    return max(matmul_gflops(device, timer, 1, a, b, c, dtype) for a, b, c in shapes)


def matmul_gflops(device: torch.device, timer: Timer, n: int, a: int, b: int, c: int,
                  dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of n independent `[a, b] @ [b, c]` matmuls in one call (a plain `mm` if n = 1)."""
    x = torch.randn(n, a, b, device=device, dtype=dtype).squeeze(0)
    y = torch.randn(n, b, c, device=device, dtype=dtype).squeeze(0)
    seconds = interleaved_medians(timer, {"mm": lambda: x @ y}, 3)["mm"]
    return 2 * n * a * b * c / seconds / 1e9


def loop_step(models: List[torch.nn.Module], cfg: RunConfig,
              next_tokens: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One step of the training loop itself (`stack.train_step`, the loop's own function) on K
    stacked `models`; `next_tokens()` gives the `[K, b, p]` batch."""
    model = StackedTransformer(models)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return lambda: train_step(model, optimizer, scheduler, next_tokens(), cfg.optim.grad_clip)


def cycling(batches: List[torch.Tensor]) -> Callable[[], torch.Tensor]:
    state = {"i": 0}

    def next_tokens() -> torch.Tensor:
        state["i"] += 1
        return batches[state["i"] % len(batches)]
    return next_tokens


def training_step(model: torch.nn.Module, cfg: RunConfig, batches: List[torch.Tensor],
                  explicit: bool = False,
                  loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> Callable[[], None]:
    """One optimizer step of a plain `model` on the next pre-generated batch (next-token loss
    on its logits, or `loss_fn(tokens)`; AdamW, gradient clipping): TransformerLens,
    tinyinduct's explicit path, its compiled model, and the plain-model step the loop took
    before it was one stacked loop."""
    optimizer = make_optimizer(model, cfg)
    state = {"i": 0}

    def step() -> None:
        tokens = batches[state["i"] % len(batches)]
        state["i"] += 1
        if loss_fn is not None:
            loss = loss_fn(tokens)
        else:
            loss = next_token_loss(model(tokens, cache={}) if explicit else model(tokens), tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()

    return step


def transformer_lens_model(m: ModelConfig, device: torch.device):
    """HookedTransformer with the identical architecture, or None if it is not installed."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        return None
    warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")
    cfg = HookedTransformerConfig(
        n_layers=m.n_layers, d_model=m.d_model, d_head=m.d_head, n_heads=m.n_heads,
        n_ctx=m.n_ctx, d_vocab=m.d_vocab, attn_only=True, normalization_type=None,
        positional_embedding_type=m.positional, act_fn=None, initializer_range=m.init_range,
        device=str(device), seed=0)
    return HookedTransformer(cfg)


def counted_flops_per_token(step: Callable[[], None], tokens: int) -> float:
    """FLOPs of one training step by torch's FLOP counter, per token. Run it on the explicit
    path: the counter does not see inside the CPU fused attention kernel, and on the explicit
    path it counts the full (not causal) score matrix."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / tokens


def model_batches(fields: Dict[str, Any], batch: int, device: torch.device):
    """The run config of a benchmarked model and 8 pre-generated batches `[b, p]`."""
    # attn_bias: TransformerLens always trains b_Q, b_K, b_V, b_O, so tinyinduct does here
    cfg = run_config({**fields, "attn_bias": True}, batch, str(device))
    data = RepeatedSegmentData(cfg.data, seed=0, device=device)
    return cfg, [data.sample().tokens for _ in range(8)]


def tinyinduct_step(cfg: RunConfig, batches: List[torch.Tensor],
                    device: torch.device) -> Callable[[], None]:
    """The training loop's step of one model (K = 1) on the pre-generated batches."""
    return loop_step([build_model(cfg, device)], cfg, cycling([b[None] for b in batches]))


def bench_models(configs, device, threads, timer, repeats, peaks) -> List[Dict[str, Any]]:
    results = []
    for name, (fields, batch) in configs.items():
        cfg, batches = model_batches(fields, batch, device)
        tokens = batch * cfg.data.seq_len
        fns = {"tinyinduct": tinyinduct_step(cfg, batches, device),
               "tinyinduct_plain_model": training_step(build_model(cfg, device), cfg, batches),
               "tinyinduct_explicit": training_step(build_model(cfg, device), cfg, batches,
                                                    explicit=True)}
        tl = transformer_lens_model(cfg.model, device)
        if tl is not None:
            fns["transformer_lens"] = training_step(tl, cfg, batches)
        counted = counted_flops_per_token(fns["tinyinduct_explicit"], tokens)
        seconds = interleaved_medians(timer, fns, repeats)
        flops = flops_per_token(cfg.model)
        row = {"config": name, "threads": threads, "model": fields, "batch_size": batch,
               "tokens_per_step": tokens, "flops_per_token": flops,
               "flops_per_token_counted": counted, "variants": {}}
        for variant, s in seconds.items():
            gflops = flops * tokens / s / 1e9
            row["variants"][variant] = {
                "step_ms": 1e3 * s, "tokens_per_second": tokens / s, "gflops": gflops,
                "fraction_of_matmul_peak": gflops / peaks["fp32"]}
        if "transformer_lens" in seconds:
            row["speedup_vs_transformer_lens"] = seconds["transformer_lens"] / seconds["tinyinduct"]
        results.append(row)
        print(f"[{threads} thr] {name}: " + ", ".join(
            f"{v} {r['tokens_per_second']:,.0f} tok/s ({100 * r['fraction_of_matmul_peak']:.0f}%"
            " of peak)" for v, r in row["variants"].items())
            + (f"; {row['speedup_vs_transformer_lens']:.2f}x TransformerLens"
               if "speedup_vs_transformer_lens" in row else ""), flush=True)
    return results


def bench_profile(configs, device, threads, timer, repeats, peaks,
                  steps: int) -> List[Dict[str, Any]]:
    """Where tinyinduct's step goes: each part's share of a profiled step (`step_profile`), its
    time as that share of the unprofiled step's median, and for the parts that do matmuls, their
    GFLOP/s at that time against the matmul peak of the same run and against one plain matmul of
    the part's own shape: `[tokens, d_model] @ [d_model, n]` for the projections and the
    unembedding; for attention the batched `[n_ctx, d_head] @ [d_head, n_ctx]` score matmul,
    which writes the whole score matrix (what an unfused attention would do: above 100%, the
    fused kernel beats it). Also the share of each such part spent inside its matmul kernels
    (`step_profile.KERNELS`) and the rate they reach there; the rest of the part is copies,
    elementwise work (the softmax), allocation and the dispatch of small operations. And the
    step's floor (`step_floor`), from a tiny step and an exponential timed beside the step."""
    results = []
    for name, (fields, batch) in configs.items():
        cfg, batches = model_batches(fields, batch, device)
        tokens = batch * cfg.data.seq_len
        step = tinyinduct_step(cfg, batches, device)
        seconds = interleaved_medians(timer, {"step": step, **floor_steps(fields, tokens,
                                                                          device)}, repeats)
        step_s = seconds["step"]
        profiled, in_kernels = profile_parts_and_kernels(step, steps)
        flops = part_flops_per_token(cfg.model)
        m = cfg.model
        own_shape = {"projections": (1, tokens, m.d_model, 3 * m.n_heads * m.d_head),
                     "attention": (batch * m.n_heads, m.n_ctx, m.d_head, m.n_ctx),
                     "unembed_loss": (1, tokens, m.d_model, m.d_vocab)}
        parts = {}
        for part in (*STEP_PARTS, "other"):
            share = profiled[part] / profiled["step"]
            row = {"share": share, "ms": 1e3 * share * step_s, "profiled_ms": 1e3 * profiled[part],
                   "gflops": None, "fraction_of_matmul_peak": None,
                   "shape_matmul_gflops": None, "fraction_of_shape_matmul": None,
                   "kernel_share": None, "kernel_gflops": None,
                   "kernel_fraction_of_matmul_peak": None}
            if part in flops and in_kernels[part] > 0:
                # the part's own matmul kernels: their share of its time and their rate, at
                # that share of the unprofiled time
                kernel_share = in_kernels[part] / profiled[part]
                row["kernel_share"] = kernel_share
                row["kernel_gflops"] = (flops[part] * tokens / (kernel_share * share * step_s)
                                        / 1e9)
                row["kernel_fraction_of_matmul_peak"] = row["kernel_gflops"] / peaks["fp32"]
            if part in flops and share > 0:
                row["gflops"] = flops[part] * tokens / (share * step_s) / 1e9
                row["fraction_of_matmul_peak"] = row["gflops"] / peaks["fp32"]
                row["shape_matmul_gflops"] = matmul_gflops(device, timer, *own_shape[part])
                row["fraction_of_shape_matmul"] = row["gflops"] / row["shape_matmul_gflops"]
            parts[part] = row
        floor = step_floor(m, batch, {part: flops[part] * tokens for part in flops},
                           peaks["fp32"], seconds)
        for part, floor_ms in floor["parts_ms"].items():
            parts[part]["floor_ms"] = floor_ms
        results.append({"config": name, "threads": threads, "model": fields, "batch_size": batch,
                        "tokens_per_step": tokens, "step_ms": 1e3 * step_s,
                        "profiled_step_ms": 1e3 * profiled["step"], "profiled_steps": steps,
                        "parts": parts, "floor": floor})
        print(f"[{threads} thr] {name} profile: " + ", ".join(
            f"{part} {100 * r['share']:.0f}%" + (
                "" if r["gflops"] is None else
                f" ({r['gflops']:.0f} GFLOP/s: {100 * r['fraction_of_matmul_peak']:.0f}% of peak, "
                f"{100 * r['fraction_of_shape_matmul']:.0f}% of a matmul of its shape)")
            for part, r in parts.items()), flush=True)
        print(f"[{threads} thr] {name} floor: {floor['total_ms']:.1f} ms against a step of "
              f"{1e3 * step_s:.1f} ms (fixed {floor['fixed_ms']:.1f} ms, " + ", ".join(
                  f"{part} {ms:.1f} ms" for part, ms in floor["parts_ms"].items())
              + f"; an exponential {floor['exp_ns_per_element']:.2f} ns)", flush=True)
    return results


def floor_steps(fields: Dict[str, Any], tokens: int,
                device: torch.device) -> Dict[str, Callable[[], None]]:
    """What the step's floor is made of, timed beside it: the loop's step of a tiny model with
    the same layers and heads (the same operations on a handful of numbers: the fixed cost of
    dispatching them, the optimizer's included) and one exponential of a `[tokens, d_vocab]`
    tensor (the rate of the softmax's exponentials)."""
    # head size 8: the smallest the native attention kernel takes, so that it runs here too
    tiny = {**fields, "d_model": 8, "d_head": 8, "n_ctx": 12, "d_vocab": 8}
    tiny_cfg, tiny_batches = model_batches(tiny, 1, device)
    x = torch.randn(tokens, fields["d_vocab"], device=device)
    out = torch.empty_like(x)
    return {"tiny_step": tinyinduct_step(tiny_cfg, tiny_batches, device),
            "exp": lambda: torch.exp(x, out=out)}


def step_floor(m: ModelConfig, batch: int, part_flops: Dict[str, float], peak_gflops: float,
               seconds: Dict[str, float]) -> Dict[str, Any]:
    """The least a step of these operations could take on this machine: the tiny step's fixed
    cost (the same operations on a handful of numbers), each matmul part's FLOPs (the formula's
    terms: attention's causal half) at the run's matmul peak, and one exponential per logit
    with a target and per unmasked attention score at the measured rate; nothing for copies,
    layouts or any other elementwise work."""
    p = m.n_ctx
    exponentials = {"unembed_loss": batch * (p - 1) * m.d_vocab,
                    "attention": m.n_layers * batch * m.n_heads * p * (p + 1) // 2}
    exp_ns = 1e9 * seconds["exp"] / (batch * p * m.d_vocab)
    parts_ms = {part: 1e3 * flops / (peak_gflops * 1e9) + 1e-6 * exponentials.get(part, 0) * exp_ns
                for part, flops in part_flops.items()}
    fixed_ms = 1e3 * seconds["tiny_step"]
    return {"fixed_ms": fixed_ms, "exp_ns_per_element": exp_ns, "exponentials": exponentials,
            "parts_ms": parts_ms, "total_ms": fixed_ms + sum(parts_ms.values())}


def attention_steps(batch: int, h: int, p: int, e: int,
                    device: torch.device) -> Dict[str, Callable[[], None]]:
    """Forward + backward of one attention layer (`batch x h` sequences of `p` positions, head
    size `e`) by each kernel `causal_attention` can choose."""
    q, k, v = (torch.randn(batch, h, p, e, device=device, requires_grad=True) for _ in range(3))
    grad_z, scale = torch.randn(batch, h, p, e, device=device), e ** -0.5
    flat = [t.view(-1, p, e) for t in (q, k, v, grad_z)]  # views: gradients reach q, k, v
    steps = {"flash": lambda: F.scaled_dot_product_attention(
                 q, k, v, is_causal=True, scale=scale).backward(grad_z),
             "matmuls": lambda: SmallContextAttention.apply(*flat[:3], scale).backward(flat[3])}
    if native_attention.runs_on(device, e, q.dtype, p):
        steps["native"] = lambda: NativeAttention.apply(q, k, v, scale).backward(grad_z)
    return steps


def bench_attention(configs, device, threads, timer, repeats) -> List[Dict[str, Any]]:
    """The attention kernels at each config's shape (the native one where it runs), and the one
    `causal_attention` runs."""
    rows = []
    for name, (fields, batch) in configs.items():
        h, p, e = fields["n_heads"], fields["n_ctx"], fields["d_head"]
        seconds = interleaved_medians(timer, attention_steps(batch, h, p, e, device), repeats)
        chosen = kernel_for(batch * h, p, e, device)
        rows.append({"config": name, "threads": threads, "shape": [batch, h, p, e],
                     **{f"{kernel}_ms": 1e3 * seconds[kernel] if kernel in seconds else None
                        for kernel in ("flash", "matmuls", "native")},
                     "chosen": chosen})
        print(f"[{threads} thr] {name} attention, forward + backward: " + ", ".join(
            f"{kernel} {1e3 * s:.2f} ms" for kernel, s in seconds.items())
            + f"; {chosen} chosen", flush=True)
    return rows


@contextmanager
def inductor_cache(path: str):
    """torch.compile's on-disk caches (inductor's and AOTAutograd's) in `path` for the block."""
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCHINDUCTOR_CACHE_DIR"]
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def compiled_step(cfg: RunConfig, batches: List[torch.Tensor],
                  device: torch.device) -> Callable[[], None]:
    """`training_step` of a fresh model whose loss (forward and backward) is `torch.compile`d:
    the model takes its explicit path under compile, plain operations that inductor fuses."""
    model = build_model(cfg, device)
    torch._dynamo.reset()  # a fresh compile: no graph or dynamic shape kept from another config
    loss_fn = torch.compile(lambda tokens: next_token_loss(model(tokens), tokens), dynamic=False)
    return training_step(model, cfg, batches, loss_fn=loss_fn)


def first_call_seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_compile(configs, device, threads, timer, repeats) -> List[Dict[str, Any]]:
    """torch.compile against tinyinduct's eager step: the first compiled step with empty
    on-disk caches (`compile_seconds`), a second model compiled again in the same process
    (`recompile_seconds`: the caches warm, a lower bound on what a later run pays), both
    steps' medians, and the steps after which the compile has paid for itself."""
    rows = []
    for name, (fields, batch) in configs.items():
        cfg, batches = model_batches(fields, batch, device)
        with tempfile.TemporaryDirectory() as cache, inductor_cache(cache):
            compile_s = first_call_seconds(compiled_step(cfg, batches, device))
            compiled = compiled_step(cfg, batches, device)
            recompile_s = first_call_seconds(compiled)
            seconds = interleaved_medians(timer, {
                "tinyinduct": tinyinduct_step(cfg, batches, device), "compiled": compiled},
                repeats)
        saved = seconds["tinyinduct"] - seconds["compiled"]
        row = {"config": name, "threads": threads, "compile_seconds": compile_s,
               "recompile_seconds": recompile_s,
               "tinyinduct_step_ms": 1e3 * seconds["tinyinduct"],
               "compiled_step_ms": 1e3 * seconds["compiled"],
               "pays_after_steps": compile_s / saved if saved > 0 else None,
               "pays_after_steps_recompiled": recompile_s / saved if saved > 0 else None}
        rows.append(row)
        print(f"[{threads} thr] {name} torch.compile: {compile_s:.1f} s to compile "
              f"({recompile_s:.1f} s again), step {row['compiled_step_ms']:.1f} ms against "
              f"{row['tinyinduct_step_ms']:.1f} ms eager; " + (
                  "never pays" if saved <= 0 else
                  f"pays after {row['pays_after_steps']:,.0f} steps"), flush=True)
    return rows


def bench_many_seeds(fields, batch, device, threads, timer, repeats, ks) -> List[Dict[str, Any]]:
    """A stacked step of K models (data included) against one single-model step."""
    cfg = run_config(fields, batch, str(device))
    tokens = batch * cfg.data.seq_len

    def stacked_step(k: int) -> Callable[[], None]:
        cfgs = [replace(cfg, seed=s) for s in range(k)]
        streams = [RepeatedSegmentData(c.data, c.seed, device) for c in cfgs]
        return loop_step([build_model(c, device) for c in cfgs], cfg,
                         lambda: torch.stack([s.sample().tokens for s in streams]))

    fns = {"single": stacked_step(1), **{f"K={k}": stacked_step(k) for k in ks}}
    seconds = interleaved_medians(timer, fns, repeats)
    single_rate = tokens / seconds["single"]
    rows = []
    for k in ks:
        aggregate = k * tokens / seconds[f"K={k}"]
        rows.append({"threads": threads, "n_seeds": k, "batch_size": batch,
                     "stacked_step_ms": 1e3 * seconds[f"K={k}"],
                     "single_step_ms": 1e3 * seconds["single"],
                     "aggregate_tokens_per_second": aggregate,
                     "sequential_tokens_per_second": single_rate,
                     "speedup_vs_sequential": aggregate / single_rate})
        print(f"[{threads} thr] batch {batch}, {k} seeds at once: {aggregate:,.0f} tok/s in all, "
              f"{aggregate / single_rate:.2f}x {k} sequential runs", flush=True)
    return rows


def time_to_induction(fields, batch, device, quick: bool) -> Dict[str, Any]:
    """A real default run (logger off); seconds to the crossing = training seconds per step
    (evaluation excluded) x the crossing step."""
    cfg = run_config(fields, batch, str(device))
    if quick:
        cfg = replace(cfg, train=TrainConfig(steps=40, eval_every=20, checkpoint_every=40))
    else:  # the default data too (copy lengths 16-31), not the bench's scaled ones
        cfg = replace(cfg, data=replace(DataConfig(), batch_size=batch))
    with tempfile.TemporaryDirectory() as run_dir:
        s = train_run(cfg, run_dir, progress=False)
    per_step = (s["train_seconds"] - s["eval_seconds"]) / s["last_step"]
    step = s["phase_change_step"]
    return {
        "threads": torch.get_num_threads(), "steps_run": s["last_step"],
        "induction_formed": s["induction_formed"], "phase_change_step": step,
        "phase_change_tokens": s["phase_change_tokens"],
        "phase_change_training_seconds": None if step is None else step * per_step,
        "best_induction_score": s["best_induction_score"],
        "wall_seconds": s["wall_seconds"], "train_seconds": s["train_seconds"],
        "eval_seconds": s["eval_seconds"],
        "eval_fraction_of_wall": s["eval_seconds"] / s["wall_seconds"],
        "eval_fraction_of_loop": s["eval_fraction"],
        "eval_every": cfg.train.eval_every, "tokens_per_second": s["tokens_per_second"],
    }


def machine() -> Dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        from importlib.metadata import version

        info["transformer_lens"] = version("transformer-lens")
    except Exception:  # not installed: the comparison is skipped
        info["transformer_lens"] = None
    return info


def load_average() -> List[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON result")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--threads", default="1,2",
                        help="CPU thread counts to measure, comma-separated (CPU only)")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per variant")
    parser.add_argument("--seeds", default="1,4,8,16", help="K values for many seeds at once")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="what to measure, comma-separated: models (vs TransformerLens), "
                             "profile (where tinyinduct's step goes, CPU), attention (the two "
                             "attention kernels), compile (torch.compile against the eager "
                             "step, ~20 s a compile), seeds (many seeds at once), induction (a "
                             "default run, ~1 min)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    try:
        threads = [int(t) for t in args.threads.split(",")] if device.type == "cpu" else [
            torch.get_num_threads()]
        ks = [int(k) for k in args.seeds.split(",")]
    except ValueError:
        sys.exit(f"error: --threads and --seeds take comma-separated integers, got "
                 f"{args.threads!r}, {args.seeds!r}")
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        sys.exit(f"error: --parts {args.parts!r}: allowed: {', '.join(PARTS)}")
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    repeats = 2 if args.quick else args.repeats
    timer = Timer(device, block_s=0.05 if args.quick else 0.4)
    default_fields, default_batch = next(iter(configs.values()))
    if machine()["transformer_lens"] is None:
        print("TransformerLens is not installed (pip install 'transformer-lens<4'): "
              "comparing tinyinduct with itself only.", flush=True)

    result: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "device": str(device), "machine": machine(), "quick": args.quick,
        "load_average_before": load_average(), "flops_formula": FLOPS_FORMULA,
        "matmul_peak_gflops": {}, "models": [], "profile": [], "attention": [],
        "compile": [], "many_seeds": [],
    }

    def save(final: bool = False) -> None:  # after every part: a run cut short keeps its results
        result["complete"] = final
        result["load_average_after"] = load_average()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    for n in threads:
        torch.set_num_threads(n)
        m = run_config(default_fields, default_batch, str(device)).model
        peaks = {"fp32": matmul_peak(device, m, default_batch * m.n_ctx, timer)}
        if device.type == "cuda":
            peaks["bf16"] = matmul_peak(device, m, default_batch * m.n_ctx, timer, torch.bfloat16)
        result["matmul_peak_gflops"][str(n)] = peaks
        print(f"[{n} thr] matmul peak {peaks['fp32']:.1f} GFLOP/s (fp32)", flush=True)
        if "models" in parts:
            result["models"] += bench_models(configs, device, n, timer, repeats, peaks)
            save()
        if "profile" in parts and device.type == "cpu":
            result["profile"] += bench_profile(configs, device, n, timer, repeats, peaks,
                                               steps=2 if args.quick else 5)
            save()
        elif "profile" in parts and n == threads[0]:
            print("profile: CPU only (the profiler's CPU ranges do not time a GPU's kernels); "
                  "skipped", flush=True)
        if "attention" in parts:
            result["attention"] += bench_attention(configs, device, n, timer, repeats)
            save()
        if "compile" in parts:
            result["compile"] += bench_compile(configs, device, n, timer, repeats)
            save()
        # many seeds pay most where one model's batch is too small to fill the machine
        for batch in ([default_batch] if args.quick else [default_batch, default_batch // 4]):
            if "seeds" in parts:
                result["many_seeds"] += bench_many_seeds(default_fields, batch, device, n,
                                                         timer, repeats, ks)
                save()
    if "induction" in parts:
        torch.set_num_threads(max(threads))
        result["time_to_induction"] = time_to_induction(default_fields, default_batch, device,
                                                        args.quick)
        t = result["time_to_induction"]
        print(f"[{t['threads']} thr] default run: phase change at step {t['phase_change_step']} "
              f"({t['phase_change_training_seconds'] or float('nan'):.1f} s of training), "
              f"evaluation {100 * t['eval_fraction_of_wall']:.1f}% of wall time", flush=True)
    save(final=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
