"""docs/speed.md's tables are made from the benchmark's JSON: a hand-built result renders to
the numbers it holds."""

from tinyinduct.results import render


def bench_json() -> dict:
    def part(share, gflops=None, peak=None, shape=None, kernel=None):
        return {"share": share, "gflops": gflops, "fraction_of_matmul_peak": peak,
                "fraction_of_shape_matmul": shape,
                "kernel_share": kernel and kernel[0], "kernel_gflops": kernel and kernel[1],
                "kernel_fraction_of_matmul_peak": kernel and kernel[1] / 176}

    return {
        "date": "2026-11-30T14:00:00+00:00", "command": "bench.py --out x.json",
        "machine": {"cpu": "Some CPU", "cpu_count": 2, "torch": "2.13.0+cpu",
                    "transformer_lens": "3.9.0"},
        "load_average_before": [0.5, 0.4, 0.3], "load_average_after": [1.2, 0.8, 0.4],
        "matmul_peak_gflops": {"1": {"fp32": 176.0}, "2": {"fp32": 352.0}},
        "models": [{"config": "default", "threads": 1, "flops_per_token": 443_000,
                    "speedup_vs_transformer_lens": 70_000 / 35_000 * 1.0,
                    "variants": {
                        "tinyinduct": {"tokens_per_second": 70_000.0, "gflops": 31.0,
                                       "fraction_of_matmul_peak": 31.0 / 176,
                                       "step_ms": 29.26},
                        "tinyinduct_explicit": {"tokens_per_second": 50_000.0},
                        "transformer_lens": {"tokens_per_second": 35_000.0,
                                             "step_ms": 58.52}}}],
        "profile": [{"config": "default", "threads": 1, "step_ms": 29.25, "parts": {
            "embedding": part(0.01), "projections": part(0.3, 88.0, 0.5, 0.75, (0.5, 176.0)),
            "attention": part(0.28, 17.6, 0.1, 0.2, (0.4, 44.0)),
            "unembed_loss": part(0.31, 88.0, 0.5, 0.9, (0.625, 140.8)),
            "optimizer": part(0.04), "other": part(0.06)},
            "floor": {"fixed_ms": 4.0, "total_ms": 16.5, "exp_ns_per_element": 1.1,
                      "parts_ms": {"projections": 5.0, "attention": 1.5, "unembed_loss": 6.0}}}],
        "compile": [{"config": "default", "threads": 1, "compile_seconds": 24.0,
                     "recompile_seconds": 1.0, "compiled_step_ms": 40.0,
                     "tinyinduct_step_ms": 30.0, "pays_after_steps": None,
                     "pays_after_steps_recompiled": None},
                    {"config": "default", "threads": 2, "compile_seconds": 20.0,
                     "recompile_seconds": 2.0, "compiled_step_ms": 20.0,
                     "tinyinduct_step_ms": 22.5, "pays_after_steps": 8000.0,
                     "pays_after_steps_recompiled": 800.0}],
        "attention": [{"config": "default", "threads": 2, "shape": [32, 4, 64, 16],
                       "flash_ms": 5.634, "matmuls_ms": 3.481, "native_ms": 1.904,
                       "chosen": "native"},
                      # written where the native kernel could not run
                      {"config": "default", "threads": 1, "shape": [32, 4, 64, 16],
                       "flash_ms": 5.1, "matmuls_ms": 5.2, "native_ms": None,
                       "chosen": "flash"}],
        "many_seeds": [{"threads": 1, "batch_size": 8, "n_seeds": k, "speedup_vs_sequential": x}
                       for k, x in ((1, 0.97), (8, 1.12))],
        "time_to_induction": {"threads": 2, "phase_change_step": 1050,
                              "phase_change_tokens": 2_150_400,
                              "phase_change_training_seconds": 12.5,
                              "best_induction_score": 0.85, "eval_every": 50,
                              "eval_fraction_of_wall": 0.056, "tokens_per_second": 171_553},
    }


def test_speed_tables_show_the_benchmarks_numbers():
    text = render("speed", {"command": "python scripts/reproduce.py --only speed",
                            "bench": bench_json()})
    assert text.startswith("Measured by `python scripts/reproduce.py --only speed` "
                           "(`scripts/bench.py` with its defaults), 2026-11-30, on Some CPU (2 "
                           "cores), torch 2.13.0+cpu, TransformerLens 3.9.0; load average 0.5 "
                           "before, 1.2 after (1 min).")
    assert "176 GFLOP/s at 1 thread, 352 GFLOP/s at 2 threads" in text
    assert "| default | 1 | 70,000 | 50,000 | 35,000 | 2.00x | 443k | 31.0 (18%) |" in text
    assert ("| default | 1 | 29.2 ms | 1% | 30%: 88 GFLOP/s, 50% of peak, 75% of its shape's | "
            "28%: 18 GFLOP/s, 10% of peak, 20% of its shape's | 31%: 88 GFLOP/s, 50% of peak, "
            "90% of its shape's | 4% | 6% |") in text
    assert "| 1 | 8 | 0.97x | 1.12x |" in text
    assert "| default | 2 | 128 x 64 x 16 | 5.63 ms | 3.48 ms | 1.90 ms | native |" in text
    assert "| default | 1 | 128 x 64 x 16 | 5.10 ms | 5.20 ms | - | flash |" in text
    assert ("| default | 1 | 50% of its time: 176 GFLOP/s, 100% of peak | 40% of its time: 44 "
            "GFLOP/s, 25% of peak | 62% of its time: 141 GFLOP/s, 80% of peak |") in text
    # the floor beside the step, half of TransformerLens' step, each part beside its floor
    # (29.25 ms x shares: 8.8, 8.2, 9.1 ms; the rest 1 + 4 + 6 % = 3.2 ms)
    assert ("| default | 1 | 29.2 ms | 16.5 ms: 4.0 + 12.5 | 29.3 ms | 8.8 ms (floor 5.0) | "
            "8.2 ms (floor 1.5) | 9.1 ms (floor 6.0) | 3.2 ms |") in text
    assert ("| default | 1 | 24.0 s | 1.0 s | 40.0 ms | 30.0 ms | never (slower) |") in text
    assert ("| default | 2 | 20.0 s | 2.0 s | 20.0 ms | 22.5 ms | 8,000 steps (800 compiled "
            "again) |") in text
    assert ("crossed 0.7 at step 1,050 (2.15 M tokens, 12.5 s of training) and ended at 0.85; "
            "evaluation every 50 steps took 5.6% of the run's wall time (171,553 training "
            "tokens/s).") in text


def test_parts_not_measured_leave_their_tables_out():
    bench = bench_json()
    bench.update(models=[], many_seeds=[], attention=[], compile=[], time_to_induction=None)
    text = render("speed", {"command": "python scripts/reproduce.py --only speed",
                            "bench": bench})
    assert "Training step" not in text and "Many seeds" not in text
    assert "Attention, forward + backward" not in text and "torch.compile" not in text
    assert "Where tinyinduct's step goes" in text


def test_readme_speed_table_puts_the_floor_beside_the_step():
    text = render("speed_summary", {"speed": {"command": "python scripts/reproduce.py --only "
                                                        "speed", "bench": bench_json()}})
    assert text.startswith("Measured by `python scripts/reproduce.py --only speed`")
    # 2.00x; the step 29.26 ms; the profile's floor 16.5 ms; half of TL's 58.52 ms; the matmul
    # kernels of the projections (176 / 176) and of the unembedding (140.8 / 176)
    assert ("| default | 1 | 2.00x | 29.3 ms | 16.5 ms | 29.3 ms | 100%, 80% of peak |"
            in text)


def test_readme_speed_table_says_where_2x_was_met():
    """Met: every thread count at 2x or more (2.00x counts); missed: any one below."""
    bench = bench_json()
    default = bench["models"][0]
    bench["models"] += [{**default, "threads": 2, "speedup_vs_transformer_lens": 1.95},
                        {**default, "config": "long", "speedup_vs_transformer_lens": 4.5}]
    text = render("speed_summary", {"speed": {"command": "python scripts/reproduce.py --only "
                                                        "speed", "bench": bench}})
    assert text.endswith("At least 2x TransformerLens on every thread count: long (1 thread "
                         "4.50x). Below 2x on at least one: default (1 thread 2.00x, 2 threads "
                         "1.95x).")
