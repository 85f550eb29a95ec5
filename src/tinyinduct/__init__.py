"""tinyinduct: watch induction heads form in a two-layer attention-only transformer."""

import importlib

from .config import ConfigError, ModelConfig, RunConfig

# Imported on first use: the config alone loads without torch, so a bad command line is
# answered in a fraction of a second.
_LAZY = {"AttnOnlyTransformer": ".model", "Run": ".runs", "load_run": ".runs", "train": ".train"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AttnOnlyTransformer", "ConfigError", "ModelConfig", "Run", "RunConfig", "load_run",
           "train"]
__version__ = "0.1.0"
