"use strict";
// The sweep page: conditions table, curves with seed bands (colour and dash per condition), and
// the fraction of each condition's runs formed against steps.

function runCount(c) {
  const n = c.states.finished + c.states.failed + c.states.incomplete;
  return `${n} run${n === 1 ? "" : "s"}`;
}

function main() {
  const D = pageData();
  const page = document.getElementById("page");
  page.textContent = "";
  h("h1", {}, page, D.title);
  h("p", {class: "sub"}, page, D.sweep_dir);
  notesBox(page, D.notes);
  h("h2", {}, page, "Conditions");
  h("p", {class: "note"}, page, "Statistics over each condition's finished runs (mean ± sd " +
    "over seeds); runs that failed or have not finished are counted in brackets.");
  const table = h("table", {id: "conditions"}, page);
  const head = h("tr", {}, h("thead", {}, table));
  for (const c of D.columns) h("th", {}, head, c);
  const body = h("tbody", {}, table);
  for (const row of D.table) {
    const tr = h("tr", {}, body);
    for (const c of D.columns) h("td", {"data-column": c}, tr, row[c]);
  }
  const style = D.conditions.map((c, k) => ({color: COLORS[k % COLORS.length],
                                             dash: DASHES[k % DASHES.length]}));
  h("h2", {}, page, "Curves: mean over seeds (thick; a seed stopped early counts with its last value), min-max band, single seeds (faint)");
  const grid = h("div", {class: "charts", id: "sweep-curves"}, page);
  for (const curve of D.curves) {
    const series = [];
    D.conditions.forEach((c, k) => {
      const cu = c.curves[curve.key];
      if (!cu.tokens.length) return;
      for (const run of cu.runs) {
        series.push({xs: run.tokens, ys: run.values, color: style[k].color, dash: style[k].dash,
                     width: 0.8, thin: true});
      }
      const n = cu.runs.length;
      series.push({label: `${c.label} (${n} run${n === 1 ? "" : "s"})`, xs: cu.tokens,
                   ys: cu.mean, low: cu.low, high: cu.high, color: style[k].color,
                   dash: style[k].dash, width: 2.2});
    });
    if (!series.length) continue;
    const induction = curve.key === "induction";
    lineChart(grid, {
      title: curve.title, xLabel: "training tokens", yLabel: curve.y_label, series,
      yMin: induction ? 0 : undefined, yMax: induction ? 1 : undefined,
      hlines: induction ? [{at: D.threshold, label: `threshold ${D.threshold}`, color: "#111",
                            dash: "2 3"}] : [],
    });
  }
  const formed = D.conditions.filter(c => c.formed.steps.length);
  if (formed.length) {
    lineChart(grid, {
      title: `Fraction of runs formed (best induction score has crossed ${D.threshold})`,
      xLabel: "training step", yLabel: "fraction of runs", yMin: 0, yMax: 1,
      series: D.conditions.map((c, k) => ({
        label: `${c.label} (${runCount(c)})`,
        xs: c.formed.steps, ys: c.formed.fraction, color: style[k].color, dash: style[k].dash,
        width: 2.2})).filter(se => se.xs.length),
    });
  }
  document.body.dataset.ready = "1";
}

try { main(); } catch (err) { console.error(err); throw err; }
