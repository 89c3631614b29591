// The chart page: the form's state lives in the URL (share a view by sharing it), each change asks
// /api/series, and the answer is drawn with uPlot, one line per group, gaps where a bin is empty.
"use strict";

const FIELDS = ["table", "value", "agg", "bin", "from", "to", "group_by", "where"];
const COLOURS = ["#2f6fdf", "#e0533d", "#2aa876", "#9b59b6", "#f0a30a", "#17a2b8", "#8d6e63", "#d63384", "#6c757d", "#20c997"];
const $ = (id) => document.getElementById(id);
let tables = [];
let plot = null;
let timer = null;
// A pipeline's admin `token`, from `#token=…` (a fragment never reaches a server's logs).
const TOKEN = new URLSearchParams(location.hash.slice(1)).get("token");
const AUTH = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};

function fromUrl() {
  const q = new URLSearchParams(location.search);
  const state = {};
  for (const f of FIELDS) if (q.has(f)) state[f] = q.get(f);
  state.refresh = q.get("refresh") || (window.TRIBUTARY_LIVE && !q.has("refresh") ? "30s" : "");
  return state;
}

function formState() {
  const state = {};
  for (const f of FIELDS) {
    const v = $(f).value.trim();
    if (v !== "" && !(f === "bin" && v === "auto")) state[f] = v;
  }
  return state;
}

function setOptions(select, names, chosen, blank) {
  select.innerHTML = "";
  if (blank) select.add(new Option(blank, ""));
  for (const n of names) select.add(new Option(n, n));
  if (chosen !== undefined && [...select.options].some((o) => o.value === chosen)) select.value = chosen;
}

function ensureOption(select, value) {
  if (value && ![...select.options].some((o) => o.value === value)) select.add(new Option(value, value));
  if (value !== undefined) select.value = value;
}

// What the URL leaves out comes from the table's default view (the server reads it from the
// data: the time it covers, a measurement, a low-cardinality grouping, a bin its rows fill).
function fillColumns(state) {
  const t = tables.find((x) => x.name === $("table").value);
  const cols = t ? t.columns : [];
  const view = (t && t.default) || {};
  const numeric = cols.filter((c) => c.numeric).map((c) => c.name);
  const value = state.value || view.value || numeric[0] || (cols[0] && cols[0].name);
  setOptions($("value"), numeric.length ? numeric : cols.map((c) => c.name), value);
  ensureOption($("value"), value);
  const group = state.group_by !== undefined ? state.group_by : view.group_by || "";
  setOptions($("group_by"), cols.filter((c) => c.name !== (t && t.time_column)).map((c) => c.name), group, "(none)");
  $("from").value = state.from || view.from || "now-6h";
  $("to").value = state.to || view.to || "now";
  if (state.bin) ensureOption($("bin"), state.bin);
  else if (view.bin) ensureOption($("bin"), view.bin);
  else $("bin").value = "auto";
  $("status").textContent = t
    ? `${t.name}: ${t.rows.toLocaleString()} rows` + (t.first ? `, ${t.first} … ${t.last}` : "") + (t.time_column ? ` (time: ${t.time_column})` : "")
    : "";
}

function showErrors(errors) {
  const box = $("error");
  box.innerHTML = "";
  if (!errors || errors.length === 0) {
    box.hidden = true;
    return;
  }
  const list = document.createElement("ul");
  for (const e of errors) {
    const li = document.createElement("li");
    li.dataset.parameter = e.parameter;
    li.textContent = `${e.parameter}: ${e.message}`;
    list.appendChild(li);
  }
  box.append("The server refused this view:", list);
  box.hidden = false;
}

// uPlot shows times in a named zone: UTC, or Etc/GMT∓h for a whole-hour offset.
function zoneOf(tz) {
  const m = /^([+-])(\d\d):?(\d\d)$/.exec(tz || "");
  if (!m || m[3] !== "00") return "Etc/UTC";
  const h = parseInt(m[2], 10);
  return h === 0 ? "Etc/UTC" : `Etc/GMT${m[1] === "+" ? "-" : "+"}${h}`;
}

function draw(answer) {
  const chart = $("chart");
  const xs = (answer.series[0] ? answer.series[0].points : []).map((p) => Date.parse(p[0]) / 1000);
  const data = [xs, ...answer.series.map((s) => s.points.map((p) => p[1]))];
  const label = (s) => (s.group === null ? (answer.group_by ? "(null)" : `${answer.agg}(${answer.value})`) : s.group);
  const zone = zoneOf(answer.tz);
  const opts = {
    width: Math.max(chart.clientWidth - 2, 320),
    height: 400,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), zone),
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: true } },
    series: [{ label: "bin" }, ...answer.series.map((s, i) => ({ label: label(s), stroke: COLOURS[i % COLOURS.length], width: 1.5, spanGaps: false, points: { show: xs.length <= 120 } }))],
    axes: [{}, { label: `${answer.agg}(${answer.value}) per ${answer.bin}` }],
  };
  if (plot) plot.destroy();
  chart.innerHTML = "";
  plot = new uPlot(opts, data, chart);
  chart.dataset.series = String(answer.series.length);
  chart.dataset.bins = String(xs.length);
  chart.dataset.view = `${answer.table}: ${answer.agg}(${answer.value})` + (answer.group_by ? ` by ${answer.group_by}` : "");
  const body = $("summary").tBodies[0];
  body.innerHTML = "";
  for (const s of answer.series) {
    const row = body.insertRow();
    row.dataset.group = label(s);
    row.insertCell().textContent = label(s);
    const bins = row.insertCell();
    bins.className = "n";
    bins.textContent = String(s.points.length);
    const filled = row.insertCell();
    filled.className = "n";
    filled.textContent = String(s.points.filter((p) => p[1] !== null).length);
  }
  $("status").textContent = `${answer.series.length} series × ${xs.length} bins of ${answer.bin}, ${answer.from} … ${answer.to}`;
  document.body.dataset.state = "drawn";
}

async function refresh() {
  const state = formState();
  const query = new URLSearchParams(state);
  const every = $("refresh").checked ? $("every").value : "";
  const shown = new URLSearchParams(query);
  if (every) shown.set("refresh", every);
  else if (window.TRIBUTARY_LIVE) shown.set("refresh", "off");
  history.replaceState(null, "", "?" + shown.toString() + location.hash);
  try {
    const res = await fetch("/api/series?" + query.toString(), { headers: { Accept: "application/json", ...AUTH } });
    const body = await res.json();
    if (!res.ok) {
      showErrors(body.errors);
      document.body.dataset.state = "refused";
      return;
    }
    showErrors([]);
    draw(body);
  } catch (e) {
    showErrors([{ parameter: "network", message: String(e) }]);
    document.body.dataset.state = "failed";
  }
  schedule();
}

function schedule() {
  clearTimeout(timer);
  if (!$("refresh").checked) return;
  const m = /^(\d+)(s|m)$/.exec($("every").value);
  const ms = m ? parseInt(m[1], 10) * (m[2] === "m" ? 60000 : 1000) : 30000;
  timer = setTimeout(refresh, ms);
}

async function start() {
  const state = fromUrl();
  for (const f of ["agg", "where"]) if (state[f] !== undefined) $(f).value = state[f];
  if (state.refresh && state.refresh !== "off") {
    $("refresh").checked = true;
    ensureOption($("every"), state.refresh);
  }
  try {
    const res = await fetch("/api/tables", { headers: AUTH });
    const body = await res.json();
    if (!res.ok) return showErrors(body.errors);
    tables = body.tables;
  } catch (e) {
    return showErrors([{ parameter: "network", message: String(e) }]);
  }
  // Without a table in the URL, the first that has rows (a pipeline's sinks in its file's order).
  const first = tables.find((t) => t.rows > 0) || tables[0];
  setOptions($("table"), tables.map((t) => t.name), state.table || (first && first.name));
  if (state.table) ensureOption($("table"), state.table);
  fillColumns(state);
  $("table").addEventListener("change", () => {
    fillColumns({});
    refresh();
  });
  for (const f of ["value", "agg", "bin", "group_by"]) $(f).addEventListener("change", refresh);
  $("refresh").addEventListener("change", refresh);
  $("every").addEventListener("change", refresh);
  $("controls").addEventListener("submit", (e) => {
    e.preventDefault();
    refresh();
  });
  window.addEventListener("resize", () => plot && plot.setSize({ width: Math.max($("chart").clientWidth - 2, 320), height: 400 }));
  if (tables.length === 0) {
    showErrors([{ parameter: "table", message: "no tables yet: run a pipeline with a parquet sink" }]);
    return;
  }
  refresh();
}

start();
