"""One self-contained HTML file: the page's data as inline JSON, its script and style inline;
nothing is loaded from anywhere when the page opens."""

from __future__ import annotations

import base64
import html
import json
import math
import os
import zlib
from importlib import resources
from pathlib import Path
from typing import Any, List

import numpy as np


def asset(name: str) -> str:
    return resources.files("tinyinduct.report").joinpath("assets", name).read_text()


def clean(value: Any, digits: int = 5) -> Any:
    """JSON-safe copy: non-finite floats become null, floats keep `digits` significant digits."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, digits) for v in value]
    return value


def pack_patterns(array: np.ndarray) -> str:
    """`[n, n_layers, n_heads, T, T]` attention -> base64 of zlib-compressed uint8 (value * 255,
    rounded; a non-finite value, as a diverged run leaves, becomes 0), lower triangle (causal:
    the rest is zero) row by row, in that axis order."""
    if array.size == 0:
        return ""
    rows, cols = np.tril_indices(array.shape[-1])
    tri = np.nan_to_num(array[..., rows, cols].astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    tri = np.clip(np.rint(tri * 255), 0, 255)
    return base64.b64encode(zlib.compress(tri.astype(np.uint8).tobytes(), 9)).decode("ascii")


def render(title: str, data: dict, scripts: List[str]) -> str:
    payload = json.dumps(clean(data), separators=(",", ":"), allow_nan=False)
    payload = payload.replace("</", "<\\/")  # a string in the data never ends the script block
    code = "\n".join(asset(s) for s in scripts).replace("</script", "<\\/script")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n{asset('page.css')}</style>\n"
            f"</head><body>\n<main id=\"page\"><h1>{html.escape(title)}</h1>"
            f"<p class=\"note\">Loading... (this page needs JavaScript)</p></main>\n"
            f"<script type=\"application/json\" id=\"page-data\">{payload}</script>\n"
            f"<script>\n{code}\n</script>\n</body></html>\n")


def write_page(path: Path, text: str) -> Path:
    """Write atomically: a reader (or a browser) never sees half a page."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
