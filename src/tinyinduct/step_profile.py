"""Where a training step's time goes: named parts of the step, and their share of a profiled step.

The step's code marks its parts with `part(name)`, a `torch.profiler` range while a profiler runs
and nothing otherwise (the training loop pays nothing). `profile_parts` runs a step under the
profiler and gives every operation's own time to a part: a forward operation to the range it runs
in, a backward operation to the part of the forward operation that recorded it (autograd's
sequence number links the two), an operation outside every range to `other` (layer norm, the
targets' shift, gradient accumulation, zeroing, and the Python between operations).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Dict, List, Tuple

import torch
from torch.autograd.profiler import record_function

# forward + backward of each; "optimizer" is gradient clipping, AdamW and the schedule
PARTS = ("embedding", "projections", "attention", "unembed_loss", "optimizer")
# the operations that do a part's multiply-adds (matmuls, and the flash and native attention
# kernels, whose matmuls and softmax are one operation); the rest of a part is copies,
# elementwise work, allocation and the dispatch of small operations
KERNELS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::baddbmm_",
           "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
           "tinyinduct::causal_attention", "tinyinduct::causal_attention_backward")

STEP = "training_step"
BACKWARD = "backward"  # a marker, not a part


def profiled(name: str):
    """A profiler range named `name` while a profiler runs; without one a no-op context (the
    training loop pays nothing). tinyinduct's C++ kernels are not torch operations: each call
    is one such range, so the profile sees them as operations."""
    return record_function(name) if torch.autograd._profiler_enabled() else nullcontext()


def part(name: str):
    """`with part("attention"):` marks the block as that part of the step for a running
    profiler; without one it is a no-op context."""
    return profiled(name)


def _part_of(event, backward_parts: Dict[int, str | None] | None) -> str | None:
    """The part an event's time belongs to: the nearest enclosing range, or for a backward
    operation the part of the forward operation with its sequence number (`BACKWARD` if
    `backward_parts` is None)."""
    while event is not None:
        if event.name in PARTS:
            return event.name
        if event.name.startswith("autograd::engine::evaluate_function"):
            return BACKWARD if backward_parts is None else backward_parts.get(event.sequence_nr)
        event = event.cpu_parent
    return None


def attribute(events) -> List[Tuple[object, str | None]]:
    """Each profiler event of a step with its part (None: outside every part)."""
    # the operation that creates an autograd node is the last (in start order) to carry its
    # number: operations before it only peek at the next number
    forward_parts: Dict[int, str | None] = {}
    for event in sorted(events, key=lambda e: e.time_range.start):
        name = _part_of(event, None) if event.sequence_nr >= 0 else BACKWARD
        if name != BACKWARD:
            forward_parts[event.sequence_nr] = name
    return [(event, _part_of(event, forward_parts)) for event in events]


def profile_parts(step: Callable[[], object], steps: int) -> Dict[str, float]:
    """Seconds per step of each part in `PARTS` and `other` (the rest of the step's wall time),
    over `steps` calls of `step` under `torch.profiler` (CPU activity); they add up to the
    profiled step's wall time, `"step"` in the result."""
    return profile_parts_and_kernels(step, steps)[0]


def profile_parts_and_kernels(step: Callable[[], object], steps: int
                              ) -> Tuple[Dict[str, float], Dict[str, float]]:
    """`profile_parts`, and of each part's seconds those spent inside its `KERNELS`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function(STEP):
                step()
    seconds = {name: 0.0 for name in PARTS}
    kernels = {name: 0.0 for name in PARTS}
    wall = 0.0
    for event, name in attribute(prof.events()):
        if event.name == STEP:
            wall += event.cpu_time_total / 1e6
        elif name is not None:
            seconds[name] += event.self_cpu_time_total / 1e6
            if event.name in KERNELS:
                kernels[name] += event.self_cpu_time_total / 1e6
    seconds = {name: s / steps for name, s in seconds.items()}
    seconds["step"] = wall / steps
    seconds["other"] = seconds["step"] - sum(seconds[name] for name in PARTS)
    return seconds, {name: s / steps for name, s in kernels.items()}
