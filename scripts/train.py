#!/usr/bin/env python
"""Train a two-layer attention-only transformer and watch its induction head form.

    python scripts/train.py                                   # the default run
    python scripts/train.py model.positional=shortformer optim.lr=3e-3
    python scripts/train.py -m model.positional=standard,shortformer seed=0,1,2

Hydra composes `configs/train.yaml` over the typed schema `tinyinduct.config.RunConfig`; the run
directory (Hydra's output dir) receives config.yaml, metrics.jsonl, summary.json, checkpoints/
and the offline W&B run in wandb/. The app itself is `tinyinduct.cli.main`, which the installed
`tinyinduct-train` command runs too.
"""

from tinyinduct.cli import main

if __name__ == "__main__":
    main()
