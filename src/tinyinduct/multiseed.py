"""Many seeds at once: `train.n_seeds = K` models trained as one batched computation.

Model k is exactly the run `seed + k` would train alone: the same init, data stream, optimizer,
schedule and evaluation; only the arithmetic is batched. Parameters are stacked on a leading model
axis (`W_Q: [K, h, d, e]`) under one model's names, so `make_optimizer` groups them unchanged and
each seed's optimizer state is a slice. Matmuls become batched einsums, attention one SDPA call
over `K * batch` sequences, the loss a sum of per-model means (each model gets its own gradient;
unembedding and loss fused in cache-sized chunks), gradient clipping is per model. For evaluation
and checkpoints each seed's weights are copied into a plain `AttnOnlyTransformer`, so
`RUN_DIR/seed<s>/` holds what a single run's directory holds (metrics.jsonl, summary.json,
checkpoints/, wandb/) and `load_run` opens it."""

from __future__ import annotations

import copy
import math
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from .config import RunConfig, to_dict, validate_run_config
from .data import RepeatedSegmentData
from .evaluate import evaluate, partner_summary
from .fused_loss import unembed_cross_entropy
from .metrics import best_induction_head
from .model import AttnOnlyTransformer, fused_attention, layer_norm
from .phase import phase_change_row
from .runs import CHECKPOINT_DIR, LAST_CHECKPOINT, checkpoint_state, save_checkpoint
from .tracking import SUMMARY_FILE, Tracker, write_json_atomic
from .train import (
    build_model,
    eval_batches,
    format_summary,
    lr_lambda,
    make_optimizer,
    next_token_targets,
    resolve_device,
    summarize,
    write_pictures,
)


def _stacked_norm(ln: nn.Module, x: torch.Tensor) -> torch.Tensor:  # x [K, b, p, d]
    return layer_norm(x, ln.w[:, None, None], ln.b[:, None, None], ln.eps)


class _StackedBlock:
    """What `AttnOnlyTransformer._attn_inputs` needs of a block (its norm), for stacked weights."""

    def __init__(self, block: nn.Module):
        self.ln1 = getattr(block, "ln1", None)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.ln1 is None else _stacked_norm(self.ln1, x)


class StackedTransformer(nn.Module):
    """K `AttnOnlyTransformer`s with one config as one module: `forward(tokens [K, b, p])` returns
    `[K, b, p, d_vocab]`, model k's logits on its own batch, computed by the same fused path."""

    def __init__(self, models: Sequence[AttnOnlyTransformer]):
        super().__init__()
        self.cfg = models[0].cfg
        self.n_models = len(models)
        self.shell = copy.deepcopy(models[0])  # one model's module tree and parameter names
        for name, _ in models[0].named_parameters():
            owner, _, leaf = name.rpartition(".")
            stacked = torch.stack([m.get_parameter(name).detach() for m in models])
            setattr(self.shell.get_submodule(owner), leaf, nn.Parameter(stacked))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [K, b, p] -> [K, b, p, d_vocab]
        u = self.shell.unembed
        return torch.baddbmm(u.b_U[:, None], self.final_residual(tokens).flatten(1, 2),
                             u.W_U).view(*tokens.shape, -1)

    def final_residual(self, tokens: torch.Tensor) -> torch.Tensor:  # -> [K, b, p, d_model]
        m, cfg = self.shell, self.cfg
        shortformer = cfg.positional == "shortformer"
        which = torch.arange(tokens.shape[0], device=tokens.device)[:, None, None]
        embed = m.embed.W_E[which, tokens]  # [K, b, p, d]
        pos = m.pos_embed.W_pos[:, None, : tokens.shape[-1]]  # [K, 1, p, d]
        resid = embed if shortformer else embed + pos
        direct, blocked = resid, set(cfg.blocked_composition)
        for layer, block in enumerate(m.blocks):
            inputs = AttnOnlyTransformer._attn_inputs(
                _StackedBlock(block), resid, direct, pos, shortformer,
                blocked if layer > 0 else set())
            a = block.attn
            biases = (a.b_Q, a.b_K, a.b_V, a.b_O) if a.attn_bias else None
            resid = resid + fused_attention(inputs, (a.W_Q, a.W_K, a.W_V, a.W_O), biases, a.scale)
        if hasattr(m, "ln_final"):
            resid = _stacked_norm(m.ln_final, resid)
        return resid

    @torch.no_grad()
    def copy_to(self, k: int, model: AttnOnlyTransformer) -> AttnOnlyTransformer:
        """Write model k's weights into a plain `model` (for evaluation and checkpoints)."""
        for name, p in model.named_parameters():
            p.copy_(self.shell.get_parameter(name)[k])
        return model


def per_model_loss(model: StackedTransformer, tokens: torch.Tensor) -> torch.Tensor:  # [K]
    """Each model's mean next-token cross-entropy on its own batch `tokens[k]`, as
    `next_token_loss(model_k(tokens[k]), tokens[k])` computes it alone. The stacked logits would
    be K times the largest tensor of a single step, so the unembedding and the loss are fused
    over cache-sized chunks (`fused_loss`)."""
    u = model.shell.unembed
    per_row = unembed_cross_entropy(model.final_residual(tokens).flatten(1, 2), u.W_U, u.b_U,
                                    next_token_targets(tokens).flatten(1))
    return per_row.sum(1) / (tokens.shape[1] * (tokens.shape[2] - 1))


@torch.no_grad()
def clip_grad_norm_per_model_(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` applied to each model (slice k of every gradient) on its
    own: one model's large gradient never scales another's. Returns the norms `[K]`."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *(1,) * (g.dim() - 1)))
    return norms


class _Saved:
    """A ready state dict where `checkpoint_state` expects an object with `state_dict()`."""

    def __init__(self, state: Dict[str, Any]):
        self.state = state

    def state_dict(self) -> Dict[str, Any]:
        return self.state


def seed_optimizer_state(optimizer: torch.optim.Optimizer, k: int) -> Dict[str, Any]:
    """Model k's AdamW state, shaped as a single run's `optimizer.state_dict()` (cloned slices,
    so a checkpoint does not carry the other models' moments)."""
    full = optimizer.state_dict()
    state = {i: {name: (t[k].clone() if t.dim() > 0 else t.clone()) for name, t in s.items()}
             for i, s in full["state"].items()}
    return {"state": state, "param_groups": copy.deepcopy(full["param_groups"])}


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The single-run config whose run model k reproduces."""
    name = f"{cfg.logger.name}-seed{seed}" if cfg.logger.name else None
    return replace(cfg, seed=seed, train=replace(cfg.train, n_seeds=1),
                   logger=replace(cfg.logger, name=name))


def seed_dir(run_dir: Path, seed: int) -> Path:
    return Path(run_dir) / f"seed{seed}"


def train_seeds(cfg: RunConfig, run_dir: str | Path,
                progress: bool | None = None) -> Dict[str, Any]:
    """Train seeds `cfg.seed .. cfg.seed + cfg.train.n_seeds - 1` at once into
    `run_dir/seed<s>/`; write `run_dir/summary.json` over all of them and return it."""
    validate_run_config(cfg)
    start_time = time.perf_counter()
    run_dir, device, n = Path(run_dir), resolve_device(cfg.device), cfg.train.n_seeds
    cfgs = [seed_config(cfg, cfg.seed + k) for k in range(n)]
    models = [build_model(c, device) for c in cfgs]
    stacked = StackedTransformer(models).to(device)
    streams = [RepeatedSegmentData(c.data, seed=c.seed, device=device) for c in cfgs]
    probe, train_batch = eval_batches(cfg, device)
    optimizer = make_optimizer(stacked, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    params = list(stacked.parameters())
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    rows: List[List[Dict[str, Any]]] = [[] for _ in range(n)]
    patterns: List[List[torch.Tensor]] = [[] for _ in range(n)]  # per seed, for the pictures
    errors: List[str | None] = [None] * n
    eval_seconds = 0.0
    show = cfg.logger.progress if progress is None else progress

    def live() -> List[int]:
        return [k for k in range(n) if errors[k] is None]

    def save(k: int, step: int) -> None:
        state = checkpoint_state(cfgs[k], stacked.copy_to(k, models[k]),
                                 _Saved(seed_optimizer_state(optimizer, k)), scheduler, step)
        save_checkpoint(seed_dir(run_dir, cfgs[k].seed) / CHECKPOINT_DIR / LAST_CHECKPOINT, state)

    with ExitStack() as stack:
        trackers = []
        for c in cfgs:
            trackers.append(stack.enter_context(Tracker(c, seed_dir(run_dir, c.seed))))
            (seed_dir(run_dir, c.seed) / "config.yaml").write_text(yaml.safe_dump(to_dict(c)))

        def log_eval(step: int, train_losses: List[float]) -> None:
            nonlocal eval_seconds
            t0 = time.perf_counter()
            for k in live():
                row = {"step": step, "tokens": step * tokens_per_step,
                       "train/loss": train_losses[k], "train/lr": scheduler.get_last_lr()[0]}
                row.update(evaluate(stacked.copy_to(k, models[k]), probe, train_batch,
                                    patterns[k]))
                row.update(phase_change_row(rows[k] + [row], cfg.train.induction_threshold))
                trackers[k].log(row)
                rows[k].append(row)
            eval_seconds += time.perf_counter() - t0

        train_start = time.perf_counter()  # before the step-0 evaluation, which eval time counts
        log_eval(0, [float("nan")] * n)
        loss_sum = torch.zeros(n, device=device)
        steps_since_eval = 0
        bar = tqdm(total=cfg.train.steps, disable=None if show is None else not show,
                   desc=f"train x{n}", unit="step", dynamic_ncols=True)
        step = 0
        for step in range(1, cfg.train.steps + 1):
            tokens = torch.stack([s.sample().tokens for s in streams])  # [K, b, p]
            losses = per_model_loss(stacked, tokens)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            if cfg.optim.grad_clip > 0:
                clip_grad_norm_per_model_(params, cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += losses.detach()
            steps_since_eval += 1
            bar.update(1)
            if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
                train_losses = (loss_sum / steps_since_eval).tolist()  # one sync per interval
                loss_sum.zero_()
                steps_since_eval = 0
                for k in live():
                    if not math.isfinite(train_losses[k]):
                        errors[k] = f"non-finite training loss ({train_losses[k]}) at step {step}"
                log_eval(step, train_losses)
                best = max((best_induction_head(r[-1])[1] for r in rows), default=float("nan"))
                bar.set_postfix(loss=f"{sum(train_losses) / n:.3f}", induction=f"{best:.2f}")
                if not live():
                    break
            if step % cfg.train.checkpoint_every == 0 and step != cfg.train.steps:
                for k in live():
                    save(k, step)
        bar.close()
        train_seconds = time.perf_counter() - train_start
        for k in live():
            save(k, step)
        per_seed_rate = step * tokens_per_step / max(train_seconds - eval_seconds, 1e-9)
        summaries = {}
        for k, (c, tracker) in enumerate(zip(cfgs, trackers)):
            summary = summarize(rows[k], c)
            summary.update(partner_summary(stacked.copy_to(k, models[k]), probe, summary))
            summary.update({
                "status": "failed" if errors[k] else "finished",
                "error": errors[k],
                "threshold": c.train.induction_threshold,
                "wall_seconds": time.perf_counter() - start_time,
                "train_seconds": train_seconds,
                "eval_seconds": eval_seconds,
                "eval_fraction": eval_seconds / max(train_seconds, 1e-9),
                "tokens_per_second": per_seed_rate,
                "n_seeds_at_once": n,
                "wandb_dir": tracker.wandb_dir,
            })
            summary["plot_seconds"] = write_pictures(seed_dir(run_dir, c.seed), rows[k], summary,
                                                     patterns[k], probe, tracker)
            tracker.summary(summary)
            summaries[c.seed] = summary
    first = summaries[cfg.seed]
    overall = {
        "status": "failed" if any(errors) else "finished",
        "n_seeds": n,
        "seeds": list(summaries),
        "induction_formed": [s["induction_formed"] for s in summaries.values()],
        "phase_change_step": [s["phase_change_step"] for s in summaries.values()],
        "wall_seconds": time.perf_counter() - start_time,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "eval_fraction": first["eval_fraction"],
        "tokens_per_second": n * per_seed_rate,
        "wandb_dir": (str(run_dir / "seed*" / "wandb" / "offline-run-*")
                      if first["wandb_dir"] else None),
        "seed_summaries": {str(s): v for s, v in summaries.items()},
    }
    write_json_atomic(run_dir / SUMMARY_FILE, overall)
    return overall


def format_seeds_summary(overall: Dict[str, Any], run_dir: Path) -> str:
    """One paragraph per seed, then a line over all of them."""
    lines = [f"seed {s}: {format_summary(summary, seed_dir(run_dir, int(s)))}"
             for s, summary in overall["seed_summaries"].items()]
    formed = sum(overall["induction_formed"])
    lines.append(
        f"{overall['n_seeds']} seeds trained at once: {formed} formed an induction head; "
        f"{overall['train_seconds']:.1f} s of training, {overall['tokens_per_second']:,.0f} "
        f"training tokens/s over all seeds. Run dir: {run_dir}")
    return "\n".join(lines)
