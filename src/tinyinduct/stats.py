"""Formation time as survival data: when does an induction head form, with what uncertainty.

Every run is a `(duration, formed)` pair: a run whose head formed contributes its formation step;
one that never formed is *censored* at the last step it reached (its budget, or where it was
interrupted). Per condition: the Kaplan-Meier curve of the fraction formed against steps
(`1 - S(t)`), the median formation step with a confidence interval, the fraction formed with a
Wilson score interval, and the log-rank test of "K-composition-only forms sooner than
Q-composition-only".

Written here in numpy (about 100 lines) rather than taken from `lifelines`: the three estimators
are textbook formulas, and lifelines would add pandas, scipy, autograd and formulaic to the
install for them. tests/test_stats.py checks every number against published worked examples
(the Freireich 6-MP leukemia trial; Newcombe's 1998 Wilson intervals), whose values lifelines
0.30 and R's `survival` reproduce too. Conventions, the same as theirs:

- Kaplan-Meier with the Greenwood variance; the pointwise confidence interval of `S(t)` is
  built on the log(-log) scale (R's `conf.type="log-log"`, lifelines' default), so it stays
  inside [0, 1].
- The median is the first step with `S(t) <= 0.5`, "the first step by which half the runs had
  formed" (R instead averages two steps when `S` sits exactly at 0.5; lifelines needs `S < 0.5`).
  Its interval is where the pointwise band crosses 0.5 (Brookmeyer-Crowley with the log-log
  transform, as R and lifelines report it); `None` above means the band never reaches 0.5
  within the data: the upper bound is beyond the longest run.
- The log-rank test uses the hypergeometric variance with ties (R's `survdiff`). It is reported
  one-sided, since the question has a direction (does A form *sooner* than B), as
  `z = (O_A - E_A) / sqrt(V)`, with the two-sided `chi2 = z**2` p-value beside it. It is an
  asymptotic test: with 8 runs a side the normal approximation is rough, so read p-values near
  0.05 with care. Runs with different budgets are fine: each is censored at its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence, Tuple

import numpy as np


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval for a proportion of `k` successes in `n` trials (no continuity
    correction): stays inside [0, 1] and is not degenerate at 0/n or n/n."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = _z(confidence)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class KaplanMeier:
    """The Kaplan-Meier estimate, one entry per distinct event time (all arrays `[m]`)."""

    times: np.ndarray       # event times, increasing
    at_risk: np.ndarray     # runs still unformed and uncensored just before each time
    events: np.ndarray      # runs that formed at each time
    survival: np.ndarray    # S(t): fraction not yet formed, just after each time
    lower: np.ndarray       # pointwise confidence band of S(t) (log-log Greenwood)
    upper: np.ndarray
    censored: np.ndarray    # `[c]` the times at which runs were censored
    n: int

    def survival_at(self, t: float) -> float:
        """S(t) (right-continuous step function; 1 before the first event)."""
        i = np.searchsorted(self.times, t, side="right")
        return 1.0 if i == 0 else float(self.survival[i - 1])


def kaplan_meier(durations: Sequence[float], formed: Sequence[bool],
                 confidence: float = 0.95) -> KaplanMeier:
    """Kaplan-Meier estimate of S(t) = P(not formed by t) from `durations` (the formation step
    of a run that formed, the last step reached of one that did not) and `formed`."""
    d = np.asarray(durations, dtype=float)
    e = np.asarray(formed, dtype=bool)
    if d.shape != e.shape or d.ndim != 1 or len(d) == 0:
        raise ValueError("durations and formed must be non-empty 1-D sequences of equal length")
    times = np.unique(d[e])
    at_risk = np.array([(d >= t).sum() for t in times], dtype=float)
    events = np.array([(d[e] == t).sum() for t in times], dtype=float)
    survival = np.cumprod(1 - events / at_risk)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Greenwood: Var(log S) = sum d / (n (n - d)); on the log(-log S) scale its sd is
        # sqrt(Var) / |log S|, and the band is S ** exp(+-z sd).
        greenwood = np.cumsum(events / (at_risk * (at_risk - events)))
        sd = np.sqrt(greenwood) / np.abs(np.log(survival))
        z = _z(confidence)
        lower = survival ** np.exp(z * sd)
        upper = survival ** np.exp(-z * sd)
    lower = np.where(survival > 0, lower, 0.0)
    upper = np.where(survival > 0, upper, 0.0)
    return KaplanMeier(times, at_risk, events, survival, lower, upper,
                       np.sort(d[~e]), len(d))


def _first_at_or_below(times: np.ndarray, curve: np.ndarray, level: float) -> float | None:
    below = np.nonzero(curve <= level + 1e-12)[0]
    return float(times[below[0]]) if len(below) else None


def median_time(km: KaplanMeier) -> Tuple[float | None, float | None, float | None]:
    """(median, lower, upper): the first time S <= 0.5 and where the confidence band crosses
    0.5. `None`: not reached within the data (an upper bound of None means 'beyond')."""
    return (_first_at_or_below(km.times, km.survival, 0.5),
            _first_at_or_below(km.times, km.lower, 0.5),
            _first_at_or_below(km.times, km.upper, 0.5))


@dataclass(frozen=True)
class LogRank:
    observed_a: float   # events in group A
    expected_a: float   # events expected in A if both groups shared one formation rate
    variance: float
    z: float            # (O_A - E_A) / sqrt(V): positive when A forms sooner than B
    chi2: float         # z ** 2, 1 degree of freedom
    p_one_sided: float  # P(Z >= z): evidence that A forms sooner than B
    p_two_sided: float  # P(chi2_1 >= chi2): evidence that they differ either way


def _logrank_terms(durations_a, formed_a, durations_b, formed_b) -> Tuple[float, float, float]:
    da, ea = np.asarray(durations_a, float), np.asarray(formed_a, bool)
    db, eb = np.asarray(durations_b, float), np.asarray(formed_b, bool)
    observed = expected = variance = 0.0
    for t in np.unique(np.concatenate([da[ea], db[eb]])):
        na, nb = (da >= t).sum(), (db >= t).sum()
        oa, ob = (da[ea] == t).sum(), (db[eb] == t).sum()
        n, o = na + nb, oa + ob
        observed += oa
        expected += o * na / n
        if n > 1:
            variance += o * (na / n) * (nb / n) * (n - o) / (n - 1)
    return observed, expected, variance


def logrank_test(strata: Sequence[Tuple[Sequence[float], Sequence[bool],
                                        Sequence[float], Sequence[bool]]]) -> LogRank:
    """Log-rank test of group A against group B: `strata` is a list of
    `(durations_a, formed_a, durations_b, formed_b)`; with several, the stratified test (sums of
    O - E and V over the strata, e.g. one stratum per positional mode)."""
    if not strata:
        raise ValueError("logrank_test needs at least one stratum")
    terms = np.array([_logrank_terms(*s) for s in strata]).sum(axis=0)
    observed, expected, variance = (float(x) for x in terms)
    if variance <= 0:
        z = 0.0  # no event at a time when both groups were at risk: nothing to compare
    else:
        z = (observed - expected) / math.sqrt(variance)
    return LogRank(observed, expected, variance, z, z * z,
                   0.5 * math.erfc(z / math.sqrt(2)), math.erfc(abs(z) / math.sqrt(2)))


# --- runs as formation times, and the per-condition table -------------------------------------
#
# A run record is a dict: `condition` (label), `run` (a name: seed or folder), `status`
# (finished | interrupted | failed | incomplete: no summary yet), `induction_formed` (the
# summary's final verdict), `phase_change_step` (first evaluation whose best layer-1 induction
# score crossed the threshold, or None), `last_step` (last step reached, or None), `budget`
# (train.steps), optionally `error`.
#
# The event "formed" is the summary's final verdict `induction_formed` (score and loss ratio at
# the end of the run), dated at `phase_change_step`. A run that crossed the threshold and lost it
# again (rare) has no head at the end: it counts as not formed, censored at its last step, and
# is named. This keeps the curve's end point equal to the formed k/n of the same runs.


@dataclass(frozen=True)
class FormationTime:
    run: str
    duration: int            # formation step if formed, else the last step reached
    formed: bool
    reason: str | None       # why a run is censored (None if formed)
    at_budget: bool          # outcome known at the budget: formed, or not formed by then


def formation_time(record: dict) -> FormationTime | str:
    """A run record as survival data, or (a string) the reason it is excluded."""
    status, last = record.get("status"), record.get("last_step")
    crossed, budget = record.get("phase_change_step"), record.get("budget")
    run = str(record.get("run"))
    if status == "failed":
        return f"failed after step {last}: {record.get('error') or 'no error recorded'}"
    if last is None:
        return "nothing logged yet (no evaluation)"
    if record.get("induction_formed"):
        if crossed is None:
            return "formed at the end but no threshold crossing recorded (threshold changed?)"
        return FormationTime(run, int(crossed), True, None, True)
    if status == "interrupted":
        reason = f"interrupted at step {last:,}"
    elif status == "incomplete":
        reason = f"no summary.json (killed or still running), censored at step {last:,}"
    elif budget is not None and last < budget:
        reason = f"stopped at step {last:,} before its budget {budget:,}"
    else:
        reason = f"not formed by its budget (step {last:,})"
    if crossed is not None:
        reason += f"; crossed the threshold at step {crossed:,} but had no head at the end"
    known = status == "finished" and (budget is None or last >= budget)
    return FormationTime(run, int(last), False, reason, known)


def k_vs_q_pairs(labels: Sequence[str]) -> list:
    """(K-only, Q-only) condition pairs: `blocked=Q` (only K-composition possible) against the
    same condition with `blocked=K` (only Q-composition possible), where both exist."""
    pairs = []
    for label in labels:
        partner = label.replace("blocked=Q", "blocked=K")
        if "blocked=Q" in label and partner in labels:
            pairs.append((label, partner))
    return pairs


def _condition_summary(label: str, records: list, confidence: float) -> dict:
    times, excluded = [], []
    for record in records:
        result = formation_time(record)
        if isinstance(result, str):
            excluded.append({"run": str(record.get("run")), "reason": result})
        else:
            times.append(result)
    budgets = sorted({r["budget"] for r in records if r.get("budget") is not None})
    out = {"condition": label, "n": len(times), "budgets": budgets, "excluded": excluded,
           "censored": [{"run": t.run, "step": t.duration, "reason": t.reason}
                        for t in times if not t.formed]}
    known = [t for t in times if t.at_budget]
    k = sum(t.formed for t in known)
    out.update({"formed": k, "formed_of": len(known),
                "formed_ci": list(wilson_interval(k, len(known), confidence)) if known else None})
    if not times:
        out.update({"median": None, "median_ci": [None, None], "longest": None, "curve": None})
        return out
    km = kaplan_meier([t.duration for t in times], [t.formed for t in times], confidence)
    median, low, high = median_time(km)
    out.update({
        "median": median, "median_ci": [low, high], "longest": max(t.duration for t in times),
        "curve": {"steps": km.times.tolist(), "fraction_formed": (1 - km.survival).tolist(),
                  "lower": (1 - km.upper).tolist(), "upper": (1 - km.lower).tolist(),
                  "censored_steps": km.censored.tolist()},
        "durations": [t.duration for t in times], "formed_flags": [t.formed for t in times],
    })
    return out


def survival_table(records: Sequence[dict], pairs: Sequence[Tuple[str, str]] | None = None,
                   confidence: float = 0.95) -> dict:
    """Per condition (in first-seen order): runs used, formed k/n with a Wilson interval, the
    median formation step with its interval, the Kaplan-Meier curve (fraction formed), and every
    censored or excluded run with its reason; then the one-sided log-rank test of each pair
    `(A, B)` ("A forms sooner than B"; default: K-only against Q-only per positional mode), and
    the test stratified over all pairs when there are several. JSON-ready."""
    by_condition: dict = {}
    for record in records:
        by_condition.setdefault(record["condition"], []).append(record)
    conditions = [_condition_summary(label, rs, confidence) for label, rs in by_condition.items()]
    pairs = k_vs_q_pairs(list(by_condition)) if pairs is None else list(pairs)
    index = {c["condition"]: c for c in conditions}

    def stratum(a: str, b: str) -> tuple:
        ca, cb = index[a], index[b]
        return (ca.get("durations", []), ca.get("formed_flags", []),
                cb.get("durations", []), cb.get("formed_flags", []))

    tests = []
    for group in [[p] for p in pairs] + ([list(pairs)] if len(pairs) > 1 else []):
        result = logrank_test([stratum(a, b) for a, b in group])
        tests.append({"a": [a for a, _ in group], "b": [b for _, b in group],
                      "test": "log-rank" + (", stratified" if len(group) > 1 else ""),
                      "alternative": "a forms sooner than b (one-sided)",
                      **{k: getattr(result, k) for k in LogRank.__dataclass_fields__}})
    return {"confidence": confidence, "conditions": conditions, "tests": tests}


# --- the table as text ---------------------------------------------------------------------------

SURVIVAL_COLUMNS = ("condition", "budget", "runs", "formed (95% CI)",
                    "median formation step (95% CI)")


def _steps(x: float | None) -> str:
    return "-" if x is None else f"{int(x):,}"


def _median_text(c: dict) -> str:
    median, (low, high) = c["median"], c["median_ci"]
    if c["n"] == 0:
        return "-"
    high_text = _steps(high) if high is not None else f"> {_steps(c['longest'])}"
    if median is None:
        return f"not reached by {_steps(c['longest'])}" + (
            f" ({_steps(low)} to {high_text})" if low is not None else "")
    return f"{_steps(median)} ({_steps(low)} to {high_text})"


def survival_rows(table: dict) -> list:
    """One row of strings per condition, keyed by SURVIVAL_COLUMNS."""
    rows = []
    for c in table["conditions"]:
        formed = f"{c['formed']}/{c['formed_of']}"
        if c["formed_ci"]:
            formed += f" ({c['formed_ci'][0]:.2f} to {c['formed_ci'][1]:.2f})"
        rows.append({"condition": c["condition"],
                     "budget": ", ".join(_steps(b) for b in c["budgets"]) or "-",
                     "runs": str(c["n"] + len(c["excluded"])) + (
                         f" ({len(c['excluded'])} excluded)" if c["excluded"] else ""),
                     "formed (95% CI)": formed,
                     "median formation step (95% CI)": _median_text(c)})
    return rows


def logrank_lines(table: dict) -> list:
    """One sentence per log-rank test."""
    lines = []
    for t in table["tests"]:
        a, b = " + ".join(t["a"]), " + ".join(t["b"])
        lines.append(
            f"[{a}] forms sooner than [{b}] ({t['test']} test, one-sided): z = {t['z']:.2f} "
            f"(formed {t['observed_a']:.0f}, expected {t['expected_a']:.1f}), "
            f"one-sided p = {t['p_one_sided']:.2g}, two-sided p = {t['p_two_sided']:.2g}")
    return lines


def censoring_lines(table: dict) -> list:
    """Every censored or excluded run, named, with its reason, one line per condition."""
    lines = []
    for c in table["conditions"]:
        by_reason: dict = {}
        for r in c["censored"]:
            by_reason.setdefault(r["reason"], []).append(r["run"])
        for r in c["excluded"]:
            by_reason.setdefault(f"excluded, {r['reason']}", []).append(r["run"])
        parts = [f"{', '.join(runs)}: {reason}" for reason, runs in by_reason.items()]
        if parts:
            lines.append(f"{c['condition']}: " + "; ".join(parts))
    return lines


def markdown_rows(rows: Sequence[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(r[c] for c in columns) + " |" for r in rows])


def survival_markdown(table: dict) -> str:
    """The table, the tests and the censored runs, as Markdown."""
    parts = [markdown_rows(survival_rows(table), SURVIVAL_COLUMNS)]
    if table["tests"]:
        parts.append("\n".join(f"- {line}" for line in logrank_lines(table)))
    censored = censoring_lines(table)
    if censored:
        parts.append("Censored (not formed when the run ended) and excluded runs:\n\n"
                     + "\n".join(f"- {line}" for line in censored))
    return "\n\n".join(parts)
