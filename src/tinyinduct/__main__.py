"""`python -m tinyinduct`: where to start."""

import sys

GUIDE = """tinyinduct {version}: watch induction heads form in a small attention-only transformer.

Train (Hydra: any config field is an override; --help lists them all):
  tinyinduct-train                                  # or: python scripts/train.py
  tinyinduct-train model.positional=shortformer seed=3
  tinyinduct-train -m model.positional=standard,shortformer seed=0,1,2   # a sweep
  tinyinduct-train --help

Open a finished run (its folder is printed at the end of training):
  from tinyinduct import load_run, to_transformer_lens
  run = load_run("outputs/<date>/<time>")
  model = to_transformer_lens(run.model)            # needs: pip install "tinyinduct[tl]"

Configs: {configs}
W&B runs are offline by default: wandb sync outputs/<date>/<time>/wandb/offline-run-*
More in README.md: install, configuration, TransformerLens, W&B, troubleshooting.
"""


def main() -> int:
    from . import __version__
    from .resources import config_dir

    print(GUIDE.format(version=__version__, configs=config_dir()).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
