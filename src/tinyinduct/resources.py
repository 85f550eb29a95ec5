"""Where the Hydra configs live: `tinyinduct/configs` in an installed wheel (the top-level
`configs/` folder, shipped by pyproject's package-dir mapping), else the checkout's `configs/`."""

from pathlib import Path


def config_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parents[1] / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no configs/train.yaml in {here} or in the source checkout")
