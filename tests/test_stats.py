"""Survival statistics against published worked examples, and runs turned into formation times.

Freireich et al. (1963), 6-mercaptopurine vs placebo in acute leukemia: weeks in remission, the
classic Kaplan-Meier and log-rank example (Cox 1972; Kleinbaum & Klein, "Survival Analysis",
ch. 2; R's survival package gives chi2 16.8 on 1 df, p = 4.17e-5). Wilson intervals from
Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table II (method 3).
"""

import math

import pytest

from tinyinduct.stats import (
    censoring_lines,
    formation_time,
    k_vs_q_pairs,
    kaplan_meier,
    logrank_test,
    median_time,
    survival_markdown,
    survival_table,
    wilson_interval,
)

SIX_MP = [6, 6, 6, 6, 7, 9, 10, 10, 11, 13, 16, 17, 19, 20, 22, 23, 25, 32, 32, 34, 35]
SIX_MP_RELAPSED = [1, 1, 1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
PLACEBO = [1, 1, 2, 2, 3, 4, 4, 5, 5, 8, 8, 8, 8, 11, 11, 12, 12, 15, 17, 22, 23]
ALL_RELAPSED = [1] * 21


def test_kaplan_meier_on_the_6mp_arm_matches_the_textbook_table():
    km = kaplan_meier(SIX_MP, SIX_MP_RELAPSED)
    assert km.times.tolist() == [6, 7, 10, 13, 16, 22, 23]
    assert km.at_risk.tolist() == [21, 17, 15, 12, 11, 7, 6]
    assert km.events.tolist() == [3, 1, 1, 1, 1, 1, 1]
    assert km.survival.round(4).tolist() == [0.8571, 0.8067, 0.7529, 0.6902, 0.6275, 0.5378,
                                             0.4482]
    assert km.censored.tolist() == [6, 9, 10, 11, 17, 19, 20, 25, 32, 32, 34, 35]
    assert km.survival_at(5.9) == 1.0 and km.survival_at(12) == pytest.approx(0.7529, abs=1e-4)


def test_log_log_greenwood_band_matches_r_survfit():
    # survfit(Surv(time, status) ~ 1, conf.type = "log-log") on the 6-MP arm
    km = kaplan_meier(SIX_MP, SIX_MP_RELAPSED)
    assert km.lower.round(3).tolist() == [0.620, 0.563, 0.503, 0.432, 0.368, 0.268, 0.188]
    assert km.upper.round(3).tolist() == [0.952, 0.923, 0.889, 0.849, 0.805, 0.747, 0.680]


def test_median_and_its_interval():
    # 6-MP: median 23 weeks, lower bound 13, upper bound not reached; placebo: 8 (4 to 11)
    assert median_time(kaplan_meier(SIX_MP, SIX_MP_RELAPSED)) == (23, 13, None)
    assert median_time(kaplan_meier(PLACEBO, ALL_RELAPSED)) == (8, 4, 11)
    # half formed by step 500 exactly: the median is 500, "the first step by which half formed"
    km = kaplan_meier([400, 450, 450, 500, 550, 600, 600, 650], [True] * 8)
    assert median_time(km)[0] == 500
    assert km.lower[-1] == km.upper[-1] == 0.0  # all formed: the band closes at 0


def test_logrank_on_6mp_vs_placebo_gives_the_published_chi2():
    result = logrank_test([(PLACEBO, ALL_RELAPSED, SIX_MP, SIX_MP_RELAPSED)])
    assert result.observed_a == 21 and result.expected_a == pytest.approx(10.75, abs=0.01)
    assert result.chi2 == pytest.approx(16.79, abs=0.005)
    assert result.p_two_sided == pytest.approx(4.17e-5, rel=1e-3)
    # placebo relapses sooner: positive z, one-sided p half the two-sided one
    assert result.z > 0 and result.p_one_sided == pytest.approx(result.p_two_sided / 2)
    reverse = logrank_test([(SIX_MP, SIX_MP_RELAPSED, PLACEBO, ALL_RELAPSED)])
    assert reverse.z == pytest.approx(-result.z) and reverse.p_one_sided > 0.99


def test_logrank_by_hand_and_stratified():
    # A forms at 1 and 2, B at 3 and 4: O_A = 2, E_A = 1/2 + 1/3, V = 1/4 + 2/9, z = 7/sqrt(17)
    stratum = ([1, 2], [True, True], [3, 4], [True, True])
    result = logrank_test([stratum])
    assert result.expected_a == pytest.approx(5 / 6) and result.variance == pytest.approx(17 / 36)
    assert result.z == pytest.approx(7 / math.sqrt(17))
    # two identical strata: O - E and V double, so z grows by sqrt(2)
    assert logrank_test([stratum, stratum]).z == pytest.approx(7 * math.sqrt(2) / math.sqrt(17))
    # nobody formed: nothing to compare
    nothing = logrank_test([([5, 5], [False, False], [5], [False])])
    assert nothing.z == 0 and nothing.p_two_sided == 1.0


@pytest.mark.parametrize("k, n, low, high", [
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718)])
def test_wilson_interval_matches_newcombe(k, n, low, high):
    assert [round(x, 4) for x in wilson_interval(k, n)] == [low, high]


def test_wilson_interval_refuses_impossible_counts():
    with pytest.raises(ValueError, match="k=3, n=2"):
        wilson_interval(3, 2)


def run(condition, name, status="finished", formed=False, crossed=None, last=4000, budget=4000,
        **extra):
    return {"condition": condition, "run": name, "status": status, "induction_formed": formed,
            "phase_change_step": crossed, "last_step": last, "budget": budget, **extra}


def test_formation_time_dates_formed_runs_censors_the_rest_and_excludes_failures():
    formed = formation_time(run("c", "s0", formed=True, crossed=1050, last=1550))
    assert (formed.duration, formed.formed, formed.at_budget) == (1050, True, True)
    lost = formation_time(run("c", "s1", crossed=3300))
    assert (lost.duration, lost.formed) == (4000, False)
    assert lost.reason == ("not formed by its budget (step 4,000); crossed the threshold at "
                           "step 3,300 but had no head at the end")
    stopped = formation_time(run("c", "s2", status="interrupted", last=1200))
    assert (stopped.duration, stopped.at_budget) == (1200, False)
    assert stopped.reason == "interrupted at step 1,200"
    killed = formation_time(run("c", "s3", status="incomplete", last=700))
    assert "no summary.json" in killed.reason and killed.duration == 700
    assert formation_time(run("c", "s4", status="failed", last=20, error="loss is nan")) == (
        "failed after step 20: loss is nan")
    assert formation_time(run("c", "s5", status="incomplete", last=None)).startswith("nothing")


def test_survival_table_of_a_mixed_sweep():
    k_only, q_only = "positional=standard, blocked=Q", "positional=standard, blocked=K"
    records = [run(k_only, f"seed{s}", formed=True, crossed=step, last=step + 500)
               for s, step in enumerate([1000, 1050, 1100, 1100])]
    records += [run(q_only, "seed0", formed=True, crossed=3300, budget=8000, last=3800),
                run(q_only, "seed1", budget=8000, last=8000),
                run(q_only, "seed2", budget=6000, last=6000),  # an older, shorter budget
                run(q_only, "seed3", status="interrupted", budget=8000, last=2000),
                run(q_only, "seed4", status="failed", budget=8000, last=20, error="nan")]
    table = survival_table(records)
    k, q = table["conditions"]
    assert (k["n"], k["formed"], k["formed_of"], k["median"]) == (4, 4, 4, 1050)
    assert k["formed_ci"] == pytest.approx(list(wilson_interval(4, 4)))
    assert k["curve"]["fraction_formed"] == [0.25, 0.5, 1.0]
    # the interrupted run counts in the curve (censored at 2,000), not in the formed fraction
    assert (q["n"], q["formed"], q["formed_of"], q["budgets"]) == (4, 1, 3, [6000, 8000])
    assert q["median"] is None and q["curve"]["censored_steps"] == [2000, 6000, 8000]
    assert q["excluded"] == [{"run": "seed4", "reason": "failed after step 20: nan"}]
    [test] = table["tests"]
    assert test["a"] == [k_only] and test["b"] == [q_only] and test["z"] > 0
    assert test["p_one_sided"] < 0.05
    text = survival_markdown(table)
    assert "| positional=standard, blocked=Q | 4,000 | 4 | 4/4 (0.51 to 1.00) | 1,050 (1,000 to" \
        in text
    assert "| positional=standard, blocked=K | 6,000, 8,000 | 5 (1 excluded) | 1/3" in text
    assert "not reached by 8,000" in text
    assert censoring_lines(table) == [
        f"{q_only}: seed1: not formed by its budget (step 8,000); seed2: not formed by its "
        "budget (step 6,000); seed3: interrupted at step 2,000; seed4: excluded, failed after "
        "step 20: nan"]
    records.append(run(q_only, "seed5", budget=8000, last=8000))
    assert "seed1, seed5: not formed by its budget (step 8,000)" in censoring_lines(
        survival_table(records))[0]


def test_k_vs_q_pairs_pair_each_positional_mode_and_stratify_over_both():
    labels = [f"positional={p}, blocked={b}" for p in ("standard", "shortformer")
              for b in ("none", "K", "Q")]
    pairs = k_vs_q_pairs(labels)
    assert pairs == [("positional=standard, blocked=Q", "positional=standard, blocked=K"),
                     ("positional=shortformer, blocked=Q", "positional=shortformer, blocked=K")]
    records = [run(label, "s0", formed="blocked=K" not in label, crossed=500)
               for label in labels]
    tests = survival_table(records)["tests"]
    assert [t["test"] for t in tests] == ["log-rank", "log-rank", "log-rank, stratified"]
    assert tests[2]["observed_a"] == 2 and tests[2]["a"] == [a for a, _ in pairs]
