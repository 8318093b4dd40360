// The live experiment page (serving/page): draws the page's JSON document (serving.page.data.page_data) and
// polls it for the next one. Every value goes into the page as text (textContent) or into a chart; no value
// is ever parsed as markup. Each figure cell carries data-path (where its value lies in the JSON report) and
// data-value (the value itself), so a test can check the page against GET /v2/experiments/NAME/report.
"use strict";

(function () {
  const settings = JSON.parse(document.getElementById("page-settings").textContent);
  const tokenKey = "tunestack-page-token:" + settings.experiment;
  let token = "";
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
  // Per-arm columns shown only when some arm has them (the generative path's stream metrics).
  const OPTIONAL_COLUMNS = [
    {key: "ttft_ms", label: "TTFT p50 ms", sub: ["p50", "estimate"]},
    {key: "itl_ms", label: "ITL p50 ms", sub: ["p50", "estimate"]},
  ];
  let drawn = false, lastKey = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function clear(id) {
    const node = document.getElementById(id);
    node.replaceChildren();
    return node;
  }

  function num(x, digits) {
    if (x === null || x === undefined) return "\u2013";
    if (typeof x !== "number") return String(x);
    if (Number.isInteger(x)) return x.toLocaleString("en-US").replace(/,/g, "\u2009");
    return Number(x.toPrecision(digits || 4)).toString();
  }

  function dig(obj, path) {
    return path.reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), obj);
  }

  // A cell showing the report's value at `path`: data-path and data-value say which value it shows.
  function fig(tag, report, path, text, agg) {
    let value = dig(report, path);
    if (agg === "sum") value = Object.values(value || {}).reduce((a, b) => a + b, 0);
    const shown = text === undefined ? num(value) : text(value);
    return el(tag, {"data-path": path.join("\u001f"), "data-value": JSON.stringify(value === undefined ? null : value),
                    "data-agg": agg}, shown);
  }

  function row(cells, tag) {
    return el("tr", {}, ...cells.map((c) => (c instanceof Node ? c : el(tag || "td", {}, c))));
  }

  function escapeForPlotly(s) {  // plotly reads a few tags in its texts: show ours as text
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function renderHeader(doc) {
    const r = doc.report;
    const headline = r.judge ? r.judge.headline : "No verdicts: the judge's unit table is unavailable.";
    const h = clear("headline");
    h.append(fig("span", r, ["judge", "headline"], () => headline));
    document.getElementById("experiment-name").textContent = doc.experiment;
    const state = document.getElementById("state");
    state.textContent = doc.state.state + (doc.state.state === "ramping" ? ` (step ${doc.state.step}, ${doc.state.percent} %)` : "");
    state.className = "state " + doc.state.state.replace(/[^a-z]+/g, "-");
    const newest = doc.timeline[doc.timeline.length - 1];
    document.getElementById("state-why").textContent = newest
      ? `Revision ${newest.revision}, ${newest.at}, by ${newest.who}: ${newest.why}` : "No audit log (no store).";
    const t = clear("arms-spec");
    t.append(row(["arm", "model", "version", "weight", "share now"], "th"));
    doc.spec.arms.forEach((a, i) => t.append(row([
      el("td", {}, a.name, i === 0 ? " (control)" : ""), a.model, a.version || "default", num(a.weight),
      fig("td", r, ["arms", a.name, "share"], (v) => (v === undefined || v === null ? "\u2013" : (100 * v).toFixed(1) + " %")),
    ])));
  }

  function renderSampleRatio(r) {
    const box = clear("sample-ratio");
    if (!r.judge) { box.append(el("p", {}, "No sample-ratio check: no verdicts.")); return; }
    const s = r.judge.sample_ratio, base = ["judge", "sample_ratio"];
    box.append(el("p", {class: s.verdict === "sample ratio mismatch" ? "bad" : "good"},
      fig("strong", r, [...base, "verdict"], (v) => v), ": units' e-value ",
      fig("span", r, [...base, "units_evalue"]), " (a mismatch at ", fig("span", r, [...base, "units_threshold"]), ")."));
    const t = el("table", {});
    t.append(row(["arm", "units observed", "units expected", "requests: observed share", "expected share"], "th"));
    for (const arm of Object.keys(s.units)) {
      t.append(row([arm, fig("td", r, [...base, "units", arm, "observed"]), fig("td", r, [...base, "units", arm, "expected"]),
        fig("td", r, [...base, "requests", arm, "observed_share"]), fig("td", r, [...base, "requests", arm, "expected_share"])]));
    }
    box.append(t);
  }

  function series(doc, treatment, metric) {
    const pts = doc.looks.filter((l) => l.treatments[treatment] && l.treatments[treatment][metric])
      .map((l) => ({at: l.at, m: l.treatments[treatment][metric]}));
    const now = doc.report.judge.treatments[treatment].metrics[metric];
    pts.push({at: Date.parse(doc.report.generated_at) / 1000, m: now});
    const x = pts.map((p) => new Date(p.at * 1000));
    return {x, low: pts.map((p) => p.m.low), high: pts.map((p) => p.m.high), est: pts.map((p) => p.m.estimate)};
  }

  function chart(node, doc, treatment, metric, m) {
    const s = series(doc, treatment, metric);
    const traces = [
      {x: s.x, y: s.low, mode: "lines", line: {width: 0}, hoverinfo: "skip", showlegend: false},
      {x: s.x, y: s.high, mode: "lines", line: {width: 0}, fill: "tonexty", fillcolor: "rgba(31,119,180,0.25)",
       name: "confidence sequence", hoverinfo: "skip"},
      {x: s.x, y: s.est, mode: "lines+markers", line: {color: "#1f77b4"}, marker: {size: 3}, name: "estimate"},
    ];
    const line = (y, dash, color) => ({type: "line", xref: "paper", x0: 0, x1: 1, y0: y, y1: y,
                                       line: {dash, color, width: 1.5}});
    const shapes = [line(0, "solid", "#333")];
    if (m.margin > 0) shapes.push(line(m.margin, "dash", "#999"), line(-m.margin, "dash", "#999"));
    // The range frames the band now and the margins: the first looks' wide bands run off the top and bottom.
    const last = [m.low, m.high, m.estimate].filter((v) => v !== null && v !== undefined).map(Math.abs);
    const reach = Math.max(2.5 * (m.margin || 0), 2 * Math.max(0, ...last)) || 1;
    const layout = {height: 230, margin: {l: 55, r: 10, t: 10, b: 35}, shapes, showlegend: false,
                    yaxis: {zeroline: false, range: [-reach, reach], title: {text: "treatment \u2212 control" + (m.unit || "")}},
                    xaxis: {type: "date"}};
    Plotly.react(node, traces, layout, {displayModeBar: false, responsive: true, staticPlot: settings.static === true});
  }

  function renderVerdicts(doc) {
    const r = doc.report, box = clear("verdicts");
    if (!r.judge) { box.append(el("p", {}, "No verdicts: the judge's unit table is unavailable.")); return; }
    for (const [t, j] of Object.entries(r.judge.treatments)) {
      box.append(el("h3", {}, t + " vs " + r.control));
      const table = el("table", {class: "verdict-table"});
      table.append(row(["metric", "verdict", "estimate", "low", "high", "margin", "n control", "n treatment"], "th"));
      const cards = el("div", {class: "cards"}), charts = [];
      for (const [name, m] of Object.entries(j.metrics)) {
        const base = ["judge", "treatments", t, "metrics", name];
        table.append(row([name.replace(/_/g, " "), fig("td", r, [...base, "verdict"], (v) => v),
          fig("td", r, [...base, "estimate"]), fig("td", r, [...base, "low"]), fig("td", r, [...base, "high"]),
          fig("td", r, [...base, "margin"], (v) => "\u00b1" + num(v) + (m.unit || "")),
          fig("td", r, [...base, "n_control"]), fig("td", r, [...base, "n_treatment"])]));
        const history = doc.looks.some((l) => l.treatments[t] && l.treatments[t][name]);
        if (!history && m.low === null && m.high === null) continue;  // nothing to draw yet (or no interval: drift)
        const plot = el("div", {class: "chart", "data-treatment": t, "data-metric": name});
        cards.append(el("div", {class: "card"}, el("h4", {}, name.replace(/_/g, " ") + ": ",
                                                   el("span", {class: "verdict"}, m.verdict)), plot));
        charts.push([plot, name, m]);
      }
      box.append(table, cards);
      for (const [plot, name, m] of charts) chart(plot, doc, t, name, m);
    }
  }

  function renderRollout(doc) {
    const node = document.getElementById("rollout-chart");
    const t = clear("audit");
    if (!doc.timeline.length) {
      node.replaceChildren(el("p", {}, "No audit log: the router runs without an experiment store."));
      return;
    }
    const arms = doc.spec.arms.map((a) => a.name);
    const end = new Date(Date.parse(doc.report.generated_at));
    const x = doc.timeline.map((a) => new Date(Date.parse(a.at))).concat([end]);
    const share = (a, arm) => {
      const total = Object.values(a.weights).reduce((p, q) => p + q, 0);
      return total > 0 ? 100 * (a.weights[arm] || 0) / total : 0;
    };
    const traces = arms.map((arm, i) => {
      const y = doc.timeline.map((a) => share(a, arm));
      return {x, y: y.concat([y[y.length - 1]]), mode: "lines", line: {shape: "hv", color: COLORS[i % COLORS.length]}, name: arm};
    });
    traces.push({x: x.slice(0, -1), y: doc.timeline.map(() => 102), mode: "markers+text", name: "decisions",
                 text: doc.timeline.map((a) => escapeForPlotly(a.action)), textposition: "top center",
                 hovertext: doc.timeline.map((a) => escapeForPlotly(`revision ${a.revision}, ${a.at}, ${a.who}: ${a.why}`)),
                 hoverinfo: "text", marker: {symbol: "diamond", size: 9, color: "#333"}});
    Plotly.react(node, traces, {height: 260, margin: {l: 55, r: 10, t: 25, b: 35},
                                yaxis: {title: {text: "share of traffic (%)"}, range: [0, 112]}, xaxis: {type: "date"}},
                 {displayModeBar: false, responsive: true, staticPlot: settings.static === true});
    t.append(row(["revision", "at (UTC)", "who", "source", "decision", "why", "weights"], "th"));
    const r = doc.report;
    r.audit.forEach((a, i) => t.append(el("tr", {class: "audit-row"},
      fig("td", r, ["audit", i, "revision"]), fig("td", r, ["audit", i, "at"], (v) => v),
      fig("td", r, ["audit", i, "who"], (v) => v), fig("td", r, ["audit", i, "source"], (v) => v),
      el("td", {class: "decision"}, doc.timeline[i].action), fig("td", r, ["audit", i, "why"], (v) => v),
      el("td", {}, Object.entries(a.weights).map(([k, w]) => `${k} ${num(w)}`).join(", ")))));
  }

  function renderArms(r) {
    const t = clear("arms");
    const extra = OPTIONAL_COLUMNS.filter((c) => Object.values(r.arms).some((a) => a[c.key]));
    t.append(row(["arm", "requests", "server errors", "client errors", "fallbacks in", "p50 ms", "p99 ms",
                  "accuracy", "feedback", ...extra.map((c) => c.label), "label shares"], "th"));
    for (const [name, a] of Object.entries(r.arms)) {
      const base = ["arms", name];
      const labels = Object.entries(a.labels), total = labels.reduce((p, [, n]) => p + n, 0);
      t.append(row([name, fig("td", r, [...base, "requests"]), fig("td", r, [...base, "errors"], undefined, "sum"),
        fig("td", r, [...base, "client_errors"], undefined, "sum"), fig("td", r, [...base, "fallbacks_in"]),
        fig("td", r, [...base, "latency_ms", "p50", "estimate"]), fig("td", r, [...base, "latency_ms", "p99", "estimate"]),
        fig("td", r, [...base, "accuracy", "estimate"]), fig("td", r, [...base, "accuracy", "n"]),
        ...extra.map((c) => fig("td", r, [...base, c.key, ...c.sub])),
        el("td", {class: "labels"}, ...labels.map(([label, n]) => el("span", {class: "label", "data-path": [...base, "labels", label].join("\u001f"),
                                                                       "data-value": JSON.stringify(n)},
                                                                  `${label} ${(100 * n / total).toFixed(1)} % (${num(n)})`)))]));
    }
  }

  function renderDrift(doc) {
    const r = doc.report, t = clear("drift"), th = doc.drift_thresholds;
    if (!r.drift) { t.append(row(["No drift monitoring: the router runs without --model-repository."])); return; }
    t.append(row(["arm", "feature", "texts", `PSI (drifted > ${th.psi})`, `KS p (drifted < ${th.ks_p_value})`, "drifted"], "th"));
    if (!Object.values(r.drift).some((feats) => Object.keys(feats).length)) t.append(row(["\u2013", "no arm has monitored texts yet", "", "", "", ""]));
    for (const [arm, feats] of Object.entries(r.drift)) {
      for (const [f, d] of Object.entries(feats)) {
        const base = ["drift", arm, f];
        t.append(el("tr", {class: d.drifted ? "bad" : ""}, el("td", {}, arm), el("td", {}, f), fig("td", r, [...base, "n"]),
          fig("td", r, [...base, "psi"]), fig("td", r, [...base, "ks_p_value"]), fig("td", r, [...base, "drifted"], (v) => (v ? "yes" : "no"))));
      }
    }
  }

  function render(doc) {
    // Redraw only what changed since the last answer: an idle experiment keeps its charts (and their hover).
    const {generated_at: _, ...rest} = doc.report;
    const key = JSON.stringify([rest, doc.state, doc.looks_total]);
    if (key !== lastKey) drawAll(doc);
    lastKey = key;
    document.body.dataset.generatedAt = doc.report.generated_at;
    document.getElementById("source").textContent = "Data: " + (doc.report.data_source || "embedded") + ".";
    document.getElementById("updated").textContent = (settings.static ? "Snapshot of " : "Updated ") + doc.generated_at +
      ` (${doc.looks_total} looks).`;
    drawn = true;
    document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
  }

  function drawAll(doc) {
    renderHeader(doc);
    renderSampleRatio(doc.report);
    renderVerdicts(doc);
    renderRollout(doc);
    renderArms(doc.report);
    renderDrift(doc);
  }

  // The next poll waits poll_ms, or four times as long as the last answer took when that is longer: a big
  // store's report costs the router seconds, and an open page should never keep it busy.
  async function poll() {
    const started = performance.now();
    try {
      const headers = token ? {Authorization: "Bearer " + token} : {};
      const response = await fetch(settings.data_url, {headers, cache: "no-store"});
      const form = document.getElementById("token-form");
      if (response.status === 401 || response.status === 403) {
        form.hidden = false;
        document.getElementById("token-error").textContent = token ? "wrong token" : "";
        return;
      }
      form.hidden = true;
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      render(await response.json());
    } catch (e) {
      document.getElementById("updated").textContent = "Update failed (" + e.message + "); retrying.";
    } finally {
      window.setTimeout(poll, Math.max(settings.poll_ms || 2000, 4 * (performance.now() - started)));
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      token = document.getElementById("token").value.trim();
      sessionStorage.setItem(tokenKey, token);
    });
    token = sessionStorage.getItem(tokenKey) || "";
    if (settings.data) render(settings.data);
    else poll();
  });
  window.tunestackPage = {rendered: () => drawn};
})();
