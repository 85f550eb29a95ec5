"""Real training runs with their attention record (record/attention/, written by the loop at
every evaluation), laid out as a sweep, for the tests of pages and pictures drawn from it."""

from __future__ import annotations

from pathlib import Path

from tinyinduct.config import run_config_from_dict

TINY = {
    "device": "cpu", "logger": {"mode": "disabled", "progress": False},
    "train": {"steps": 60, "eval_every": 20, "checkpoint_every": 60},
    "model": {"d_model": 32, "n_heads": 2, "d_head": 8, "n_ctx": 32, "d_vocab": 64},
    "data": {"d_vocab": 64, "seq_len": 32, "min_copy_len": 4, "max_copy_len": 12,
             "batch_size": 8, "eval_batch_size": 16},
}


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def eval_steps(steps: int, every: int) -> list:
    return [0] + [s for s in range(1, steps + 1) if s % every == 0 or s == steps]


def train_with_record(run_dir: Path, monkeypatch, config: dict) -> dict:
    """Train `config` (merged over the run defaults) into `run_dir`: the loop writes config.yaml
    and the attention record at every evaluation; returns the summary."""
    from tinyinduct import train

    return train(run_config_from_dict(config), run_dir, progress=False)


def recorded_runs(base: Path, monkeypatch) -> dict:
    """Real tiny runs with attention records: a finished standard run, a finished shortformer
    run, a run that fails (learning rate 1e30: the loss goes non-finite), and a copy of the
    standard run cut off at step 20 with no summary.json (killed, or still running). Returns
    `{name: run_dir}`; they sit in `base` as a sweep's job folders 0-3."""
    import shutil

    runs = {"standard": base / "0", "shortformer": base / "1", "failed": base / "2",
            "incomplete": base / "3"}
    train_with_record(runs["standard"], monkeypatch, merge(TINY, {"seed": 1}))
    train_with_record(runs["shortformer"], monkeypatch,
                      merge(TINY, {"seed": 1, "model": {"positional": "shortformer"}}))
    train_with_record(runs["failed"], monkeypatch, merge(TINY, {"optim": {"lr": 1e30}}))
    shutil.copytree(runs["standard"], runs["incomplete"])
    (runs["incomplete"] / "summary.json").unlink()
    metrics = runs["incomplete"] / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()[:2]))
    for path in (runs["incomplete"] / "record" / "attention").glob("step_*.npy"):
        if path.name > "step_0000020.npy":
            path.unlink()
    return runs
