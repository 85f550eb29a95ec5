"use strict";
// The run page: fixed verdict, a slider over the evaluations, and for the chosen step the loss
// curves' marker, every head's scores, every head's attention pattern on the picture sequence,
// and the composition scores as a graph from layer-0 heads to layer-1 heads.

const PHASE = {color: "#d62728", dash: ""};
const STEEPEST = {color: "#9467bd", dash: "6 3"};

function phaseLines(D) {
  return [
    {at: D.phase.crossing, label: `score crosses ${D.threshold} (step ${D.phase.crossing})`,
     ...PHASE},
    {at: D.phase.steepest, label: `steepest second-copy fall (step ${D.phase.steepest})`,
     ...STEEPEST},
  ];
}

function inflate(b64) {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Response(stream).arrayBuffer().then(b => new Uint8Array(b));
}

function colour(v) {  // 0..255 -> white through light blue to dark blue
  const t = v / 255;
  const stops = [[247, 251, 255], [107, 174, 214], [8, 48, 107]];
  const [a, b, u] = t < 0.5 ? [stops[0], stops[1], t / 0.5] : [stops[1], stops[2], (t - 0.5) / 0.5];
  return a.map((x, i) => Math.round(x + (b[i] - x) * u));
}

function buildCurves(D, parent) {
  const charts = [];
  const section = h("section", {id: "curves"}, parent);
  h("h2", {}, section, "Curves (the black line is the step chosen above)");
  const grid = h("div", {class: "charts"}, section);
  const lnV = D.d_vocab ? Math.log(D.d_vocab) : null;
  for (const panel of D.loss_panels) {
    charts.push(lineChart(grid, {
      title: panel.title, xLabel: "training step", yLabel: "loss (nats)",
      series: panel.series.map((se, k) => ({label: se.label, xs: D.steps, ys: se.values,
                                            color: ["#111", "#1f77b4", "#ff7f0e"][k]})),
      hlines: [{at: lnV, label: `ln d_vocab = ${fmt(lnV, 2)} (uniform guess)`, color: "#888",
                dash: "8 3 2 3"}],
      vlines: phaseLines(D),
    }));
  }
  const series = D.heads.map((head, k) => ({
    label: head, xs: D.steps, ys: D.scores.induction[head], color: COLORS[k % COLORS.length],
    dash: head.startsWith("L0") ? "5 3" : "", width: 1.6}));
  charts.push(lineChart(grid, {
    title: "Induction score of every head (dashed: layer 0)", xLabel: "training step",
    yLabel: "induction score", yMin: 0, yMax: 1, series,
    hlines: [{at: D.threshold, label: `threshold ${D.threshold}`, color: "#2ca02c", dash: "2 3"}],
    vlines: phaseLines(D),
  }));
  return charts;
}

function buildScores(D, parent) {
  const section = h("section", {id: "scores"}, parent);
  h("h2", {}, section, "Head scores at this step");
  const table = h("table", {id: "head-scores", class: "scores"}, section);
  const head = h("tr", {}, h("thead", {}, table));
  h("th", {}, head, "head");
  for (const k of D.score_kinds) h("th", {}, head, k.label);
  const body = h("tbody", {}, table);
  const cells = [];
  for (const name of D.heads) {
    const tr = h("tr", {}, body);
    h("th", {}, tr, name);
    for (const k of D.score_kinds) {
      cells.push([h("td", {"data-key": `heads/${k.key}/${name}`}, tr), D.scores[k.key][name]]);
    }
  }
  return i => {
    for (const [td, values] of cells) {
      const v = values[i];
      td.textContent = fmt(v, 3);
      const pct = v === null ? 0 : Math.max(0, Math.min(1, v)) * 100;
      td.style.background = `linear-gradient(90deg, #c6dbef ${pct}%, transparent ${pct}%)`;
    }
  };
}

function buildAttention(D, parent, bytes) {
  const A = D.attention;
  const section = h("section", {id: "attention"}, parent);
  h("h2", {}, section, "Attention of every head on the picture sequence");
  if (!bytes || !A.shape.length) {
    h("p", {class: "note"}, section, "No attention patterns recorded for this run.");
    return () => {};
  }
  const [L, H, T] = A.shape;
  const tri = T * (T + 1) / 2;
  if (A.first_copy && A.second_copy) {
    const [f, n] = A.first_copy, [sc] = A.second_copy;
    h("p", {class: "note"}, section,
      `Rows are queries, columns keys. Orange dashed: the second copy starts (query ${sc}); ` +
      `grey dotted: the first copy (keys ${f}-${f + n - 1}). An induction head attends from ` +
      `each second-copy token to the token after its first occurrence: a diagonal stripe ` +
      `below the orange line, between the grey ones.`);
  }
  const status = h("p", {class: "note", id: "attention-step"}, section);
  const grid = h("div", {class: "heads",
                         style: `grid-template-columns: repeat(${H}, minmax(0, 1fr))`}, section);
  const scale = Math.max(2, Math.ceil(256 / T));  // drawn sharp, shown at the column's width
  const off = document.createElement("canvas");
  off.width = T; off.height = T;
  const octx = off.getContext("2d");
  const tiles = [];
  for (let l = 0; l < L; l++) {
    for (let hd = 0; hd < H; hd++) {
      const fig = h("figure", {class: "head"}, grid);
      const cap = h("figcaption", {}, fig);
      const canvas = h("canvas", {width: T * scale, height: T * scale}, fig);
      tiles.push({label: `L${l}H${hd}`, l, hd, cap, canvas});
    }
  }
  return i => {
    const step = D.steps[i];
    const a = A.steps.indexOf(step);
    status.textContent = a >= 0 ? `Patterns at step ${step}.`
      : `No pattern recorded at step ${step}.`;
    for (const t of tiles) {
      const ind = D.scores.induction[t.label], prev = D.scores.prev_token[t.label];
      t.cap.textContent = `${t.label}  induction ${fmt(ind && ind[i], 2)}  ` +
                          `prev ${fmt(prev && prev[i], 2)}`;
      const ctx = t.canvas.getContext("2d");
      ctx.clearRect(0, 0, t.canvas.width, t.canvas.height);
      if (a < 0) continue;
      const img = octx.createImageData(T, T);
      const base = ((a * L + t.l) * H + t.hd) * tri;
      for (let q = 0, k = 0; q < T; q++) {
        for (let c = 0; c < T; c++) {
          const v = c <= q ? bytes[base + k++] : 0;
          const [r, g, b] = colour(v);
          const o = 4 * (q * T + c);
          img.data[o] = r; img.data[o + 1] = g; img.data[o + 2] = b; img.data[o + 3] = 255;
        }
      }
      octx.putImageData(img, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(off, 0, 0, T * scale, T * scale);
      if (A.first_copy && A.second_copy) {
        const [f, n] = A.first_copy, [sc] = A.second_copy;
        ctx.lineWidth = 1.5;
        ctx.strokeStyle = "#ff7f0e"; ctx.setLineDash([5, 3]);
        ctx.beginPath(); ctx.moveTo(0, sc * scale); ctx.lineTo(T * scale, sc * scale); ctx.stroke();
        ctx.strokeStyle = "#555"; ctx.setLineDash([2, 3]);
        for (const x of [f, f + n]) {
          ctx.beginPath(); ctx.moveTo(x * scale, 0); ctx.lineTo(x * scale, T * scale); ctx.stroke();
        }
        ctx.setLineDash([]);
      }
    }
  };
}

function buildComposition(D, parent) {
  const C = D.comp;
  const section = h("section", {id: "composition"}, parent);
  h("h2", {}, section, "Composition scores: layer-0 heads (left) write, layer-1 heads read");
  if (!C.pairs.length) {
    h("p", {class: "note"}, section, "No composition scores (a one-layer model, or none logged).");
    return () => {};
  }
  h("p", {class: "note"}, section,
    "Line width and darkness: how far the score is above the random-matrix baseline (the same " +
    "scale at every step); grey hairlines: at or below it. Hover a line for its value.");
  const base = h("p", {class: "note", id: "comp-baseline"}, section);
  const grid = h("div", {class: "charts"}, section);
  let maxExcess = 1e-6;
  C.values.forEach(vals => vals.forEach((v, i) => {
    if (v !== null && C.baseline[i] !== null) maxExcess = Math.max(maxExcess, v - C.baseline[i]);
  }));
  const panels = {};
  for (const kind of ["Q", "K", "V"]) {
    const idx = C.pairs.map((p, k) => [p, k]).filter(([p]) => p[0] === kind);
    if (!idx.length) continue;
    const writers = [...new Set(idx.map(([p]) => p[1]))].sort();
    const readers = [...new Set(idx.map(([p]) => p[2]))].sort();
    const W = 260, Hh = 40 + 34 * Math.max(writers.length, readers.length);
    const fig = h("figure", {class: "chart comp"}, grid);
    h("figcaption", {}, fig, `${kind}-composition`);
    const svg = s("svg", {viewBox: `0 0 ${W} ${Hh}`, class: "plot"}, fig);
    const yOf = (n, j) => 30 + (Hh - 50) * (n === 1 ? 0.5 : j / (n - 1));
    const edges = idx.map(([p, k]) => {
      const line = s("line", {x1: 60, x2: W - 60, y1: yOf(writers.length, writers.indexOf(p[1])),
                              y2: yOf(readers.length, readers.indexOf(p[2])),
                              "stroke-linecap": "round", "data-pair": `${p[0]}/${p[1]}->${p[2]}`},
                     svg);
      return {line, title: s("title", {}, line), pair: p, values: C.values[k]};
    });
    writers.forEach((w, j) => {
      s("circle", {cx: 60, cy: yOf(writers.length, j), r: 6, class: "node"}, svg);
      s("text", {x: 50, y: yOf(writers.length, j) + 4, "text-anchor": "end"}, svg, w);
    });
    readers.forEach((r, j) => {
      s("circle", {cx: W - 60, cy: yOf(readers.length, j), r: 6, class: "node"}, svg);
      s("text", {x: W - 50, y: yOf(readers.length, j) + 4}, svg, r);
    });
    const top = h("p", {class: "note"}, fig);
    panels[kind] = {edges, top};
  }
  return i => {
    const b = C.baseline[i];
    base.textContent = `Random-matrix baseline at this step: ${fmt(b, 3)}.`;
    for (const {edges, top} of Object.values(panels)) {
      let best = null;
      for (const e of edges) {
        const v = e.values[i];
        const x = v === null || b === null ? 0 : Math.max(0, (v - b) / maxExcess);
        e.line.setAttribute("stroke", x > 0 ? `rgba(214, 39, 40, ${0.25 + 0.75 * x})` : "#ccc");
        e.line.setAttribute("stroke-width", x > 0 ? 1 + 9 * x : 0.7);
        e.title.textContent = `${e.pair[1]} -> ${e.pair[2]}: ${fmt(v, 3)} (baseline ${fmt(b, 3)})`;
        if (v !== null && (best === null || v > best.v)) best = {v, e};
      }
      top.textContent = best ? `strongest: ${best.e.pair[1]} -> ${best.e.pair[2]} ` +
                               `${fmt(best.v, 3)}` : "";
    }
  };
}

async function main() {
  const D = pageData();
  const page = document.getElementById("page");
  page.textContent = "";
  h("h1", {}, page, D.title);
  h("p", {class: "sub"}, page, `${D.run_dir} (status: ${D.status})`);
  notesBox(page, D.notes);
  const verdict = h("section", {id: "verdict", class: "verdict"}, page);
  h("h2", {}, verdict, "Verdict");
  for (const line of D.verdict) h("p", {}, verdict, line);
  if (!D.steps.length) return;
  const control = h("div", {class: "control"}, page);
  h("label", {for: "step"}, control, "Evaluation ");
  const slider = h("input", {type: "range", id: "step", min: 0, max: D.steps.length - 1,
                             step: 1, value: 0}, control);
  const label = h("span", {id: "step-label"}, control);
  const charts = buildCurves(D, page);
  const updateScores = buildScores(D, page);
  let bytes = null;
  if (D.attention.packed) {
    try { bytes = await inflate(D.attention.packed); } catch (err) {
      notesBox(page, [`The attention patterns could not be unpacked here: ${err}`]);
    }
  }
  const updateAttention = buildAttention(D, page, bytes);
  const updateComposition = buildComposition(D, page);
  const update = () => {
    const i = Number(slider.value);
    label.textContent = `step ${D.steps[i]} (${fmtTokens(D.tokens[i])} tokens), ` +
                        `${i + 1} of ${D.steps.length}`;
    label.dataset.step = D.steps[i];
    for (const c of charts) c.setMarker(D.steps[i]);
    updateScores(i);
    updateAttention(i);
    updateComposition(i);
  };
  slider.addEventListener("input", update);
  update();
  document.body.dataset.ready = "1";
}

main().catch(err => { console.error(err); throw err; });
