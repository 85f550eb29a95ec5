"""The run's record on disk: the attention pattern of the picture sequence at every evaluation
and the sequence itself, so pictures and the report page can be redrawn from the run directory.

    RUN_DIR/record/attention/tokens.json         {"tokens": [...], "first_copy": [start, length],
                                                  "second_copy": [start, length]}
    RUN_DIR/record/attention/step_0000050.npy    float16 [n_layers, n_heads, T, T]

Writers replace files atomically (temp file + `os.replace`): a reader never sees half a file.
Readers skip a missing or unreadable file with a warning naming it, never fail the caller.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

ATTENTION_DIR = Path("record") / "attention"
TOKENS_FILE = "tokens.json"
STEP_FILE = re.compile(r"^step_(\d{7,})\.npy$")
Span = Tuple[int, int]  # (start position, length) of one copy in the picture sequence


def attention_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / ATTENTION_DIR


def attention_path(run_dir: str | Path, step: int) -> Path:
    return attention_dir(run_dir) / f"step_{step:07d}.npy"


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def save_attention(run_dir: str | Path, step: int,
                   pattern: torch.Tensor | np.ndarray) -> Path:
    """Store `pattern` `[n_layers, n_heads, T, T]` (attention of the picture sequence at `step`)
    as float16."""
    array = pattern.detach().cpu().numpy() if isinstance(pattern, torch.Tensor) else pattern
    array = np.asarray(array, dtype=np.float16)
    if array.ndim != 4 or array.shape[-1] != array.shape[-2]:
        raise ValueError(f"pattern must be [n_layers, n_heads, T, T], got {array.shape}")
    path = attention_path(run_dir, step)
    _write_atomic(path, lambda f: np.save(f, array))
    return path


def load_attention(run_dir: str | Path) -> Tuple[List[int], np.ndarray]:
    """Every recorded step (ascending) and the patterns `[n_evals, n_layers, n_heads, T, T]`
    (float16). Files that cannot be read, or whose shape differs from the first readable one,
    are skipped with a warning; no record gives `([], an empty array)`."""
    folder = attention_dir(run_dir)
    found = sorted((int(m.group(1)), p) for p in folder.glob("step_*.npy")
                   if (m := STEP_FILE.match(p.name))) if folder.is_dir() else []
    steps, arrays = [], []
    for step, path in found:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            warnings.warn(f"skipping unreadable attention record {path}: {err}", stacklevel=2)
            continue
        if array.ndim != 4 or (arrays and array.shape != arrays[0].shape):
            expected = arrays[0].shape if arrays else "[n_layers, n_heads, T, T]"
            warnings.warn(f"skipping attention record {path}: shape {array.shape}, expected "
                          f"{expected}", stacklevel=2)
            continue
        steps.append(step)
        arrays.append(array.astype(np.float16, copy=False))
    if not arrays:
        return [], np.zeros((0, 0, 0, 0, 0), dtype=np.float16)
    return steps, np.stack(arrays)


def save_picture_tokens(run_dir: str | Path, tokens: Sequence[int] | torch.Tensor,
                        first_copy: Span, second_copy: Span) -> Path:
    """Store the picture sequence and where its two copies sit (`(start, length)` each)."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.tolist()
    record = {"tokens": [int(t) for t in tokens],
              "first_copy": [int(x) for x in first_copy],
              "second_copy": [int(x) for x in second_copy]}
    path = attention_dir(run_dir) / TOKENS_FILE
    _write_atomic(path, lambda f: f.write(json.dumps(record).encode()))
    return path


def load_picture_tokens(run_dir: str | Path) -> Dict[str, Any] | None:
    """`{"tokens": [int], "first_copy": (start, length), "second_copy": (start, length)}`, or
    None (with a warning when the file exists but cannot be read)."""
    path = attention_dir(run_dir) / TOKENS_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        return {"tokens": [int(t) for t in record["tokens"]],
                "first_copy": tuple(int(x) for x in record["first_copy"]),
                "second_copy": tuple(int(x) for x in record["second_copy"])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(f"skipping unreadable picture tokens {path}: {err}", stacklevel=2)
        return None


def copy_spans(first_mask: torch.Tensor, second_mask: torch.Tensor) -> Tuple[Span, Span]:
    """`(start, length)` of both copies from one sequence's prediction masks `[pos]` (see
    `tinyinduct.data`: a mask marks every copy position but the last, whose successor is not
    predictable)."""
    spans = []
    for mask in (first_mask, second_mask):
        where = torch.nonzero(mask).flatten()
        spans.append((int(where[0]), int(where.numel()) + 1) if where.numel() else (0, 0))
    return spans[0], spans[1]


def spans_from_tokens(tokens: Sequence[int] | torch.Tensor) -> Tuple[Span, Span] | None:
    """The two copies of a sequence found from its tokens alone: the longest run of positions
    each repeating the token after the previous one's earlier occurrence. None if no token
    repeats."""
    tokens = torch.as_tensor(tokens)
    from .data import induction_sources

    src = induction_sources(tokens[None])[0].tolist()  # j + 1, j the earlier occurrence
    best, start = (0, 0), None
    for i, s in enumerate(src + [-1]):
        if s >= 0 and start is not None and src[i - 1] == s - 1:
            continue
        if start is not None and i - start > best[1]:
            best = (start, i - start)
        start = i if s >= 0 else None
    if best[1] == 0:
        return None
    second = best[0]
    return (src[second] - 1, best[1]), best
