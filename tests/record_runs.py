"""Real training runs that also keep the attention record (record/attention/), for the tests of
pages and pictures drawn from it: `tinyinduct.train.train` with every evaluation's pattern of the
picture sequence saved through `tinyinduct.record`."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from tinyinduct.config import run_config_from_dict, to_dict
from tinyinduct.evaluate import evaluate, picture_index
from tinyinduct.record import copy_spans, save_attention, save_picture_tokens

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
    """Train `config` (merged over the run defaults) into `run_dir`, writing config.yaml as the
    command line does and the attention record at every evaluation; returns the summary."""
    train_module = importlib.import_module("tinyinduct.train")
    cfg = run_config_from_dict(config)
    steps = iter(eval_steps(cfg.train.steps, cfg.train.eval_every))

    def evaluate_and_record(model, probe, train_batch, patterns):
        row = evaluate(model, probe, train_batch, patterns)
        step = next(steps)
        if step == 0:
            i = picture_index(probe)
            save_picture_tokens(run_dir, probe.tokens[i],
                                *copy_spans(probe.first_copy[i], probe.second_copy[i]))
        save_attention(run_dir, step, patterns[-1])
        return row

    monkeypatch.setattr(train_module, "evaluate", evaluate_and_record)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return train_module.train(cfg, run_dir, progress=False)


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
