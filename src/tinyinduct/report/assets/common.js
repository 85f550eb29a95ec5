"use strict";
// Shared by the run page and the sweep page: element helpers, number formats, and a small SVG
// line chart (series with gaps, min-max bands, reference lines, a movable step marker, a legend
// that shows each line's colour and dash).

const SVGNS = "http://www.w3.org/2000/svg";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf"];
const DASHES = ["", "7 4", "2 3", "9 3 2 3", "1 4", "12 3", "5 2 1 2 1 2", "4 4"];

function pageData() {
  return JSON.parse(document.getElementById("page-data").textContent);
}

function h(tag, attrs, parent, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function s(tag, attrs, parent, text) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function fmt(x, digits) {
  return (x === null || x === undefined || !isFinite(x)) ? "n/a" : x.toFixed(digits);
}

function fmtTokens(t) {
  if (t === null || t === undefined) return "n/a";
  return t >= 1e6 ? (t / 1e6).toFixed(2) + "M" : t >= 1e3 ? (t / 1e3).toFixed(1) + "k" : String(t);
}

function niceTicks(lo, hi, n) {
  const span = hi - lo || 1;
  const raw = span / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(v => span / v <= n) || 10 * mag;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9 * span; t += step) {
    ticks.push(Math.abs(t) < 1e-12 * span ? 0 : t);
  }
  return ticks;
}

function tickLabel(t) {
  const a = Math.abs(t);
  if (a >= 1e6) return (t / 1e6) + "M";
  if (a >= 1e4) return (t / 1e3) + "k";
  return String(Math.round(t * 1000) / 1000);
}

function lineSwatch(parent, color, dash, width, band) {
  const svg = s("svg", {width: 34, height: 12, class: "swatch"}, parent);
  if (band) s("rect", {x: 1, y: 1, width: 32, height: 10, fill: color, "fill-opacity": 0.18}, svg);
  s("line", {x1: 1, y1: 6, x2: 33, y2: 6, stroke: color, "stroke-width": width || 2,
             "stroke-dasharray": dash || ""}, svg);
}

// opts: {title, xLabel, yLabel, yMin, yMax, series: [{label, xs, ys, color, dash, width, low,
// high, thin}], hlines/vlines: [{at, label, color, dash}]}; returns {setMarker(x)}.
function lineChart(parent, opts) {
  const W = 520, H = 270, m = {l: 52, r: 12, t: 10, b: 40};
  const box = h("figure", {class: "chart"}, parent);
  if (opts.title) h("figcaption", {}, box, opts.title);
  const svg = s("svg", {viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img"}, box);
  const xsAll = [], ysAll = [];
  for (const se of opts.series) {
    se.xs.forEach((x, i) => {
      for (const y of [se.ys[i], se.low && se.low[i], se.high && se.high[i]]) {
        if (y !== null && y !== undefined && isFinite(y)) { xsAll.push(x); ysAll.push(y); }
      }
    });
  }
  for (const v of opts.vlines || []) if (v.at !== null && v.at !== undefined) xsAll.push(v.at);
  for (const v of opts.hlines || []) if (v.at !== null && v.at !== undefined) ysAll.push(v.at);
  let x0 = Math.min(...xsAll), x1 = Math.max(...xsAll);
  let y0 = opts.yMin !== undefined ? opts.yMin : Math.min(...ysAll);
  let y1 = opts.yMax !== undefined ? opts.yMax : Math.max(...ysAll);
  if (!isFinite(x0)) { x0 = 0; x1 = 1; }
  if (!isFinite(y0)) { y0 = 0; y1 = 1; }
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = opts.yMin === undefined ? 0.04 * (y1 - y0) : 0;
  y0 -= pad; y1 += pad;
  const X = x => m.l + (x - x0) / (x1 - x0) * (W - m.l - m.r);
  const Y = y => H - m.b - (y - y0) / (y1 - y0) * (H - m.t - m.b);
  const grid = s("g", {class: "grid"}, svg);
  for (const t of niceTicks(x0, x1, 6)) {
    s("line", {x1: X(t), x2: X(t), y1: m.t, y2: H - m.b}, grid);
    s("text", {x: X(t), y: H - m.b + 14, "text-anchor": "middle"}, grid, tickLabel(t));
  }
  for (const t of niceTicks(y0, y1, 5)) {
    s("line", {x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t)}, grid);
    s("text", {x: m.l - 5, y: Y(t) + 4, "text-anchor": "end"}, grid, tickLabel(t));
  }
  s("text", {x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle", class: "axis"}, svg,
    opts.xLabel || "");
  s("text", {x: 12, y: (m.t + H - m.b) / 2, "text-anchor": "middle", class: "axis",
             transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})`}, svg, opts.yLabel || "");
  const pathOf = (xs, ys) => {
    let d = "", pen = false;
    xs.forEach((x, i) => {
      const y = ys[i];
      if (y === null || y === undefined || !isFinite(y)) { pen = false; return; }
      d += (pen ? "L" : "M") + X(x).toFixed(1) + "," + Y(Math.max(y0, Math.min(y1, y))).toFixed(1);
      pen = true;
    });
    return d;
  };
  for (const se of opts.series) {
    if (se.low && se.high) {
      const up = se.xs.map((x, i) => [x, se.high[i]]).filter(p => p[1] !== null);
      const down = se.xs.map((x, i) => [x, se.low[i]]).filter(p => p[1] !== null).reverse();
      if (up.length) {
        const d = up.concat(down).map((p, i) => (i ? "L" : "M") + X(p[0]).toFixed(1) + ","
                                      + Y(p[1]).toFixed(1)).join("") + "Z";
        s("path", {d, fill: se.color, "fill-opacity": 0.15, stroke: "none"}, svg);
      }
    }
  }
  const refs = s("g", {}, svg);
  for (const v of opts.vlines || []) {
    if (v.at === null || v.at === undefined) continue;
    s("line", {x1: X(v.at), x2: X(v.at), y1: m.t, y2: H - m.b, stroke: v.color,
               "stroke-dasharray": v.dash || "", "stroke-width": 1.3}, refs);
  }
  for (const v of opts.hlines || []) {
    if (v.at === null || v.at === undefined) continue;
    s("line", {x1: m.l, x2: W - m.r, y1: Y(v.at), y2: Y(v.at), stroke: v.color,
               "stroke-dasharray": v.dash || "", "stroke-width": 1.2}, refs);
  }
  for (const se of opts.series) {
    s("path", {d: pathOf(se.xs, se.ys), fill: "none", stroke: se.color,
               "stroke-width": se.width || 2, "stroke-dasharray": se.dash || "",
               "stroke-opacity": se.thin ? 0.35 : 1, "data-label": se.label || ""}, svg);
  }
  const marker = s("g", {class: "marker", visibility: "hidden"}, svg);
  const markLine = s("line", {y1: m.t, y2: H - m.b, stroke: "#111", "stroke-width": 1}, marker);
  const dots = opts.series.filter(se => !se.thin).map(se =>
    s("circle", {r: 3.5, fill: se.color, stroke: "white", "stroke-width": 1}, marker));
  const legend = h("div", {class: "legend"}, box);
  for (const se of opts.series) {
    if (se.thin || !se.label) continue;
    const item = h("span", {class: "item"}, legend);
    lineSwatch(item, se.color, se.dash, se.width, !!se.low);
    h("span", {}, item, se.label);
  }
  for (const v of (opts.hlines || []).concat(opts.vlines || [])) {
    if (v.at === null || v.at === undefined || !v.label) continue;
    const item = h("span", {class: "item"}, legend);
    lineSwatch(item, v.color, v.dash, 1.3);
    h("span", {}, item, v.label);
  }
  return {
    setMarker(x) {
      marker.setAttribute("visibility", "visible");
      markLine.setAttribute("x1", X(x));
      markLine.setAttribute("x2", X(x));
      opts.series.filter(se => !se.thin).forEach((se, k) => {
        const i = se.xs.indexOf(x);
        const y = i >= 0 ? se.ys[i] : null;
        const ok = y !== null && y !== undefined && isFinite(y);
        dots[k].setAttribute("visibility", ok ? "visible" : "hidden");
        if (ok) { dots[k].setAttribute("cx", X(x)); dots[k].setAttribute("cy", Y(y)); }
      });
    },
  };
}

function notesBox(parent, notes) {
  if (!notes || !notes.length) return;
  const box = h("div", {class: "notes", id: "notes"}, parent);
  h("strong", {}, box, "Missing or incomplete:");
  const ul = h("ul", {}, box);
  for (const n of notes) h("li", {}, ul, n);
}
