"""The training loop: AdamW, warmup + cosine schedule, grad clipping, periodic evaluation on
fixed batches, metrics.jsonl + W&B, checkpoints. No Hydra here: it takes a `RunConfig`."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import ConfigError, RunConfig, validate_run_config
from .data import Batch, RepeatedSegmentData, make_probe
from .evaluate import evaluate, partner_summary, picture_index, score_tables
from .fused_loss import IGNORE
from .guard import NonFiniteGuard
from .interrupt import StopSignals
from .metrics import best_induction_head
from .model import AttnOnlyTransformer
from .phase import phase_change_row, phase_change_summary
from .resume import cut_metrics, load_resume_point, training_state
from .runs import CHECKPOINT_DIR, LAST_CHECKPOINT, save_checkpoint
from .tracking import Tracker

# The evaluation batches are the same for every run, whatever its seed, so runs compare.
PROBE_SEED = 20_221_000
TRAIN_DIST_SEED = 20_221_001


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None))
                 and torch.backends.mps.is_available()}
    if not available.get(name, False):
        usable = ", ".join(k for k, v in available.items() if v)
        raise ConfigError("device", name, f"not available on this machine; usable: auto, {usable}")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on weight matrices only (not biases or LayerNorm)."""
    o = cfg.optim
    decay = [p for n, p in model.named_parameters() if n.split(".")[-1].startswith("W_")]
    rest = [p for n, p in model.named_parameters() if not n.split(".")[-1].startswith("W_")]
    groups = [{"params": decay, "weight_decay": o.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    kwargs = dict(lr=o.lr, betas=(o.beta1, o.beta2))
    try:  # the fused kernel halves the fixed per-step cost on CPU (torch >= 2.4)
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kwargs)


def lr_lambda(cfg: RunConfig) -> Callable[[int], float]:
    o, steps = cfg.optim, cfg.train.steps

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = (step - o.warmup_steps) / max(1, steps - o.warmup_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def next_token_targets(tokens: torch.Tensor) -> torch.Tensor:  # [..., pos] -> [..., pos]
    """`tokens[..., i+1]` at position i; the last position gets `IGNORE` instead of being sliced
    off the logits, which would copy the largest tensor forward and back."""
    return torch.cat([tokens[..., 1:], torch.full_like(tokens[..., :1], IGNORE)], dim=-1)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting `tokens[:, i+1]` at position i (a scalar)."""
    return F.cross_entropy(logits.flatten(0, -2), next_token_targets(tokens).flatten(),
                           ignore_index=IGNORE)


def build_model(cfg: RunConfig, device: torch.device) -> AttnOnlyTransformer:
    """The model a run with `cfg.seed` starts from."""
    torch.manual_seed(cfg.seed)
    model = AttnOnlyTransformer(cfg.model).to(device)
    model.init_weights(torch.Generator(device).manual_seed(cfg.seed))
    return model


def eval_batches(cfg: RunConfig, device: torch.device) -> tuple:
    """The fixed probe and training-distribution batches every evaluation uses."""
    probe = make_probe(cfg.data, seed=PROBE_SEED, device=device)
    train_batch = RepeatedSegmentData(cfg.data, seed=TRAIN_DIST_SEED, device=device).sample(
        cfg.data.eval_batch_size)
    return probe, train_batch


def summarize(rows: List[Dict[str, Any]], cfg: RunConfig) -> Dict[str, Any]:
    """Did an induction head form (final best layer>=1 score and copy-loss ratio), and when."""
    last = rows[-1]
    head, score = best_induction_head(last)
    ratio = last.get("eval/loss_ratio", float("nan"))
    t = cfg.train
    formed = bool(score >= t.induction_threshold and ratio < t.loss_ratio_threshold)
    mech_head = last.get("mechanism/head")
    return {
        "induction_formed": formed,
        "best_induction_head": head,
        "best_induction_score": score,
        "loss_ratio": ratio,
        **phase_change_summary(rows, t.induction_threshold),
        "mechanism": last.get("mechanism/verdict"),
        "mechanism_head": mech_head,
        "mechanism_scores": {k.split("/")[-1]: v for k, v in last.items()
                             if k.startswith(f"mechanism/{mech_head}/")},
        "icl_score": last.get("icl/score"),
        "final_train_loss": last.get("train/loss"),
        "final_loss_second_copy": last.get("eval/loss_second_copy"),
        "final_loss_first_copy": last.get("eval/loss_first_copy"),
        "steps": last["step"],
    }


def format_summary(summary: Dict[str, Any], run_dir: Path) -> str:
    """The one-paragraph account printed at the end of a run."""
    s = summary
    if "seed_summaries" in s:
        from .multiseed import format_seeds_summary

        return format_seeds_summary(s, run_dir)
    if s.get("status") == "failed":
        return f"Run failed after step {s.get('last_step')}: {s.get('error')}. Files in {run_dir}."
    if s.get("status") == "interrupted":
        return (f"Run interrupted by {s['interrupted_by']} after step {s['last_step']}: "
                f"checkpoint saved, metrics complete. Files in {run_dir}.")
    when = (f"the best layer-1 induction score crossed {s['threshold']} at step "
            f"{s['phase_change_step']} ({s['phase_change_tokens']:,} tokens)"
            if s["phase_change_step"] is not None else "no head crossed the threshold")
    if s.get("phase_change_steepest_step") is not None:
        when += (f"; the second-copy loss fell fastest around step "
                 f"{s['phase_change_steepest_step']}")
    verdict = "An induction head formed" if s["induction_formed"] else "No induction head formed"
    best = (f"{s['best_induction_head']} scores {s['best_induction_score']:.2f} on the probe"
            if s["best_induction_head"] else "a one-layer model has no layer-1 head")
    return (f"{verdict}: {best}, second-copy loss {s['final_loss_second_copy']:.2f} vs first-copy "
            f"{s['final_loss_first_copy']:.2f} nats (ratio {s['loss_ratio']:.2f}); {when}. "
            f"{format_mechanism(s)}"
            f"{s['steps']} steps in {s['wall_seconds']:.1f} s "
            f"({s['tokens_per_second']:,.0f} training tokens/s, evaluation "
            f"{100 * s['eval_fraction']:.0f}% of the time). Run dir: {run_dir}")


def format_mechanism(s: Dict[str, Any]) -> str:
    """One sentence: the mechanism verdict with its attribution numbers, and the partner head."""
    scores = s.get("mechanism_scores") or {}
    if not s.get("mechanism") or "full" not in scores:
        return ""
    partner = (f", composing with {s['composes_with']} (previous-token score "
               f"{s['composes_with_prev_token_score']:.2f})" if s.get("composes_with") else "")
    return (f"Mechanism: {s['mechanism']} ({s['mechanism_head']} induction score "
            f"{scores['full']:.2f}; {scores['k_removed']:.2f} with earlier heads removed from its "
            f"keys, {scores['q_removed']:.2f} from its queries){partner}. ")


def write_pictures(run_dir: Path, rows: List[Dict[str, Any]], summary: Dict[str, Any],
                   patterns: List[torch.Tensor], probe: Batch, tracker: Tracker) -> float:
    """Draw the run's pictures into plots/ and send them, with the score tables, to W&B.
    Returns the seconds spent; a plotting failure is reported, never fatal to the run."""
    t0 = time.perf_counter()
    try:
        from .plots import plot_run

        tokens = probe.tokens[picture_index(probe)].cpu()
        paths = plot_run(run_dir, rows, summary, patterns, tokens)
        tracker.media(rows[-1]["step"], paths, score_tables(rows[-1]))
    except Exception as err:  # the run's numbers are on disk already; pictures are extra
        print(f"could not draw the pictures: {type(err).__name__}: {err}", file=sys.stderr)
    return time.perf_counter() - t0


def train(cfg: RunConfig, run_dir: str | Path, progress: bool | None = None) -> Dict[str, Any]:
    """Train one model as `cfg` says, writing everything into `run_dir`; return the summary.

    With `cfg.resume` (which must be `run_dir`) it continues that run from its last checkpoint.
    SIGINT/SIGTERM stop it after the current step with a checkpoint (status "interrupted"); a
    non-finite loss stops it keeping the last good checkpoint (status "failed").
    """
    validate_run_config(cfg)
    if cfg.train.n_seeds > 1:  # several seeds as one batched computation
        from .multiseed import train_seeds

        return train_seeds(cfg, run_dir, progress)
    start_time = time.perf_counter()
    run_dir = Path(run_dir)
    device = resolve_device(cfg.device)
    resumed = load_resume_point(cfg, run_dir, device)  # bad resume: ConfigError, nothing built
    model = build_model(cfg, device)
    data = RepeatedSegmentData(cfg.data, seed=cfg.seed, device=device)
    probe, train_batch = eval_batches(cfg, device)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    rows: List[Dict[str, Any]] = []
    eval_seconds = 0.0
    patterns: List[torch.Tensor] = []  # [layer, head, q, k] of one probe sequence per evaluation
    error = None
    show = cfg.logger.progress if progress is None else progress
    guard = NonFiniteGuard(device)
    loss_sum = torch.zeros((), device=device)  # training loss summed since the last evaluation
    steps_since_eval = 0
    start_step = saved_step = 0
    if resumed is not None:
        loss_sum, steps_since_eval = resumed.restore(model, optimizer, scheduler, data)
        start_step = saved_step = resumed.step
        rows = cut_metrics(run_dir, start_step)

    wandb_id = resumed.wandb_id if resumed else None
    with StopSignals() as stop, Tracker(cfg, run_dir, wandb_id=wandb_id) as tracker:
        def log_eval(step: int, train_loss: float) -> Dict[str, Any]:
            nonlocal eval_seconds
            t0 = time.perf_counter()
            row = {"step": step, "tokens": step * tokens_per_step, "train/loss": train_loss,
                   "train/lr": scheduler.get_last_lr()[0]}
            row.update(evaluate(model, probe, train_batch, patterns))
            row.update(phase_change_row(rows + [row], cfg.train.induction_threshold))
            tracker.log(row)
            rows.append(row)
            eval_seconds += time.perf_counter() - t0
            return row

        def checkpoint(step: int) -> str | None:
            """Save the state after `step`, unless it went non-finite: then say why."""
            nonlocal saved_step
            problem = guard.problem(model, step)  # one host sync per checkpoint
            if problem is None:
                saved_step = step
                save_checkpoint(run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, training_state(
                    cfg, model, optimizer, scheduler, data, step, loss_sum, steps_since_eval,
                    tracker.wandb_id))
            return problem

        train_start = time.perf_counter()  # before the step-0 evaluation, which eval time counts
        if resumed is None:
            log_eval(0, float("nan"))
            checkpoint(0)  # even a run killed early resumes
        bar = tqdm(total=cfg.train.steps, initial=start_step,
                   disable=None if show is None else not show,
                   desc="train", unit="step", dynamic_ncols=True)
        step = start_step
        for step in range(start_step + 1, cfg.train.steps + 1):
            tokens = data.sample().tokens
            logits = model(tokens)
            loss = next_token_loss(logits, tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
            guard.observe(step, loss.detach())
            steps_since_eval += 1
            bar.update(1)
            if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
                train_loss = (loss_sum / steps_since_eval).item()  # the one sync per interval
                loss_sum.zero_()
                steps_since_eval = 0
                row = log_eval(step, train_loss)
                bar.set_postfix(loss=f"{train_loss:.3f}",
                                induction=f"{best_induction_head(row)[1]:.2f}")
                if not math.isfinite(train_loss):
                    error = (guard.problem(model, step)  # names the first bad step
                             or f"non-finite mean training loss up to step {step}")
                    break
            if step % cfg.train.checkpoint_every == 0 and step != cfg.train.steps:
                error = checkpoint(step)
                if error:
                    break
            if stop.requested:
                break
        if error is None:
            error = checkpoint(step)  # the end, or where a signal stopped the run
        bar.close()
        train_seconds = time.perf_counter() - train_start
        interrupted = error is None and stop.requested and step < cfg.train.steps
        summary = summarize(rows, cfg)
        summary.update(partner_summary(model, probe, summary))
        summary.update({
            "status": "failed" if error else "interrupted" if interrupted else "finished",
            "error": error,
            "interrupted_by": stop.name if interrupted else None,
            "exit_code": 1 if error else stop.exit_code if interrupted else 0,
            "last_step": step,
            "resumed_from_step": resumed.step if resumed else None,
            "threshold": cfg.train.induction_threshold,
            "wall_seconds": time.perf_counter() - start_time,
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "eval_fraction": eval_seconds / max(train_seconds, 1e-9),
            "tokens_per_second": (step - start_step) * tokens_per_step
            / max(train_seconds - eval_seconds, 1e-9),
            "wandb_dir": tracker.wandb_dir,
        })
        if error:
            summary["error"] += (f"; last good checkpoint: step {saved_step} in "
                                 f"{run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT}")
        summary["plot_seconds"] = write_pictures(run_dir, rows, summary, patterns, probe, tracker)
        tracker.summary(summary)
        tracker.exit_code = summary["exit_code"]
    return summary
