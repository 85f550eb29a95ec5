"""`scripts/bench.py --quick` runs and writes every field the README table quotes (no speeds are
asserted: timings belong to the benchmark, not to tests)."""

import json
import math
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT, child_env

VARIANT_FIELDS = {"step_ms", "tokens_per_second", "gflops", "fraction_of_matmul_peak"}


@pytest.mark.slow  # end-to-end: a real benchmark
def test_quick_benchmark_writes_its_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--device", "cpu",
           "--threads", "1", "--seeds", "1,2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=child_env(),
                          cwd=ROOT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    for key in ("date", "command", "device", "machine", "load_average_before", "flops_formula",
                "load_average_after"):
        assert key in result, key
    assert result["quick"] is True and result["complete"] is True and result["device"] == "cpu"
    assert result["matmul_peak_gflops"]["1"]["fp32"] > 0

    (model,) = result["models"]
    assert model["threads"] == 1 and model["tokens_per_step"] == 8 * 32
    # the formula counts causal attention; torch's counter sees the full score matrix
    assert 0 < model["flops_per_token"] <= model["flops_per_token_counted"]
    variants = model["variants"]
    assert {"tinyinduct", "tinyinduct_explicit"} <= set(variants)
    for fields in variants.values():
        assert VARIANT_FIELDS <= set(fields) and fields["tokens_per_second"] > 0
    if result["machine"]["transformer_lens"]:
        assert "transformer_lens" in variants and model["speedup_vs_transformer_lens"] > 0
    else:
        assert "TransformerLens is not installed" in proc.stdout

    (profile,) = result["profile"]  # where the step goes, per part, adding up to the step
    assert profile["config"] == "tiny" and profile["threads"] == 1
    parts = profile["parts"]
    assert set(parts) == {"embedding", "projections", "attention", "unembed_loss", "optimizer",
                          "other"}
    assert sum(r["share"] for r in parts.values()) == pytest.approx(1.0)
    assert sum(r["ms"] for r in parts.values()) == pytest.approx(profile["step_ms"])
    for name, r in parts.items():
        assert 0 <= r["share"] <= 1, name
        if name in ("projections", "attention", "unembed_loss"):  # the parts doing matmuls
            assert r["gflops"] > 0 and r["fraction_of_matmul_peak"] == pytest.approx(
                r["gflops"] / result["matmul_peak_gflops"]["1"]["fp32"])
            assert r["fraction_of_shape_matmul"] == pytest.approx(
                r["gflops"] / r["shape_matmul_gflops"])
            # inside its matmul kernels for part of its time, faster there than over all of it
            assert 0 < r["kernel_share"] <= 1
            assert r["kernel_gflops"] == pytest.approx(r["gflops"] / r["kernel_share"])
        else:
            assert r["gflops"] is None and r["shape_matmul_gflops"] is None
    # their FLOPs are the formula's terms: GFLOP/s x time adds up to the model's FLOPs
    done = sum(r["gflops"] * r["ms"] / 1e3 for r in parts.values() if r["gflops"])
    assert done * 1e9 == pytest.approx(model["flops_per_token"] * model["tokens_per_step"])
    # the floor: a tiny step's fixed cost, then each matmul part's FLOPs at the matmul peak
    # and one exponential per logit with a target (8 x 31 x 64) and per unmasked attention
    # score (2 layers x 8 x 2 heads x 32 x 33 / 2) at the measured rate
    floor = profile["floor"]
    assert floor["exponentials"] == {"unembed_loss": 8 * 31 * 64,
                                     "attention": 2 * 8 * 2 * 32 * 33 // 2}
    assert floor["fixed_ms"] > 0 and floor["exp_ns_per_element"] > 0
    assert set(floor["parts_ms"]) == {"projections", "attention", "unembed_loss"}
    for name, floor_ms in floor["parts_ms"].items():
        r = parts[name]
        matmul_ms = r["gflops"] * r["ms"] / result["matmul_peak_gflops"]["1"]["fp32"]
        exp_ms = floor["exponentials"].get(name, 0) * floor["exp_ns_per_element"] / 1e6
        assert floor_ms == pytest.approx(matmul_ms + exp_ms) and r["floor_ms"] == floor_ms
    assert floor["total_ms"] == pytest.approx(floor["fixed_ms"] + sum(floor["parts_ms"].values()))

    # torch.compile: both compiles timed, both steps, and when it pays (if it is faster)
    (compiled,) = result["compile"]
    assert compiled["config"] == "tiny" and compiled["compile_seconds"] > 0
    assert compiled["recompile_seconds"] > 0 and compiled["compiled_step_ms"] > 0
    saved_s = (compiled["tinyinduct_step_ms"] - compiled["compiled_step_ms"]) / 1e3
    if saved_s > 0:
        assert compiled["pays_after_steps"] == pytest.approx(
            compiled["compile_seconds"] / saved_s)
    else:
        assert compiled["pays_after_steps"] is None

    (attention,) = result["attention"]  # every kernel at the tiny config's shape (head size 8)
    assert attention["shape"] == [8, 2, 32, 8] and attention["chosen"] == "native"
    assert attention["flash_ms"] > 0 and attention["matmuls_ms"] > 0
    assert attention["native_ms"] > 0

    assert [r["n_seeds"] for r in result["many_seeds"]] == [1, 2]
    for row in result["many_seeds"]:
        assert row["aggregate_tokens_per_second"] > 0 and row["speedup_vs_sequential"] > 0
        assert row["sequential_tokens_per_second"] > 0

    t = result["time_to_induction"]
    assert t["steps_run"] == 40 and 0 < t["eval_fraction_of_wall"] < 1
    for key in ("phase_change_step", "phase_change_tokens", "phase_change_training_seconds",
                "induction_formed", "eval_seconds", "wall_seconds", "tokens_per_second"):
        assert key in t, key
    assert math.isfinite(t["best_induction_score"])


def test_bad_arguments_are_refused_clearly(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--parts", "everything",
           "--out", str(tmp_path / "x.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=child_env(),
                          cwd=ROOT, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0 and "--parts" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_readme_bench_commands_run_in_quick_mode(tmp_path):
    """Every CPU benchmark command of the README runs as written (with --quick shapes, on one
    thread: a second thread count would only repeat every part, compiles included)."""
    from test_readme import shell_commands

    commands = [c for c in shell_commands()
                if c.startswith("python scripts/bench.py") and "cuda" not in c]
    assert len(commands) >= 2
    for i, command in enumerate(commands):
        words = shlex.split(command)[2:]
        out = tmp_path / f"{i}.json"
        words[words.index("--out") + 1] = str(out)
        cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), *words, "--quick",
               "--device", "cpu", "--seeds", "1,2", "--threads", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=child_env(),
                              cwd=ROOT, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"{command}\n{proc.stderr}"
        assert json.loads(out.read_text())["complete"] is True, command
