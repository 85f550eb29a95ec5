"""tinyinduct's C++ kernels (`csrc/kernels.cpp`) for float32 on a CPU: causal attention at head
sizes 8 and 16 (`native_attention`), a whole attention layer around it (`native_layer`) and the
softmax + cross-entropy of the fused loss (`fused_loss`); and the optimizer's step, clipping and
AdamW by torch's own kernels in one call (`stack.train_step`).

They are compiled by torch's C++ extension loader (a C++ compiler and ninja) the first time a
process needs them, into torch's extension cache (`TORCH_EXTENSIONS_DIR`, by default
`~/.cache/torch_extensions`): about a minute once per machine and torch installation, then a
fraction of a second per process. `TINYINDUCT_NATIVE=0` turns them off; where they cannot be
built, one warning says why and torch's operations, which compute the same functions, run
instead.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "kernels.cpp"
FUNCTIONS = ["attention_forward", "attention_backward", "unembed_cross_entropy",
             "attention_layer_workspace", "attention_layer_forward", "attention_layer_backward",
             "clip_and_adamw"]
SWITCH = "TINYINDUCT_NATIVE"  # "0": torch's operations only; "1" (the default): the kernels
# fast math: 5-15% on the attention kernel here; but not finite-math-only, so that a NaN or an
# infinity still comes out where torch's operations give it (tested: the non-finite guard relies
# on it)
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fopenmp"]

_extension = None
_tried = False


def enabled() -> bool:
    value = os.environ.get(SWITCH, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{SWITCH}={value!r}: allowed values are 0 (torch's operations only) "
                         f"and 1 (tinyinduct's kernels where they run)")
    return value == "1"


def extension():
    """The compiled kernels' module, or None where they are switched off or cannot be built."""
    global _extension, _tried
    if not enabled():
        return None
    if not _tried:
        _tried = True
        _extension = _build()
    return _extension


def runs_on(t: torch.Tensor) -> bool:
    """Whether the kernels can take this tensor: float32 on a CPU, and built."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and extension() is not None


def _build_tag() -> str:
    """A short tag of this CPU's instruction sets and of this torch installation. The kernels
    are compiled for the machine (`-march=native`), so a home directory shared by different
    machines must not hand one machine's build to another; and against one torch, so two
    environments on one machine must not take turns rebuilding one build folder."""
    flags = platform.machine() + platform.processor() + torch.__version__ + torch.__file__
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags += next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        pass
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


def _build():
    from torch.utils.cpp_extension import _get_build_directory, load_inline

    name = f"tinyinduct_kernels_{_build_tag()}"
    try:
        if not any(Path(_get_build_directory(name, verbose=False)).glob("*.so")):
            print("tinyinduct: compiling its CPU kernels (once per machine and torch install, "
                  "about a minute)", file=sys.stderr, flush=True)
        return load_inline(name, cpp_sources=SOURCE.read_text(), functions=FUNCTIONS,
                           extra_cflags=FLAGS, extra_ldflags=["-fopenmp"])
    except Exception as error:  # no compiler, no ninja, a failed build: torch's operations
        first_line = (str(error).strip().splitlines() or [""])[0]
        warnings.warn(f"tinyinduct's CPU kernels could not be built "
                      f"({type(error).__name__}: {first_line}); torch's operations run instead "
                      f"(set {SWITCH}=0 to skip the attempt)", RuntimeWarning, stacklevel=3)
        return None

