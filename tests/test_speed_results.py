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
                                       "fraction_of_matmul_peak": 31.0 / 176},
                        "tinyinduct_explicit": {"tokens_per_second": 50_000.0},
                        "transformer_lens": {"tokens_per_second": 35_000.0}}}],
        "profile": [{"config": "default", "threads": 1, "step_ms": 29.25, "parts": {
            "embedding": part(0.01), "projections": part(0.3, 88.0, 0.5, 0.75, (0.5, 176.0)),
            "attention": part(0.28, 17.6, 0.1, 0.2, (0.4, 44.0)),
            "unembed_loss": part(0.31, 88.0, 0.5, 0.9, (0.625, 140.8)),
            "optimizer": part(0.04), "other": part(0.06)}}],
        "attention": [{"config": "default", "threads": 2, "shape": [32, 4, 64, 16],
                       "flash_ms": 5.634, "matmuls_ms": 3.481, "chosen": "matmuls"}],
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
    assert "| default | 2 | 128 x 64 x 16 | 5.63 ms | 3.48 ms | matmuls |" in text
    assert ("| default | 1 | 50% of its time: 176 GFLOP/s, 100% of peak | 40% of its time: 44 "
            "GFLOP/s, 25% of peak | 62% of its time: 141 GFLOP/s, 80% of peak |") in text
    assert ("crossed 0.7 at step 1,050 (2.15 M tokens, 12.5 s of training) and ended at 0.85; "
            "evaluation every 50 steps took 5.6% of the run's wall time (171,553 training "
            "tokens/s).") in text


def test_parts_not_measured_leave_their_tables_out():
    bench = bench_json()
    bench.update(models=[], many_seeds=[], attention=[], time_to_induction=None)
    text = render("speed", {"command": "python scripts/reproduce.py --only speed",
                            "bench": bench})
    assert "Training step" not in text and "Many seeds" not in text
    assert "Attention, forward + backward" not in text
    assert "Where tinyinduct's step goes" in text
