"""docs/speed.md's tables, from the JSON file `scripts/bench.py` writes (committed as
docs/results/speed.json by `scripts/reproduce.py --only speed`, as
{"command": ..., "bench": ...})."""

from __future__ import annotations

from typing import List

from .stats import markdown_rows

PROFILE_PARTS = ("embedding", "projections", "attention", "unembed_loss", "optimizer", "other")
PART_NAMES = {"unembed_loss": "unembedding + loss"}


def _provenance(results: dict) -> str:
    bench = results["bench"]
    m = bench.get("machine") or {}
    what = ", ".join(str(v) for v in (
        m.get("cpu") and f"{m['cpu']} ({m.get('cpu_count')} cores)",
        m.get("gpu"), m.get("torch") and f"torch {m['torch']}",
        m.get("transformer_lens") and f"TransformerLens {m['transformer_lens']}") if v)
    load = [bench.get("load_average_before"), bench.get("load_average_after")]
    load_text = "" if None in load else (
        f"; load average {load[0][0]:.1f} before, {load[1][0]:.1f} after (1 min)")
    return (f"Measured by `{results['command']}` (`scripts/bench.py` with its defaults), "
            f"{bench['date'][:10]}, on {what}{load_text}.")


def _peak_text(bench: dict) -> str:
    peaks = bench.get("matmul_peak_gflops") or {}
    return ", ".join(f"{p['fp32']:.0f} GFLOP/s at {n} thread{'s' if n != '1' else ''}"
                     for n, p in peaks.items())


def _rate(variants: dict, name: str) -> str:
    return f"{variants[name]['tokens_per_second']:,.0f}" if name in variants else "-"


def step_table(bench: dict) -> str:
    columns = ("config", "threads", "tinyinduct", "explicit path", "TransformerLens",
               "tinyinduct / TL", "FLOPs/token", "tinyinduct GFLOP/s")
    rows = []
    for r in bench["models"]:
        v = r["variants"]
        tl = r.get("speedup_vs_transformer_lens")
        ours = v["tinyinduct"]
        rows.append({"config": r["config"], "threads": str(r["threads"]),
                     "tinyinduct": _rate(v, "tinyinduct"),
                     "explicit path": _rate(v, "tinyinduct_explicit"),
                     "TransformerLens": _rate(v, "transformer_lens"),
                     "tinyinduct / TL": "-" if tl is None else f"{tl:.2f}x",
                     "FLOPs/token": f"{r['flops_per_token'] / 1e3:,.0f}k",
                     "tinyinduct GFLOP/s": f"{ours['gflops']:.1f} "
                                           f"({100 * ours['fraction_of_matmul_peak']:.0f}%)"})
    return markdown_rows(rows, columns)


def profile_table(bench: dict) -> str:
    """Per config and thread count: the step's time, then each part's share, and for the matmul
    parts their GFLOP/s as a share of the run's matmul peak and of a matmul of their own shape."""
    columns = ("config", "threads", "step", *(PART_NAMES.get(p, p) for p in PROFILE_PARTS))
    rows = []
    for r in bench["profile"]:
        row = {"config": r["config"], "threads": str(r["threads"]),
               "step": f"{r['step_ms']:.1f} ms"}
        for p in PROFILE_PARTS:
            part = r["parts"][p]
            text = f"{100 * part['share']:.0f}%"
            if part.get("gflops") is not None:
                text += (f": {part['gflops']:.0f} GFLOP/s, "
                         f"{100 * part['fraction_of_matmul_peak']:.0f}% of peak")
                if part.get("fraction_of_shape_matmul") is not None:
                    text += f", {100 * part['fraction_of_shape_matmul']:.0f}% of its shape's"
            row[PART_NAMES.get(p, p)] = text
        rows.append(row)
    return markdown_rows(rows, columns)


def kernels_table(bench: dict) -> str:
    """Per config and thread count, for each part made of matmuls: the share of its time inside
    its matmul kernels and the rate they reach there, against the run's matmul peak."""
    parts = [p for p in PROFILE_PARTS
             if any(r["parts"][p].get("kernel_share") is not None for r in bench["profile"])]
    columns = ("config", "threads", *(PART_NAMES.get(p, p) for p in parts))
    rows = []
    for r in bench["profile"]:
        row = {"config": r["config"], "threads": str(r["threads"])}
        for p in parts:
            part = r["parts"][p]
            row[PART_NAMES.get(p, p)] = "-" if part.get("kernel_share") is None else (
                f"{100 * part['kernel_share']:.0f}% of its time: {part['kernel_gflops']:.0f} "
                f"GFLOP/s, {100 * part['kernel_fraction_of_matmul_peak']:.0f}% of peak")
        rows.append(row)
    return markdown_rows(rows, columns)


def _half_transformer_lens_ms(bench: dict, config: str, threads: int) -> float | None:
    """Half of TransformerLens' step in the same run: the step that would be 2x it."""
    for r in bench.get("models") or []:
        tl = r["variants"].get("transformer_lens")
        if r["config"] == config and r["threads"] == threads and tl and "step_ms" in tl:
            return tl["step_ms"] / 2
    return None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


FLOOR_PARTS = ("projections", "attention", "unembed_loss")
REST_PARTS = ("embedding", "optimizer", "other")


def floor_table(bench: dict) -> str:
    """Per config and thread count: the step, its floor (`bench.step_floor`) and half of
    TransformerLens' step, then each matmul part's time beside its own floor, and the rest."""
    columns = ("config", "threads", "step", "floor: fixed + matmuls + exponentials",
               "step at 2x TransformerLens", *(PART_NAMES.get(p, p) for p in FLOOR_PARTS),
               "the rest")
    rows = []
    for r in bench["profile"]:
        floor = r.get("floor")
        if not floor:
            continue
        parts = r["parts"]
        row = {"config": r["config"], "threads": str(r["threads"]),
               "step": _ms(r["step_ms"]),
               "floor: fixed + matmuls + exponentials":
                   f"{floor['total_ms']:.1f} ms: {floor['fixed_ms']:.1f} + "
                   f"{floor['total_ms'] - floor['fixed_ms']:.1f}",
               "step at 2x TransformerLens": _ms(_half_transformer_lens_ms(
                   bench, r["config"], r["threads"])),
               "the rest": _ms(sum(parts[p]["share"] for p in REST_PARTS) * r["step_ms"])}
        for p in FLOOR_PARTS:
            part_floor = floor["parts_ms"].get(p)
            row[PART_NAMES.get(p, p)] = (_ms(parts[p]["share"] * r["step_ms"]) + (
                "" if part_floor is None else f" (floor {part_floor:.1f})"))
        rows.append(row)
    return markdown_rows(rows, columns)


def compile_table(bench: dict) -> str:
    columns = ("config", "threads", "compile", "compile again", "compiled step",
               "tinyinduct's step", "pays for itself after")

    def pays(steps: float | None, again: float | None) -> str:
        if steps is None:
            return "never (slower)"
        return f"{steps:,.0f} steps ({again:,.0f} compiled again)"

    rows = [{"config": r["config"], "threads": str(r["threads"]),
             "compile": f"{r['compile_seconds']:.1f} s",
             "compile again": f"{r['recompile_seconds']:.1f} s",
             "compiled step": _ms(r["compiled_step_ms"]),
             "tinyinduct's step": _ms(r["tinyinduct_step_ms"]),
             "pays for itself after": pays(r["pays_after_steps"],
                                           r["pays_after_steps_recompiled"])}
            for r in bench["compile"]]
    return markdown_rows(rows, columns)


def attention_table(bench: dict) -> str:
    columns = ("config", "threads", "sequences x positions x head size", "flash kernel",
               "batched matmuls", "native kernel", "chosen")
    # results written before the native kernel have no "native_ms"; where it cannot run, None
    rows = [{"config": r["config"], "threads": str(r["threads"]),
             "sequences x positions x head size":
                 f"{r['shape'][0] * r['shape'][1]} x {r['shape'][2]} x {r['shape'][3]}",
             "flash kernel": f"{r['flash_ms']:.2f} ms",
             "batched matmuls": f"{r['matmuls_ms']:.2f} ms",
             "native kernel": ("-" if r.get("native_ms") is None
                               else f"{r['native_ms']:.2f} ms"),
             "chosen": r["chosen"]} for r in bench["attention"]]
    return markdown_rows(rows, columns)


def seeds_table(bench: dict) -> str:
    ks = sorted({r["n_seeds"] for r in bench["many_seeds"]})
    columns = ("threads", "batch", *(f"K = {k}" for k in ks))
    grouped: dict = {}
    for r in bench["many_seeds"]:
        grouped.setdefault((r["threads"], r["batch_size"]), {})[r["n_seeds"]] = r
    rows = [{"threads": str(t), "batch": str(b),
             **{f"K = {k}": f"{by_k[k]['speedup_vs_sequential']:.2f}x" if k in by_k else "-"
                for k in ks}} for (t, b), by_k in grouped.items()]
    return markdown_rows(rows, columns)


def render_speed(results: dict) -> str:
    """{"command": the command that ran the benchmark, "bench": the JSON it wrote}."""
    bench = results["bench"]
    parts: List[str] = [_provenance(results)]
    if bench.get("models"):
        parts += [f"Training step, tokens/s (medians of interleaved blocks; GFLOP/s by the "
                  f"formula above, as a share of the matmul peak measured in the same run: "
                  f"{_peak_text(bench)}):", step_table(bench), target_line(bench)]
    if bench.get("profile"):
        parts += ["Where tinyinduct's step goes (`--parts profile`): each part's share of the "
                  "step, and for the parts made of matmuls their GFLOP/s, as a share of the "
                  "matmul peak and of one plain matmul of the part's own shape:",
                  profile_table(bench)]
        if any(part.get("kernel_share") is not None
               for r in bench["profile"] for part in r["parts"].values()):
            parts += ["Inside those parts: the share of each part's time spent in its matmul "
                      "kernels (for attention, the native or flash kernel it runs), and their "
                      "rate there; the rest is copies into layouts, elementwise work such as "
                      "the softmax, allocation and the dispatch of small operations:",
                      kernels_table(bench)]
        if any(r.get("floor") for r in bench["profile"]):
            parts += ["The step's floor: what it would take if the fixed cost of its operations "
                      "were a tiny model's step (d_model 8, head size 8, n_ctx 12, batch 1, the "
                      "same layers and heads), every matmul ran at the run's matmul peak and every "
                      "exponential the softmaxes need (one per logit with a "
                      "target, one per unmasked attention score) at the rate of `torch.exp`, "
                      "all timed beside the step; nothing is counted for copies, layouts or "
                      "other elementwise work. Beside it, half of TransformerLens' step from "
                      "the first table, and each part's time with its own floor:",
                      floor_table(bench)]
    if bench.get("attention"):
        parts += ["Attention, forward + backward of one layer at each config's shape, by each "
                  "kernel `causal_attention` chooses between (tinyinduct's native kernel where "
                  "it runs) and the one it runs there:",
                  attention_table(bench)]
    if bench.get("compile"):
        parts += ["`torch.compile` of the model's loss (forward and backward; the model takes "
                  "its explicit path under compile) against tinyinduct's eager step: the first "
                  "compiled step with empty caches, a second model compiled in the same "
                  "process (caches warm), both steps' medians, and the steps after which the "
                  "compile has paid for itself:", compile_table(bench)]
    if bench.get("many_seeds"):
        parts += ["Many seeds at once: aggregate tokens/s of K stacked seeds over K sequential "
                  "runs (default model; K = 1 is the stacked code against the plain step):",
                  seeds_table(bench)]
    t = bench.get("time_to_induction")
    if t:
        crossed = ("did not cross 0.7" if t["phase_change_step"] is None else
                   f"crossed 0.7 at step {t['phase_change_step']:,} "
                   f"({t['phase_change_tokens'] / 1e6:.2f} M tokens, "
                   f"{t['phase_change_training_seconds']:.1f} s of training)")
        parts.append(f"Time to induction of the default config ({t['threads']} threads, in the "
                     f"same run): the best layer-1 induction score {crossed} and ended at "
                     f"{t['best_induction_score']:.2f}; evaluation every {t['eval_every']} steps "
                     f"took {100 * t['eval_fraction_of_wall']:.1f}% of the run's wall time "
                     f"({t['tokens_per_second']:,.0f} training tokens/s).")
    return "\n\n".join(parts)


def summary_table(bench: dict) -> str:
    """The README's speed table: per config and thread count, tinyinduct against
    TransformerLens, its step beside its floor and half of TransformerLens' step, and the rate
    of the matmul kernels of the parts made of large matmuls (their share of the matmul peak)."""
    columns = ("config", "threads", "tinyinduct / TransformerLens", "step", "floor",
               "step at 2x TransformerLens", "matmul kernels (projections, unembedding)")
    profiles = {(r["config"], r["threads"]): r for r in bench.get("profile") or []}
    rows = []
    for r in bench["models"]:
        profile = profiles.get((r["config"], r["threads"])) or {}
        floor = (profile.get("floor") or {}).get("total_ms")
        tl = r.get("speedup_vs_transformer_lens")
        kernels = "-"
        if profile and all(profile["parts"][p].get("kernel_fraction_of_matmul_peak") is not None
                           for p in ("projections", "unembed_loss")):
            kernels = ", ".join(
                f"{100 * profile['parts'][p]['kernel_fraction_of_matmul_peak']:.0f}%"
                for p in ("projections", "unembed_loss")) + " of peak"
        rows.append({"config": r["config"], "threads": str(r["threads"]),
                     "tinyinduct / TransformerLens": "-" if tl is None else f"{tl:.2f}x",
                     "step": _ms(r["variants"]["tinyinduct"].get("step_ms")),
                     "floor": _ms(floor),
                     "step at 2x TransformerLens": _ms(_half_transformer_lens_ms(
                         bench, r["config"], r["threads"])),
                     "matmul kernels (projections, unembedding)": kernels})
    return markdown_rows(rows, columns)


def target_line(bench: dict) -> str:
    """Where the run met 2x TransformerLens and where it did not, config by config."""
    by_config: dict = {}
    for r in bench["models"]:
        if r.get("speedup_vs_transformer_lens") is not None:
            by_config.setdefault(r["config"], []).append(
                (r["threads"], r["speedup_vs_transformer_lens"]))

    def listed(rows) -> str:
        return ", ".join(f"{t} thread{'s' * (t > 1)} {x:.2f}x" for t, x in rows)

    met = [f"{c} ({listed(rows)})" for c, rows in by_config.items()
           if all(x >= 2 for _, x in rows)]
    missed = [f"{c} ({listed(rows)})" for c, rows in by_config.items()
              if any(x < 2 for _, x in rows)]
    if not by_config:
        return "TransformerLens was not installed for this run: no ratio to report."
    return (f"At least 2x TransformerLens on every thread count: {'; '.join(met) or 'none'}. "
            f"Below 2x on at least one: {'; '.join(missed) or 'none'}.")


def render_speed_summary(results: dict) -> str:
    """{"speed": the result file of `reproduce.py --only speed`}: the README's table, and where
    it met 2x TransformerLens."""
    speed = results["speed"]
    return "\n\n".join([_provenance(speed), summary_table(speed["bench"]),
                         target_line(speed["bench"])])
