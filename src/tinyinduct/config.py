"""Typed configuration: one dataclass per group, one `RunConfig` holding them all.

These dataclasses are the Hydra schema (registered by `scripts/train.py`) and the library's own
arguments; the library never imports Hydra. `validate_run_config` checks meaning (sizes, ranges,
allowed names) before any compute is spent and raises `ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List

POSITIONAL_MODES = ("standard", "shortformer")
NORMALIZATIONS = ("none", "LN")
COMPOSITION_INPUTS = ("Q", "K", "V")
DATA_KINDS = ("uniform", "bigram")
DEVICES = ("auto", "cpu", "cuda", "mps")
LOGGER_MODES = ("offline", "online", "disabled")
SCHEDULES = ("cosine", "constant")
CLAMP_PATTERNS = ("previous_token", "induction", "uniform", "bos")
ABLATIONS = ("zero", "mean")
HEAD_LABEL = re.compile(r"L(\d+)H(\d+)")
# torch's CPU generator keeps only the low 32 bits of a seed (2**32 trains exactly seed 0), and the
# bigram chain of seed s is drawn from seed s + CHAIN_SEED_OFFSET: every seed a run uses must be
# below 2**32.
SEED_LIMIT = 2**32
CHAIN_SEED_OFFSET = 1_000_003
MAX_SEED = SEED_LIMIT - 1 - CHAIN_SEED_OFFSET
# A copy of one token predicts nothing (the token after a copy is background): two at least, so
# the shortest sequence is BOS plus two copies of two.
MIN_COPY_LEN = 2
MIN_SEQ_LEN = 1 + 2 * MIN_COPY_LEN
WANDB_TAG_MAX = 64  # W&B refuses longer tags (and empty ones)


class ConfigError(ValueError):
    """A config value that cannot work; `field` is its dotted name."""

    def __init__(self, field: str, value: Any, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"invalid config: {field}={value!r}: {allowed}")


@dataclass
class ModelConfig:
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_head: int = 16
    n_ctx: int = 64
    d_vocab: int = 512
    positional: str = "standard"  # standard | shortformer
    normalization: str = "none"  # none | LN
    attn_bias: bool = False  # train b_Q, b_K, b_V, b_O (else they stay zero)
    init_range: float = 0.1  # std of the normal init of every weight matrix
    # Inputs (among Q, K, V) of layers >= 1 that read only the direct path (W_E[tok], plus W_pos
    # where the positional mode puts it) instead of the residual stream.
    blocked_composition: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        validate_model_config(self)


@dataclass
class DataConfig:
    kind: str = "uniform"  # uniform | bigram: the background the copies sit in
    d_vocab: int = 512  # token 0 is BOS; background and copies use 1..d_vocab-1
    seq_len: int = 64
    batch_size: int = 32
    # Each sequence holds one segment of a random length in [min_copy_len, max_copy_len], copied
    # once later on; both copies start at random places, so the distance between them varies.
    min_copy_len: int = 16
    max_copy_len: int = 31
    bigram_successors: int = 4  # kind=bigram: successors per token in the fixed random chain
    eval_batch_size: int = 64


@dataclass
class OptimConfig:
    lr: float = 1e-2
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | constant (after warmup)
    min_lr_ratio: float = 0.1  # cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class TrainConfig:
    steps: int = 3000
    eval_every: int = 50
    checkpoint_every: int = 500
    induction_threshold: float = 0.7  # best layer>=1 induction score that counts as formed
    loss_ratio_threshold: float = 0.2  # second-copy loss / first-copy loss that counts as formed
    # Train seeds seed .. seed+n_seeds-1 at once, as one batched computation (stack.py).
    n_seeds: int = 1
    # Stop a seed this many steps after it first meets both formation criteria (at the next
    # evaluation); None trains every seed for train.steps.
    stop_after_formed: int | None = None
    # When to keep the model's weights (record/snapshots/): auto | every_eval | every:N | log:N
    # | ends, or several joined with + (snapshots.py); step 0 and the last step always.
    snapshots: str = "auto"
    # Run even when the memory estimate exceeds what the device has free (`memory.check_memory`).
    allow_large: bool = False


@dataclass
class LoggerConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "tinyinduct"
    group: str | None = None
    tags: List[str] = field(default_factory=list)
    name: str | None = None  # default: "<positional>-seed<seed>"
    progress: bool | None = None  # tqdm bar: None shows it only on a terminal


@dataclass
class InterveneConfig:
    """Interventions on the model, active in training and in every evaluation alike
    (`interventions.py`). Heads are labelled `L{layer}H{head}`. Default: none."""

    # head -> the pattern its attention is replaced with (`blocks.{l}.attn.hook_pattern`):
    # previous_token (i -> i-1), induction (i -> the token after the previous occurrence of
    # token i, BOS where there is none), uniform (evenly over positions <= i), bos (all on BOS)
    clamp_pattern: Dict[str, str] = field(default_factory=dict)
    ablate: List[str] = field(default_factory=list)  # heads whose output (hook_z) is ablated
    # zero: the head's z is 0; mean: z is its mean over the batch and positions of the same
    # forward pass (detached: a constant vector that carries no token or position)
    ablation: str = "zero"
    # parameters not trained: state_dict names or their prefixes (embed, blocks.0,
    # blocks.1.attn.W_Q); they get no gradient, so AdamW neither decays nor moves them
    freeze: List[str] = field(default_factory=list)
    freeze_from_step: int = 0  # freeze from this step on (0: from the start)
    # a run directory (its checkpoints/last.pt) or checkpoint file whose parameters named in
    # `graft` replace the fresh ones before step 0
    graft_from: str | None = None
    graft: List[str] = field(default_factory=list)  # names or prefixes, as in `freeze`


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    intervene: InterveneConfig = field(default_factory=InterveneConfig)
    resume: str | None = None  # a run directory to continue from its last checkpoint

    def __post_init__(self) -> None:
        validate_run_config(self)


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(name, value, allowed)


def _positive(section: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(value > 0, f"{section}.{name}", value, "must be > 0")


def _finite(section: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(math.isfinite(value), f"{section}.{name}", value, "must be a finite number")


def validate_model_config(cfg: ModelConfig, section: str = "model") -> None:
    _positive(section, cfg, "n_layers", "n_heads", "d_model", "d_head", "n_ctx", "d_vocab")
    _positive(section, cfg, "init_range")
    _finite(section, cfg, "init_range")
    _check(cfg.positional in POSITIONAL_MODES, f"{section}.positional", cfg.positional,
           f"allowed: {', '.join(POSITIONAL_MODES)}")
    _check(cfg.normalization in NORMALIZATIONS, f"{section}.normalization", cfg.normalization,
           f"allowed: {', '.join(NORMALIZATIONS)}")
    blocked = list(cfg.blocked_composition)
    _check(all(x in COMPOSITION_INPUTS for x in blocked) and len(set(blocked)) == len(blocked),
           f"{section}.blocked_composition", blocked,
           f"a list of distinct inputs among {', '.join(COMPOSITION_INPUTS)}")
    # only layers >= 1 have inputs to block: on one layer the setting would do nothing
    _check(not blocked or cfg.n_layers >= 2, f"{section}.blocked_composition", blocked,
           f"blocks inputs of layers >= 1: needs {section}.n_layers >= 2 (it is {cfg.n_layers})")


def _validate_seeds(cfg: RunConfig) -> None:
    n = cfg.train.n_seeds
    _positive("train", cfg.train, "n_seeds")
    _check(0 <= cfg.seed <= MAX_SEED, "seed", cfg.seed,
           f"must be in [0, {MAX_SEED}] (torch's CPU generator keeps 32 bits of a seed: larger or "
           "negative seeds repeat other runs)")
    last = cfg.seed + n - 1
    _check(last <= MAX_SEED, "train.n_seeds", n,
           f"seeds {cfg.seed}..{last} pass {MAX_SEED}, the largest seed that repeats no other run: "
           f"at most {MAX_SEED - cfg.seed + 1} from seed={cfg.seed}")


def _validate_lengths(d: DataConfig, m: ModelConfig) -> None:
    # data.seq_len follows model.n_ctx by default: name the field the user most likely typed
    follows = d.seq_len == m.n_ctx
    length_field = "model.n_ctx" if follows else "data.seq_len"
    _check(d.seq_len >= MIN_SEQ_LEN, length_field, m.n_ctx if follows else d.seq_len,
           f"must be >= {MIN_SEQ_LEN} (BOS plus two copies of at least {MIN_COPY_LEN} tokens)"
           + ("; data.seq_len follows it" if follows else ""))
    _check(d.seq_len <= m.n_ctx, "data.seq_len", d.seq_len, f"must be <= model.n_ctx ({m.n_ctx})")
    _check(d.min_copy_len >= MIN_COPY_LEN, "data.min_copy_len", d.min_copy_len,
           f"must be >= {MIN_COPY_LEN} (a copy of one token has nothing to predict)")
    _check(d.max_copy_len >= d.min_copy_len, "data.max_copy_len", d.max_copy_len,
           f"must be >= data.min_copy_len ({d.min_copy_len})")
    fits = (d.seq_len - 1) // 2
    follow_note = ", which follows model.n_ctx" if follows else ""
    _check(1 + 2 * d.max_copy_len <= d.seq_len, "data.max_copy_len", d.max_copy_len,
           f"two copies plus BOS must fit in data.seq_len ({d.seq_len}{follow_note}): at most "
           f"{fits}, or {length_field} >= {1 + 2 * d.max_copy_len}")


def _validate_tags(tags: List[str]) -> None:
    for tag in tags:
        _check(isinstance(tag, str) and 1 <= len(tag) <= WANDB_TAG_MAX, "logger.tags", tag,
               f"each W&B tag must be 1 to {WANDB_TAG_MAX} characters (this one has "
               f"{len(str(tag))})")


def parameter_names(cfg: ModelConfig) -> List[str]:
    """The trainable parameters of a model with this config, by TransformerLens name."""
    attn = ["W_Q", "W_K", "W_V", "W_O"] + (["b_Q", "b_K", "b_V", "b_O"] if cfg.attn_bias else [])
    ln = cfg.normalization == "LN"
    names = ["embed.W_E", "pos_embed.W_pos"]
    for layer in range(cfg.n_layers):
        names += [f"blocks.{layer}.ln1.{x}" for x in ("w", "b") if ln]
        names += [f"blocks.{layer}.attn.{x}" for x in attn]
    names += [f"ln_final.{x}" for x in ("w", "b") if ln]
    return names + ["unembed.W_U", "unembed.b_U"]


def select_parameters(names: List[str], entries: List[str]) -> List[str]:
    """The names equal to an entry or under it (`blocks.0` selects `blocks.0.attn.W_Q`)."""
    return [n for n in names if any(n == e or n.startswith(e + ".") for e in entries)]


def parse_head(label: str, model: ModelConfig, field_name: str) -> tuple:
    """`(layer, head)` of a label `L{layer}H{head}` that exists in this model, else ConfigError."""
    match = HEAD_LABEL.fullmatch(str(label))
    ok = match is not None and (int(match[1]) < model.n_layers and int(match[2]) < model.n_heads)
    _check(ok, field_name, label, f"a head label L{{layer}}H{{head}}, layer in "
           f"0..{model.n_layers - 1}, head in 0..{model.n_heads - 1}")
    return int(match[1]), int(match[2])


def validate_intervene_config(iv: InterveneConfig, model: ModelConfig) -> None:
    for label, pattern in dict(iv.clamp_pattern).items():
        parse_head(label, model, "intervene.clamp_pattern")
        _check(pattern in CLAMP_PATTERNS, f"intervene.clamp_pattern.{label}", pattern,
               f"allowed: {', '.join(CLAMP_PATTERNS)}")
    for label in iv.ablate:
        parse_head(label, model, "intervene.ablate")
    _check(iv.ablation in ABLATIONS, "intervene.ablation", iv.ablation,
           f"allowed: {', '.join(ABLATIONS)}")
    names = parameter_names(model)
    layers = sorted({n.rsplit(".", 1)[0] for n in names} | {f"blocks.{i}" for i in
                                                           range(model.n_layers)})
    for key in ("freeze", "graft"):
        for entry in getattr(iv, key):
            _check(bool(select_parameters(names, [entry])), f"intervene.{key}", entry,
                   f"a parameter name or prefix: {', '.join(layers)} or a name under one")
    _check(iv.freeze_from_step >= 0, "intervene.freeze_from_step", iv.freeze_from_step,
           "must be >= 0")
    _check(iv.graft_from is None or str(iv.graft_from).strip() != "", "intervene.graft_from",
           iv.graft_from, "a run directory or checkpoint file (or null)")
    _check(not iv.graft or iv.graft_from is not None, "intervene.graft_from", iv.graft_from,
           f"a run directory to copy intervene.graft={list(iv.graft)} from")
    _check(bool(iv.graft) or iv.graft_from is None, "intervene.graft", list(iv.graft),
           "the parameters to copy from intervene.graft_from, e.g. [blocks.0]")


def validate_run_config(cfg: RunConfig) -> None:
    """Check every value against what it means; raise `ConfigError` on the first bad one."""
    validate_model_config(cfg.model)
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.train
    _check(cfg.device in DEVICES, "device", cfg.device, f"allowed: {', '.join(DEVICES)}")
    _validate_seeds(cfg)
    _check(d.kind in DATA_KINDS, "data.kind", d.kind, f"allowed: {', '.join(DATA_KINDS)}")
    _positive("data", d, "seq_len", "batch_size", "eval_batch_size", "min_copy_len")
    # with one token besides BOS every sequence is constant: no copy to find, a zero first-copy
    # loss to divide by
    _check(d.d_vocab >= 3, "data.d_vocab", d.d_vocab, "must be >= 3 (BOS plus two tokens)")
    _check(d.eval_batch_size >= 8, "data.eval_batch_size", d.eval_batch_size,
           "must be >= 8 (the probe holds copies at up to four lengths, twice over)")
    _check(d.d_vocab <= m.d_vocab, "data.d_vocab", d.d_vocab,
           f"must be <= model.d_vocab ({m.d_vocab})")
    _validate_lengths(d, m)
    if d.kind == "bigram":  # the field means nothing to the uniform background
        _positive("data", d, "bigram_successors")
        _check(d.bigram_successors < d.d_vocab, "data.bigram_successors", d.bigram_successors,
               f"must be < data.d_vocab ({d.d_vocab})")
    _positive("optim", o, "lr")
    _finite("optim", o, "lr", "weight_decay", "grad_clip")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    for name in ("beta1", "beta2"):
        value = getattr(o, name)
        _check(0 <= value < 1, f"optim.{name}", value, "must be in [0, 1)")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
    _check(o.schedule in SCHEDULES, "optim.schedule", o.schedule,
           f"allowed: {', '.join(SCHEDULES)}")
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
    _check(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, "must be >= 0 (0 disables)")
    _positive("train", t, "steps", "eval_every", "checkpoint_every")
    _check(t.stop_after_formed is None or t.stop_after_formed >= 0, "train.stop_after_formed",
           t.stop_after_formed, "a number of steps >= 0, or null (never stop early)")
    from .snapshots import SCHEDULE_FORMS, schedule_problem

    _check(schedule_problem(t.snapshots) is None, "train.snapshots", t.snapshots,
           f"allowed: {SCHEDULE_FORMS}")
    _check(0 < t.induction_threshold <= 1, "train.induction_threshold", t.induction_threshold,
           "must be in (0, 1]")
    _check(t.loss_ratio_threshold > 0, "train.loss_ratio_threshold", t.loss_ratio_threshold,
           "must be > 0")
    _check(cfg.resume is None or str(cfg.resume).strip() != "", "resume", cfg.resume,
           "a run directory (or null for a fresh run)")
    _check(cfg.logger.mode in LOGGER_MODES, "logger.mode", cfg.logger.mode,
           f"allowed: {', '.join(LOGGER_MODES)}")
    validate_intervene_config(cfg.intervene, cfg.model)
    _validate_tags(list(cfg.logger.tags))


def config_warnings(cfg: RunConfig) -> List[str]:
    """Values that work but probably not as meant (the run goes on)."""
    warnings = []
    if cfg.optim.warmup_steps > cfg.train.steps:
        warnings.append(f"optim.warmup_steps={cfg.optim.warmup_steps} is longer than the run "
                        f"(train.steps={cfg.train.steps}): the learning rate never reaches "
                        f"optim.lr={cfg.optim.lr}")
    return warnings


_WARNED: set = set()


def warn_once(cfg: RunConfig) -> List[str]:
    """Print each of `config_warnings(cfg)` to stderr, once per process; return those printed."""
    printed = [w for w in config_warnings(cfg) if w not in _WARNED]
    for warning in printed:
        _WARNED.add(warning)
        print(f"warning: {warning}", file=sys.stderr)
    return printed


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def run_config_from_dict(data: dict) -> RunConfig:
    """Rebuild a `RunConfig` from `to_dict` output (as saved in config.yaml or a checkpoint)."""
    sections = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    classes = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig,
               "train": TrainConfig, "logger": LoggerConfig, "intervene": InterveneConfig}
    kwargs = {}
    for key, value in data.items():
        if key not in sections:
            raise ConfigError(key, value, f"unknown key; known: {', '.join(sections)}")
        kwargs[key] = classes[key](**value) if key in classes else value
    return RunConfig(**kwargs)
