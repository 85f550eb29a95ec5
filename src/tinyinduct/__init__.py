"""tinyinduct: watch induction heads form in a two-layer attention-only transformer."""

from . import _clock  # noqa: F401  (first: starts the wall clock before torch loads)
from .config import ConfigError, ModelConfig, RunConfig
from .interop import from_transformer_lens, to_transformer_lens
from .loop import train
from .model import AttnOnlyTransformer
from .runs import Run, load_run

__all__ = ["AttnOnlyTransformer", "ConfigError", "ModelConfig", "Run", "RunConfig", "load_run",
           "train", "to_transformer_lens", "from_transformer_lens"]
__version__ = "0.1.0"
