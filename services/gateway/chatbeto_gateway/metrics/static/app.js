// chatbeto metrics dashboard: plain JS, no build step. Reads /api/gpts, /api/gpts/{id}/stats
// and the live stream /api/gpts/{id}/live, always with the key as a header (never in a URL).
"use strict";

const KEY_STORAGE = "chatbeto.key";
const GPT_STORAGE = "chatbeto.gpt";
const LIVE_FEED_MAX = 50;
const REFRESH_DEBOUNCE_MS = 250;
const BACKOFF_MAX_MS = 15000;

const $ = (id) => document.getElementById(id);
const state = { key: null, gpt: null, gpts: [], charts: {}, live: null, liveTry: 0, refreshTimer: null, loadSeq: 0 };

// ---- the key: from the fragment once, then session storage --------------------------------

function readFragment() {
  const hash = window.location.hash.replace(/^#/, "");
  if (!hash) return;
  const params = new URLSearchParams(hash);
  if (params.get("key")) sessionStorage.setItem(KEY_STORAGE, params.get("key"));
  if (params.get("gpt")) sessionStorage.setItem(GPT_STORAGE, params.get("gpt"));
  // Out of the address bar (and history) at once: a fragment is never sent to a server, but
  // it should not linger where someone can read it over a shoulder.
  history.replaceState(null, "", window.location.pathname + window.location.search);
}

function showMessage(text) {
  const el = $("message");
  el.textContent = text;
  el.hidden = !text;
}

function showLogin(message) {
  stopLive();
  state.key = null;
  sessionStorage.removeItem(KEY_STORAGE);
  $("dashboard").hidden = true;
  $("forget-key").hidden = true;
  $("live-status").hidden = true;
  $("login").hidden = false;
  showMessage(message || "");
  $("key-input").focus();
}

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path) {
  const resp = await fetch(path, { headers: { "X-API-Key": state.key, Accept: "application/json" }, cache: "no-store" });
  if (!resp.ok) {
    let message = resp.statusText;
    try { message = (await resp.json()).error.message; } catch (_) { /* not JSON */ }
    throw new HttpError(resp.status, message);
  }
  return resp.json();
}

function handleError(err) {
  if (err instanceof HttpError && err.status === 401) {
    showLogin("That API key was not accepted (401): it is wrong, revoked or expired. Check it and try again.");
  } else if (err instanceof HttpError && err.status === 429) {
    showMessage("Too many requests for this key; the dashboard will catch up shortly.");
  } else if (err instanceof HttpError && err.status === 404) {
    showMessage("This GPT does not exist or this key may not see it.");
  } else {
    showMessage("The gateway did not answer: " + (err.message || err));
  }
}

// ---- period -----------------------------------------------------------------------------

function utcDay(d) { return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate())); }
function addDays(d, n) { return new Date(d.getTime() + n * 86400000); }
function isoDate(d) { return d.toISOString().slice(0, 10); }

// Presets are whole UTC days ending tomorrow 00:00, so they read mostly from the rollups.
function period() {
  const kind = $("period").value;
  const tomorrow = addDays(utcDay(new Date()), 1);
  if (kind === "day") return { from: addDays(tomorrow, -1), to: tomorrow, bucket: "hour" };
  if (kind === "week") return { from: addDays(tomorrow, -7), to: tomorrow, bucket: "day" };
  if (kind === "month") return { from: addDays(tomorrow, -30), to: tomorrow, bucket: "day" };
  const from = $("from").value ? new Date($("from").value + "T00:00:00Z") : addDays(tomorrow, -30);
  const to = $("to").value ? addDays(new Date($("to").value + "T00:00:00Z"), 1) : tomorrow;
  const days = (to - from) / 86400000;
  return { from, to, bucket: days <= 2 ? "hour" : days <= 120 ? "day" : days <= 730 ? "week" : "month" };
}

function bucketLabel(iso, bucket) {
  const d = new Date(iso);
  if (bucket === "hour") return d.toISOString().slice(11, 16);
  if (bucket === "month") return d.toISOString().slice(0, 7);
  return d.toISOString().slice(5, 10);
}

// ---- rendering --------------------------------------------------------------------------

const fmt = new Intl.NumberFormat("en-US");
function setNumber(id, value, digits) {
  const el = $(id);
  el.dataset.value = value === null || value === undefined ? "" : String(value);
  el.textContent = value === null || value === undefined ? "–" : digits ? value.toFixed(digits) : fmt.format(value);
}

// Dollars: cents for big amounts, significant digits for the tiny ones a few calls cost.
function setMoney(id, value) {
  const el = $(id);
  el.dataset.value = value === null || value === undefined ? "" : String(value);
  el.textContent = value === null || value === undefined ? "–"
    : value === 0 ? "$0" : value >= 1 ? "$" + value.toFixed(2) : "$" + value.toPrecision(3);
}

function chart(id, config) {
  if (state.charts[id]) {
    state.charts[id].data = config.data;
    state.charts[id].update("none");
    return;
  }
  const base = {
    responsive: true, maintainAspectRatio: false, animation: false,
    plugins: { legend: { display: config.legend !== false, position: "bottom" } },
    // Counts and milliseconds: whole-number ticks.
    scales: { y: { beginAtZero: true, ticks: { precision: 0 } } },
  };
  state.charts[id] = new Chart($(id), { type: config.type, data: config.data, options: Object.assign(base, config.options || {}) });
}

function render(stats) {
  const bucket = stats.bucket;
  const labels = stats.series.map((p) => bucketLabel(p.bucket, bucket));
  setNumber("sessions-total", stats.totals.sessions);
  setNumber("events-total", stats.totals.events);
  setNumber("latency-avg", stats.latency.avg === null ? null : Math.round(stats.latency.avg));
  $("latency-p95").textContent = stats.latency.p95 === null ? "" : "p95 " + Math.round(stats.latency.p95) + " ms";
  setNumber("tokens-entrada", stats.tokens.entrada);
  setNumber("tokens-salida", stats.tokens.salida);
  const cost = stats.cost ? stats.cost.usd : null;
  setMoney("cost-total", cost);
  $("cost-note").textContent = cost === null ? "no priced model calls" : "";
  $("percentile-note").textContent = stats.latency.percentiles === "histogram"
    ? "Percentiles are estimated from a latency histogram (large period)." : "";
  chart("chart-sessions", {
    type: "bar", legend: false,
    data: { labels, datasets: [{ label: "sessions", data: stats.series.map((p) => p.sessions), backgroundColor: "#2563eb" }] },
  });
  const types = stats.eventTypes.slice(0, 10);
  chart("chart-types", {
    type: "bar", legend: false, options: { indexAxis: "y", scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
    data: { labels: types.map((t) => t.tipo), datasets: [{ label: "events", data: types.map((t) => t.count), backgroundColor: "#7c3aed" }] },
  });
  chart("chart-latency", {
    type: "line",
    data: { labels, datasets: [
      { label: "average", data: stats.series.map((p) => p.latencyAvg), borderColor: "#059669", backgroundColor: "#059669", spanGaps: true },
      { label: "p95", data: stats.series.map((p) => p.latencyP95), borderColor: "#dc6803", backgroundColor: "#dc6803", spanGaps: true },
    ] },
  });
  chart("chart-tokens", {
    type: "bar",
    data: { labels, datasets: [
      { label: "in (entrada)", data: stats.series.map((p) => p.tokensEntrada), backgroundColor: "#0891b2" },
      { label: "out (salida)", data: stats.series.map((p) => p.tokensSalida), backgroundColor: "#f59e0b" },
    ] },
  });
  chart("chart-cost", {
    type: "bar", legend: false,
    // Dollars, not counts: no whole-number ticks here.
    options: { scales: { y: { beginAtZero: true } } },
    data: { labels, datasets: [{ label: "USD", data: stats.series.map((p) => (p.cost ? p.cost.usd : null)), backgroundColor: "#16a34a" }] },
  });
  const tbody = $("users-table").querySelector("tbody");
  tbody.replaceChildren(...stats.users.map((u) => {
    const tr = document.createElement("tr");
    for (const [text, cls] of [[u.usuario_id, ""], [fmt.format(u.sessions), "num"], [fmt.format(u.events), "num"],
      [u.lastSeen ? u.lastSeen.replace("T", " ").slice(0, 19) : "–", ""]]) {
      const td = document.createElement("td");
      td.textContent = text;  // textContent: user ids are data, never markup
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  }));
}

const PERIOD_NAMES = { day: "Today", week: "Last 7 days", month: "Last 30 days", custom: "Custom period" };

// What the numbers cover, in words and dates: "Last 30 days: 2026-11-02 to 2026-12-01 (UTC)".
function describePeriod(p) {
  const first = isoDate(p.from), last = isoDate(addDays(p.to, -1));
  const days = first === last ? first : first + " to " + last;
  return PERIOD_NAMES[$("period").value] + ": " + days + " (UTC)";
}

// Nothing in the period, but there was activity before: say when, so an empty page is explained.
function notePeriod(stats) {
  const gpt = state.gpts.find((g) => g.id === state.gpt);
  const empty = !stats.totals.sessions && !stats.totals.events;
  const last = gpt && gpt.lastEventAt;
  $("period-note").textContent = empty && last
    ? "Nothing in this period; the last event was on " + last.slice(0, 10) + "." : "";
  $("period-note").hidden = !$("period-note").textContent;
}

async function loadStats() {
  if (!state.gpt) return;
  const p = period();
  $("range-label").textContent = describePeriod(p);
  const seq = ++state.loadSeq;
  const query = new URLSearchParams({ from: p.from.toISOString(), to: p.to.toISOString(), bucket: p.bucket });
  try {
    const stats = await api("/api/gpts/" + encodeURIComponent(state.gpt) + "/stats?" + query);
    if (seq !== state.loadSeq) return;  // a newer request is under way
    render(stats);
    notePeriod(stats);
    showMessage("");
    document.body.dataset.loaded = String(seq);
  } catch (err) {
    handleError(err);
  }
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(loadStats, REFRESH_DEBOUNCE_MS);
}

// ---- live -------------------------------------------------------------------------------

function setLiveStatus(text, cls) {
  const el = $("live-status");
  el.hidden = false;
  el.textContent = text;
  el.className = "status " + cls;
}

function stopLive() {
  if (state.live) state.live.abort();
  state.live = null;
}

function addToFeed(events) {
  const feed = $("live-feed");
  $("live-empty").hidden = true;
  for (const e of events) {
    const li = document.createElement("li");
    li.className = "new";
    li.dataset.eventId = e.id;
    li.textContent = `${e.timestamp.slice(11, 19)} · ${e.usuario_id} · ${e.tipo} · ${e.latency_ms} ms · ${e.tokens_entrada}/${e.tokens_salida} tok`;
    feed.prepend(li);
  }
  while (feed.children.length > LIVE_FEED_MAX) feed.lastChild.remove();
}

// EventSource can't send headers, so the stream is read with fetch() and parsed here.
async function startLive() {
  stopLive();
  const controller = new AbortController();
  state.live = controller;
  const gpt = state.gpt;
  try {
    const resp = await fetch("/api/gpts/" + encodeURIComponent(gpt) + "/live", {
      headers: { "X-API-Key": state.key, Accept: "text/event-stream" }, cache: "no-store", signal: controller.signal,
    });
    if (resp.status === 401) { handleError(new HttpError(401, "unauthorized")); return; }
    if (!resp.ok || !resp.body) throw new Error("live stream answered " + resp.status);
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (event === "ready") {
          // (Re)connected: anything missed while away is in the stats.
          if (state.liveTry > 0) scheduleRefresh();
          state.liveTry = 0;
          setLiveStatus("live", "live");
        } else if (event === "events" && data) {
          addToFeed(JSON.parse(data).events);
          scheduleRefresh();
        }
      }
    }
  } catch (err) {
    if (controller.signal.aborted) return;
  }
  if (controller.signal.aborted || state.live !== controller) return;
  // The stream ended (gateway restart, network): reconnect with capped, jittered backoff.
  const delay = Math.min(BACKOFF_MAX_MS, 500 * 2 ** state.liveTry) * (0.75 + Math.random() / 2);
  state.liveTry += 1;
  setLiveStatus("reconnecting…", "down");
  setTimeout(() => { if (state.live === controller) startLive(); }, delay);
}

// ---- start ------------------------------------------------------------------------------

async function openDashboard() {
  let gpts;
  try {
    gpts = await api("/api/gpts");
  } catch (err) {
    handleError(err);
    return;
  }
  showMessage("");
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("forget-key").hidden = false;
  const select = $("gpt");
  select.replaceChildren(...gpts.map((g) => new Option(`${g.name} (${g.id})`, g.id)));
  if (!gpts.length) { showMessage("This key sees no GPTs yet: register one with POST /api/gpts."); return; }
  state.gpts = gpts;
  const wanted = sessionStorage.getItem(GPT_STORAGE);
  state.gpt = gpts.some((g) => g.id === wanted) ? wanted : mostRecentlyActive(gpts).id;
  select.value = state.gpt;
  await loadStats();
  startLive();
}

// The user's own GPT with the newest event (then the newest registered); the built-in
// `chatbeto` only when the key sees no other.
function mostRecentlyActive(gpts) {
  const own = gpts.filter((g) => !g.builtin);
  const time = (iso) => (iso ? Date.parse(iso) : -Infinity);
  return (own.length ? own : gpts).slice().sort((a, b) =>
    time(b.lastEventAt) - time(a.lastEventAt) || time(b.createdAt) - time(a.createdAt))[0];
}

function init() {
  readFragment();
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("key-input").value.trim();
    $("key-input").value = "";
    sessionStorage.setItem(KEY_STORAGE, state.key);
    openDashboard();
  });
  $("forget-key").addEventListener("click", () => showLogin(""));
  $("gpt").addEventListener("change", () => {
    state.gpt = $("gpt").value;
    sessionStorage.setItem(GPT_STORAGE, state.gpt);
    $("live-feed").replaceChildren();
    $("live-empty").hidden = false;
    loadStats();
    startLive();
  });
  $("period").addEventListener("change", () => {
    $("custom-range").hidden = $("period").value !== "custom";
    loadStats();
  });
  $("from").addEventListener("change", loadStats);
  $("to").addEventListener("change", loadStats);
  state.key = sessionStorage.getItem(KEY_STORAGE);
  if (state.key) openDashboard(); else showLogin("");
}

init();
