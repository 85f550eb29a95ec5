"""The training loop: K >= 1 seeds (`train.n_seeds`) trained as one stacked computation (K = 1
is the plain case), AdamW with warmup + cosine, periodic evaluation of every seed on fixed
batches, metrics.jsonl + W&B per seed, checkpoints, a non-finite guard per seed, stopping a seed
once its head has formed (`train.stop_after_formed`), SIGINT/SIGTERM, and resume. No Hydra here:
it takes a `RunConfig`.

Seed `seed + k` trains exactly the run `seed=seed + k` would train alone (same init, data stream,
schedule and evaluation). With one seed the run directory is the seed's; with several each seed's
run lives in `RUN_DIR/seed<s>/` (what a single run's directory holds) and `RUN_DIR/summary.json`
sums them up. A seed that fails or stops early leaves the stack: it no longer costs compute.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Tuple

import torch
import yaml
from tqdm.auto import tqdm

from .config import ConfigError, RunConfig, to_dict, validate_run_config, warn_once
from .data import RepeatedSegmentData
from .evaluate import eval_batches, evaluate, partner_summary, picture_index, write_pictures
from .guard import NonFiniteGuard
from .interrupt import StopSignals
from .interventions import describe, drop_frozen_grads, graft, intervened, intervention_hooks
from .memory import check_memory
from .metrics import best_induction_head
from .model import AttnOnlyTransformer
from .phase import formed_at, phase_change_row
from .record import copy_spans, save_attention, save_picture_tokens
from .resume import ResumePoint, cut_metrics, load_resume_point, training_state
from .rundir import RunFault, claim, out_of_memory
from .runs import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    PREVIOUS_CHECKPOINT,
    RunFileError,
    read_summary,
    save_checkpoints,
)
from .snapshots import SnapshotSchedule, drop_snapshots_after, save_snapshot
from .stack import (
    StackedTransformer,
    seed_optimizer_state,
    select_optimizer_state,
    stacked_optimizer_state,
    train_step,
)
from .summary import summarize
from .tracking import SUMMARY_FILE, Tracker, write_json_atomic


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


def build_model(cfg: RunConfig, device: torch.device) -> AttnOnlyTransformer:
    """The model a run with `cfg.seed` starts from."""
    torch.manual_seed(cfg.seed)
    model = AttnOnlyTransformer(cfg.model).to(device)
    model.init_weights(torch.Generator(device).manual_seed(cfg.seed))
    return model


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The single-run config whose run seed `seed` of a stacked run reproduces."""
    if cfg.train.n_seeds == 1:
        return cfg
    name = f"{cfg.logger.name}-seed{seed}" if cfg.logger.name else None
    resume = str(Path(cfg.resume) / f"seed{seed}") if cfg.resume else None
    return replace(cfg, seed=seed, resume=resume, train=replace(cfg.train, n_seeds=1),
                   logger=replace(cfg.logger, name=name))


def seed_dir(run_dir: Path, cfg: RunConfig, seed: int) -> Path:
    """Where seed `seed`'s run lives: the run directory itself for a single seed."""
    return Path(run_dir) if cfg.train.n_seeds == 1 else Path(run_dir) / f"seed{seed}"


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    """The run's own config.yaml (what compare.py and resume read), unless it has one."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


@dataclass
class SeedRun:
    """One seed's run inside the stack: its plain model (a copy for evaluation and checkpoints),
    data stream, metrics sink, rows and fate."""

    cfg: RunConfig
    dir: Path
    model: AttnOnlyTransformer
    data: RepeatedSegmentData
    resumed: ResumePoint | None
    tracker: Tracker | None = None
    rows: List[Dict[str, Any]] = field(default_factory=list)
    patterns: List[torch.Tensor] = field(default_factory=list)
    error: str | None = None  # set when the seed failed
    stop_reason: str | None = None  # set when the seed stopped early (formed)
    saved_step: int = 0
    last_step: int = 0
    summary: Dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.error is not None or self.stop_reason is not None


def _prior_status(cfg: RunConfig, directory: Path) -> str | None:
    """The status a seed's earlier session ended with (None: none, or it was killed)."""
    if not cfg.resume:
        return None
    try:
        return read_summary(directory / SUMMARY_FILE).get("status")
    except RunFileError:  # a torn summary: the session was killed while writing it
        return None


class Loop:
    """The state of one training run of K seeds; `run()` trains it to the end."""

    def __init__(self, cfg: RunConfig, run_dir: Path, progress: bool | None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = resolve_device(cfg.device)
        self.start_time = time.perf_counter()
        self.show = cfg.logger.progress if progress is None else progress
        self.tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
        self.eval_seconds = 0.0
        self.schedule = SnapshotSchedule(cfg.train.snapshots, cfg.train.steps,
                                         cfg.train.induction_threshold)
        self.seeds: List[SeedRun] = []
        ended: List[SeedRun] = []
        for k in range(cfg.train.n_seeds):
            c = seed_config(cfg, cfg.seed + k)
            directory = seed_dir(run_dir, cfg, c.seed)
            status = _prior_status(c, directory)
            if status in ("failed", "finished"):  # ended in an earlier session: check, keep
                load_resume_point(c, directory, self.device, ended=cfg.train.n_seeds > 1
                                  or status == "failed")
                ended.append(self._ended_seed(c, directory))
                continue
            resumed = load_resume_point(c, directory, self.device)  # bad: ConfigError, no build
            model = build_model(c, self.device)
            if resumed is None:
                graft(model, cfg.intervene)  # bad graft: ConfigError before any step
            self.seeds.append(SeedRun(c, directory, model,
                                      RepeatedSegmentData(c.data, seed=c.seed, device=self.device),
                                      resumed))
        if not self.seeds:
            raise ConfigError("resume", cfg.resume, "every seed of that run has already ended "
                              "(finished or failed): nothing to continue")
        self._back_to_one_step()
        self.ended = ended
        self.probe, self.train_batch = eval_batches(cfg, self.device)
        self.stacked = StackedTransformer([s.model for s in self.seeds]).to(self.device)
        self.spec = cfg.intervene
        self.stacked.set_hooks(intervention_hooks(self.spec, cfg.model,
                                                  lambda: self.stacked.tokens))
        self.optimizer = make_optimizer(self.stacked, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.guard = NonFiniteGuard(len(self.seeds), self.device)
        self.loss_sum = torch.zeros(len(self.seeds), device=self.device)  # since the last eval
        self.steps_since_eval = 0
        self.start_step = 0
        if self.seeds[0].resumed is not None:
            self._restore()

    def _back_to_one_step(self) -> None:
        """A kill between the seeds' checkpoint renames leaves some seeds one checkpoint ahead:
        those resume from their previous checkpoint, at the step of the others."""
        steps = {s.resumed.step for s in self.seeds if s.resumed is not None}
        if len(steps) < 2:
            return
        for s in self.seeds:
            if s.resumed is not None and s.resumed.step > min(steps):
                previous = load_resume_point(s.cfg, s.dir, self.device,
                                             checkpoint=PREVIOUS_CHECKPOINT)
                if previous is not None and previous.step == min(steps):
                    s.resumed = previous

    def _ended_seed(self, cfg: RunConfig, directory: Path) -> SeedRun:
        run = SeedRun(cfg, directory, None, None, None)  # type: ignore[arg-type]
        run.summary = read_summary(directory / SUMMARY_FILE)
        run.error = run.summary.get("error") if run.summary.get("status") == "failed" else None
        run.stop_reason = run.summary.get("stop_reason") or "finished"
        return run

    def _restore(self) -> None:
        """Every state a checkpoint holds, for every live seed: weights, AdamW moments, the
        schedule, the generators, the running loss; the metrics cut back to the checkpoint."""
        points = [s.resumed for s in self.seeds]
        steps = {p.step for p in points}
        if len(steps) > 1:
            raise ConfigError("resume", self.cfg.resume, f"its seeds' checkpoints are at different "
                              f"steps {sorted(steps)}: they cannot continue as one stack")
        for k, (s, p) in enumerate(zip(self.seeds, points)):
            s.model.load_state_dict(p.state["model"])
            self.stacked.copy_from(k, s.model)
            p.restore_generators(s.data)
            self.loss_sum[k] = p.state["loss_sum"].to(self.device).reshape(())
            s.rows = cut_metrics(s.dir, p.step)
            drop_snapshots_after(s.dir, p.step)
            s.saved_step = s.last_step = p.step
        self.optimizer.load_state_dict(stacked_optimizer_state([p.state["optimizer"]
                                                                for p in points]))
        self.scheduler.load_state_dict(points[0].state["scheduler"])
        self.steps_since_eval = points[0].state["steps_since_eval"]
        self.start_step = points[0].step

    # --- per-seed bookkeeping ---

    def intervened(self, model: AttnOnlyTransformer) -> ContextManager[AttnOnlyTransformer]:
        """Evaluation sees the interventions training sees (none: the model as it is)."""
        if self.spec.clamp_pattern or self.spec.ablate:
            return intervened(model, self.spec)
        return nullcontext(model)

    def live(self) -> List[SeedRun]:
        return [s for s in self.seeds if not s.done]

    def log_eval(self, k: int, s: SeedRun, step: int, train_loss: float) -> Dict[str, Any]:
        t0 = time.perf_counter()
        row = {"step": step, "tokens": step * self.tokens_per_step, "train/loss": train_loss,
               "train/lr": self.scheduler.get_last_lr()[0]}
        with self.intervened(self.stacked.copy_to(k, s.model)) as model:
            row.update(evaluate(model, self.probe, self.train_batch, s.patterns))
        row.update(phase_change_row(s.rows + [row], self.cfg.train.induction_threshold))
        s.tracker.log(row)
        s.rows.append(row)
        save_attention(s.dir, step, s.patterns[-1])  # the pictures and the page redraw from it
        if self.schedule.at_step(step) or self.schedule.at_evaluation(s.rows):
            save_snapshot(s.dir, step, s.model)  # s.model holds this step's weights
        self.eval_seconds += time.perf_counter() - t0
        return row

    def checkpoint(self, k: int, s: SeedRun, step: int) -> str | None:
        """Save seed k's state after `step`, unless it went non-finite: then say why."""
        return self.checkpoint_seeds([(k, s)], step)[0]

    def checkpoint_seeds(self, seeds: List[Tuple[int, SeedRun]], step: int) -> List[str | None]:
        """Save the state of every seed given after `step` (those that went non-finite say why
        instead); the files are replaced together, so a kill leaves the stack at one step."""
        problems, states = [], []
        for k, s in seeds:
            model = self.stacked.copy_to(k, s.model)
            problem = self.guard.problem(k, model, step)  # one host sync per checkpoint
            problems.append(problem)
            if problem is None:
                s.saved_step = step
                states.append((s.dir / CHECKPOINT_DIR / LAST_CHECKPOINT, training_state(
                    s.cfg, model, _Saved(seed_optimizer_state(self.optimizer, k)),
                    self.scheduler, s.data, step, self.loss_sum[k], self.steps_since_eval,
                    s.tracker.wandb_id)))
        save_checkpoints(states, keep_previous=self.cfg.train.n_seeds > 1)
        return problems

    def check_formed(self, s: SeedRun, step: int) -> None:
        """Stop a seed `train.stop_after_formed` steps after it first met the criteria."""
        after = self.cfg.train.stop_after_formed
        if after is None:
            return
        t = self.cfg.train
        first = formed_at(s.rows, t.induction_threshold, t.loss_ratio_threshold)
        if first is not None and step - first >= after and step < t.steps:
            s.stop_reason = (f"stopped early at step {step}: the formation criteria were first "
                             f"met at step {first} (train.stop_after_formed={after})")

    def finish_seed(self, k: int, s: SeedRun, step: int, stop: StopSignals,
                    train_seconds: float) -> None:
        """Write the seed's summary, pictures and W&B end: it trains no more in this process.
        `train_seconds`: its time in the loop, evaluations included, until it stopped."""
        s.last_step = step
        if s.error is None:
            s.error = self.checkpoint(k, s, step)  # the end, where it stopped, or a signal
        if s.error is None:  # the last step's weights are always in the record
            save_snapshot(s.dir, step, s.model)
        interrupted = (s.error is None and s.stop_reason is None and stop.requested
                       and step < self.cfg.train.steps)
        summary = summarize(s.rows, s.cfg)
        with self.intervened(self.stacked.copy_to(k, s.model)) as model:
            summary.update(partner_summary(model, self.probe, summary))
        summary.update({
            "status": "failed" if s.error else "interrupted" if interrupted else "finished",
            "error": s.error,
            "stopped_early": s.stop_reason is not None,
            "stop_reason": s.stop_reason,
            "interrupted_by": stop.name if interrupted else None,
            "exit_code": 1 if s.error else stop.exit_code if interrupted else 0,
            "last_step": step,
            "budget_steps": self.cfg.train.steps,
            "resumed_from_step": self.start_step if s.resumed else None,
            "threshold": self.cfg.train.induction_threshold,
            "wall_seconds": time.perf_counter() - self.start_time,
            "train_seconds": train_seconds,
            "eval_seconds": self.eval_seconds,
            "eval_fraction": self.eval_seconds / max(train_seconds, 1e-9),
            "tokens_per_second": (step - self.start_step) * self.tokens_per_step
            / max(train_seconds - self.eval_seconds, 1e-9),
            "n_seeds_at_once": len(self.seeds),
            "interventions": describe(self.spec),
            "wandb_dir": s.tracker.wandb_dir,
        })
        if s.error:
            summary["error"] += (f"; last good checkpoint: step {s.saved_step} in "
                                 f"{s.dir / CHECKPOINT_DIR / LAST_CHECKPOINT}")
        summary["plot_seconds"] = write_pictures(s.dir, s.rows, summary, s.patterns, self.probe,
                                                 s.tracker)
        s.tracker.summary(summary)
        write_report(s.dir)  # after summary.json, which the page reads
        s.tracker.exit_code = summary["exit_code"]
        s.tracker.close()
        s.summary = summary

    def drop_finished(self) -> None:
        """Take the seeds that ended out of the stack, its optimizer and its guard."""
        keep = [k for k, s in enumerate(self.seeds) if not s.done]
        if len(keep) == len(self.seeds) or not keep:
            return
        state = select_optimizer_state(self.optimizer, keep)
        schedule = self.scheduler.state_dict()
        self.stacked.keep_models(keep)
        self.optimizer = make_optimizer(self.stacked, self.cfg)
        self.optimizer.load_state_dict(state)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.cfg))
        self.scheduler.load_state_dict(schedule)
        self.guard.keep_models(keep)
        self.loss_sum = self.loss_sum[keep].clone()
        self.ended += [s for s in self.seeds if s.done]
        self.seeds = [self.seeds[k] for k in keep]

    # --- the loop ---

    def run(self) -> Dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        if cfg.train.n_seeds > 1:
            write_config(self.run_dir, cfg)
        with StopSignals() as stop, ExitStack() as trackers:
            i = picture_index(self.probe)
            for s in self.seeds:
                write_config(s.dir, s.cfg)
                save_picture_tokens(s.dir, self.probe.tokens[i].cpu(), *copy_spans(
                    self.probe.first_copy[i], self.probe.second_copy[i]))
                wandb_id = s.resumed.wandb_id if s.resumed else None
                s.tracker = trackers.enter_context(Tracker(s.cfg, s.dir, wandb_id=wandb_id))
            train_start = time.perf_counter()  # before the step-0 evaluation (eval time counts)
            if self.start_step == 0:
                for k, s in enumerate(self.seeds):
                    self.log_eval(k, s, 0, float("nan"))
                    self.checkpoint(k, s, 0)  # even a run killed early resumes
            n = len(self.seeds)
            bar = tqdm(total=t.steps, initial=self.start_step,
                       disable=None if self.show is None else not self.show,
                       desc="train" if n == 1 else f"train x{n}", unit="step",
                       dynamic_ncols=True)
            step = self.start_step
            for step in range(self.start_step + 1, t.steps + 1):
                tokens = torch.stack([s.data.sample().tokens for s in self.seeds])  # [K, b, p]
                frozen = (partial(drop_frozen_grads, self.stacked.shell, self.spec, step)
                          if self.spec.freeze else None)
                losses = train_step(self.stacked, self.optimizer, self.scheduler, tokens,
                                    cfg.optim.grad_clip, after_backward=frozen)
                self.loss_sum += losses
                self.guard.observe(step, losses)
                self.steps_since_eval += 1
                bar.update(1)
                if self.schedule.at_step(step) and step % t.eval_every and step != t.steps:
                    for k, s in enumerate(self.seeds):  # at evaluations, log_eval saves them
                        save_snapshot(s.dir, step, self.stacked.copy_to(k, s.model))
                if step % t.eval_every == 0 or step == t.steps:
                    self.evaluate_all(step, bar)
                if step % t.checkpoint_every == 0 and step != t.steps:
                    live = [(k, s) for k, s in enumerate(self.seeds) if not s.done]
                    for (_, s), problem in zip(live, self.checkpoint_seeds(live, step)):
                        s.error = problem
                ended = [(k, s) for k, s in enumerate(self.seeds) if s.done and not s.summary]
                seconds = time.perf_counter() - train_start
                for k, s in ended:
                    self.finish_seed(k, s, step, stop, seconds)
                self.drop_finished()
                if not self.live() or stop.requested:
                    break
            bar.close()
            train_seconds = time.perf_counter() - train_start
            for k, s in enumerate(self.seeds):
                if s.summary is None:
                    self.finish_seed(k, s, step, stop, train_seconds)
            self.ended += self.seeds
        return self.overall_summary(train_seconds)

    def evaluate_all(self, step: int, bar: tqdm) -> None:
        train_losses = (self.loss_sum / self.steps_since_eval).tolist()  # one sync per interval
        self.loss_sum.zero_()
        self.steps_since_eval = 0
        best = float("nan")
        for k, s in enumerate(self.seeds):
            row = self.log_eval(k, s, step, train_losses[k])
            if not math.isfinite(train_losses[k]):
                s.error = (self.guard.problem(k, s.model, step)  # names the first bad step
                           or f"non-finite mean training loss up to step {step}")
            else:
                self.check_formed(s, step)
            score = best_induction_head(row)[1]
            best = score if not best >= score else best
        bar.set_postfix(loss=f"{sum(train_losses) / len(train_losses):.3f}",
                        induction=f"{best:.2f}")

    def overall_summary(self, train_seconds: float) -> Dict[str, Any]:
        """The run's summary: the seed's own for one seed; for several, one over all of them in
        `RUN_DIR/summary.json` (each seed's own is in its directory)."""
        runs = sorted(self.ended, key=lambda s: s.cfg.seed)
        if self.cfg.train.n_seeds == 1:
            return runs[0].summary
        summaries = {s.cfg.seed: s.summary for s in runs}
        statuses = [s["status"] for s in summaries.values()]
        codes = [s.get("exit_code") or 0 for s in summaries.values()]
        status = ("interrupted" if "interrupted" in statuses
                  else "failed" if "failed" in statuses else "finished")
        exit_code = (max(c for c in codes if c > 1) if status == "interrupted"
                     else 1 if status == "failed" else 0)
        rates = [s.get("tokens_per_second") or 0.0 for s in summaries.values()]
        overall = {
            "status": status,
            "exit_code": exit_code,
            "error": "; ".join(f"seed {seed}: {s['error']}" for seed, s in summaries.items()
                               if s.get("error")) or None,
            "n_seeds": self.cfg.train.n_seeds,
            "seeds": list(summaries),
            "failed_seeds": [seed for seed, s in summaries.items() if s["status"] == "failed"],
            "induction_formed": [s.get("induction_formed") for s in summaries.values()],
            "phase_change_step": [s.get("phase_change_step") for s in summaries.values()],
            "last_step": max(s.get("last_step") or 0 for s in summaries.values()),
            "interrupted_by": next((s["interrupted_by"] for s in summaries.values()
                                    if s.get("interrupted_by")), None),
            "wall_seconds": time.perf_counter() - self.start_time,
            "train_seconds": train_seconds,
            "eval_seconds": self.eval_seconds,
            "eval_fraction": self.eval_seconds / max(train_seconds, 1e-9),
            "tokens_per_second": sum(rates),
            "wandb_dir": (str(self.run_dir / "seed*" / "wandb" / "offline-run-*")
                          if any(s.get("wandb_dir") for s in summaries.values()) else None),
            "seed_summaries": {str(seed): s for seed, s in summaries.items()},
        }
        write_json_atomic(self.run_dir / SUMMARY_FILE, overall)
        return overall


def write_report(run_dir: Path) -> None:
    """The run's report.html; a failure is reported, never fatal (the numbers are on disk)."""
    try:
        from .report import write_run_report

        write_run_report(run_dir)
    except Exception as err:
        print(f"could not write the report page: {type(err).__name__}: {err}", file=sys.stderr)


class _Saved:
    """A ready state dict where `checkpoint_state` expects an object with `state_dict()`."""

    def __init__(self, state: Dict[str, Any]):
        self.state = state

    def state_dict(self) -> Dict[str, Any]:
        return self.state


def train(cfg: RunConfig, run_dir: str | Path, progress: bool | None = None) -> Dict[str, Any]:
    """Train `cfg.train.n_seeds` models (seeds `cfg.seed`, `cfg.seed + 1`, ...) as `cfg` says,
    writing everything into `run_dir` (its own config.yaml included); return the summary.

    With `cfg.resume` (which must be `run_dir`) it continues that run from its last checkpoint.
    SIGINT/SIGTERM stop it after the current step with a checkpoint (status "interrupted"); a
    seed whose loss goes non-finite stops keeping its last good checkpoint (status "failed")
    while the others train on. `summary["exit_code"]` is what a command line should exit with.
    """
    validate_run_config(cfg)
    check_memory(cfg, str(resolve_device(cfg.device)))  # too big: ConfigError, nothing built
    if not cfg.resume:  # a resumed run was warned when it started
        warn_once(cfg)
    lock = claim(Path(run_dir), resuming=bool(cfg.resume))  # refused: RunDirError, nothing built
    try:
        return Loop(cfg, Path(run_dir), progress).run()
    except (OSError, MemoryError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not out_of_memory(err):
            raise  # a bug, not the machine: keep its traceback
        fault = RunFault(err, Path(run_dir))
        if cfg.train.n_seeds > 1:  # each seed's tracker wrote its own; the job's too, if it can
            try:
                write_json_atomic(Path(run_dir) / SUMMARY_FILE, {
                    "status": "failed", "exit_code": 1, "error": str(fault)})
            except OSError:
                pass
        raise fault from err
    finally:
        lock.close()

