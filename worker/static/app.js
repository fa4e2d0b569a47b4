// acetrack's dashboard: plain JS over the HTTP API (fetch) and /events (EventSource); no build step.
// Every value from the API goes into the page as text (never as HTML): ids and meta are user data.
"use strict";

const TOKEN_KEY = "acetrack-token";
const REFRESH_MS = 2000;
const SEARCH_DELAY_MS = 300; // typing: search once the keys pause, not on every one
const $ = (sel) => document.querySelector(sel);
const state = { cursors: [null], page: 0, nextCursor: null, records: [], scan: null, source: null, detail: null };

const SVG_NS = "http://www.w3.org/2000/svg";
const SVG_TAGS = new Set(["line", "rect", "circle", "polyline", "text"]);

function el(tag, attrs, ...children) {
  const node = SVG_TAGS.has(tag) ? document.createElementNS(SVG_NS, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), (e) => Promise.resolve(v(e)).catch(report));
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

// an action that failed (a 409, Redis away) is said on the page, not thrown into the console
function report(error) {
  if (error instanceof Unauthorized) { showLogin(error); return; }
  const box = $("#message");
  box.textContent = String(error.message || error);
  box.hidden = false;
  setTimeout(() => { box.hidden = true; }, 8000);
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

class Unauthorized extends Error {}

async function api(method, path) {
  const headers = token() ? { authorization: "Bearer " + token() } : {};
  const resp = await fetch(path, { method, headers });
  if (resp.status === 401) throw new Unauthorized();
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
  return body;
}

function age(ms) {
  if (ms === null || ms === undefined) return "";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 120 ? s + " s" : s < 7200 ? Math.round(s / 60) + " min" : Math.round(s / 3600) + " h";
}

function stateCell(value) { return el("span", { class: "state state-" + value }, value); }

// -- overview ---------------------------------------------------------------------------------------

function renderStats(stats) {
  const t = stats.totals;
  const backlog = Object.values(stats.backlog).reduce((a, b) => a + b, 0);
  const oldest = Math.max(0, ...Object.values(stats.services).map((s) => s.oldest_pending_age_s || 0));
  const card = (label, value) => el("div", { class: "card" }, el("b", {}, value), label);
  $("#totals").replaceChildren(card("pending", t.pending), card("succeeded", t.succeeded), card("failed", t.failed),
    card("backlog (due now)", backlog), card("oldest pending", oldest + " s"), card("live workers", stats.workers.length));
  const rows = Object.entries(stats.services).map(([name, s]) => {
    const due = Object.entries(stats.backlog).filter(([q]) => q.split(":")[0] === name).reduce((a, [, n]) => a + n, 0);
    const oldestAge = s.oldest_pending_age_s === null ? "" : s.oldest_pending_age_s + " s";
    return el("tr", {}, el("td", {}, name), el("td", {}, s.pending), el("td", {}, s.succeeded), el("td", {}, s.failed),
      el("td", {}, oldestAge), el("td", {}, due));
  });
  $("#services tbody").replaceChildren(...rows);
  renderWorkers(stats.workers, stats.paused_tokens);
}

function renderWorkers(workers, paused) {
  $("#workers tbody").replaceChildren(...workers.map((w) => el("tr", {},
    el("td", {}, w.worker_id), el("td", {}, age(w.at_ms) + " ago"), el("td", {}, w.claims ?? ""),
    el("td", {}, w.accepted ?? ""), el("td", {}, w.ready === false ? "no" : "yes"),
    el("td", {}, (w.paused_tokens || []).join(", ")), el("td", {}, (w.warnings || []).join("; ")))));
  $("#paused").textContent = paused.length ? "Paused tokens: " + paused.join(", ") : "No token is paused.";
}

// -- charts (SVG, drawn by hand: three small charts need no library) ----------------------------------

const W = 360, H = 140, PAD = 24;

function scale(values, height) {
  const max = Math.max(1, ...values.filter((v) => v !== null));
  return { max, y: (v) => H - PAD - (v / max) * (height - PAD - 8) };
}

function axes(svg, max, unit) {
  svg.replaceChildren(
    el("line", { class: "axis", x1: PAD, y1: H - PAD, x2: W - 4, y2: H - PAD }),
    el("text", { x: 2, y: 12 }, Math.round(max * 10) / 10 + unit),
    el("text", { x: PAD, y: H - 8 }, "-60 min"), el("text", { x: W - 30, y: H - 8 }, "now"));
}

function xOf(minuteMs) { return PAD + ((minuteMs - (Date.now() - 3600e3)) / 3600e3) * (W - PAD - 8); }

function drawFinished(finished) {
  const svg = $("#chart-finished"), s = scale(finished.map((m) => m.succeeded + m.failed), H);
  axes(svg, s.max, "");
  for (const m of finished.filter((m) => m.succeeded + m.failed > 0)) {
    const x = xOf(m.minute_ms), okTop = s.y(m.succeeded), top = s.y(m.succeeded + m.failed);
    svg.append(el("rect", { class: "bar bar-ok", x, y: okTop, width: 4, height: H - PAD - okTop }),
      el("rect", { class: "bar bar-bad", x, y: top, width: 4, height: okTop - top }));
  }
}

function polyline(svg, points, cls) {
  if (points.length) svg.append(el("polyline", { class: cls, points: points.map((p) => p.join(",")).join(" ") }));
  for (const [x, y] of points) svg.append(el("circle", { class: "pt " + cls, cx: x, cy: y, r: 2 }));
}

function legend(svg, items) {
  items.forEach(([label, cls], i) => svg.append(el("text", { class: "legend " + cls, x: W - 70 + i * 34, y: 12 }, label)));
}

function drawLatency(finished) {
  const svg = $("#chart-latency"), withData = finished.filter((m) => m.p95_ms !== null);
  const s = scale(withData.map((m) => m.p95_ms / 1000), H);
  axes(svg, s.max, " s");
  polyline(svg, withData.map((m) => [xOf(m.minute_ms), s.y(m.p50_ms / 1000)]), "p50");
  polyline(svg, withData.map((m) => [xOf(m.minute_ms), s.y(m.p95_ms / 1000)]), "p95");
  legend(svg, [["p50", "p50"], ["p95", "p95"]]);
}

function drawRequests(requests, budget) {
  const svg = $("#chart-requests"), s = scale([...requests.map((m) => m.requests), budget], H);
  axes(svg, s.max, "/min");
  svg.append(el("line", { class: "budget", x1: PAD, x2: W - 4, y1: s.y(budget), y2: s.y(budget) }));
  polyline(svg, requests.map((m) => [xOf(m.minute_ms), s.y(m.requests)]), "req");
  svg.append(el("text", { class: "legend budget-label", x: W - 110, y: s.y(budget) + 11 }, "budget per token"));
}

function renderSeries(series) {
  drawFinished(series.finished);
  drawLatency(series.finished);
  drawRequests(series.requests, series.budget_per_minute);
}

// -- tasks ------------------------------------------------------------------------------------------

function listPath() {
  const q = new URLSearchParams({ limit: "50" });
  if ($("#filter-service").value) q.set("service", $("#filter-service").value.trim());
  if ($("#filter-state").value) q.set("state", $("#filter-state").value);
  if ($("#filter-q").value.trim()) q.set("q", $("#filter-q").value.trim()); // searched by the server, all tasks
  if (state.cursors[state.page]) q.set("cursor", state.cursors[state.page]);
  return "/tasks?" + q;
}

function clipsCell(record) {
  return record.clips.map((c) => el("div", { class: "clip" }, (c.title || c.id) + " · ", stateCell(c.state),
    c.state === "succeeded" && c.audio_url ? el("audio", { controls: true, preload: "none", src: c.audio_url }) : ""));
}

function actions(record) {
  if (record.state === "pending") return el("button", { class: "cancel", onclick: () => act("DELETE", record) }, "cancel");
  return el("button", { class: "reopen", onclick: () => act("POST", record, "/reopen") }, "reopen");
}

function taskRow(r) {
  const link = el("a", { class: "task", onclick: () => openTask(r.service, r.id) }, r.id);
  const progress = r.progress === null ? "" : r.progress + "%";
  return el("tr", { "data-key": r.service + "/" + r.id }, el("td", {}, r.service), el("td", {}, link),
    el("td", { class: "state-cell" }, stateCell(r.state), r.reason ? " (" + r.reason + ")" : ""),
    el("td", {}, age(r.enqueued_at_ms)), el("td", {}, progress), el("td", {}, clipsCell(r)), el("td", {}, actions(r)));
}

function renderTasks() {
  $("#tasks tbody").replaceChildren(...state.records.map(taskRow));
  $("#prev").disabled = state.page === 0;
  $("#next").disabled = !state.nextCursor;
  $("#search-note").textContent = searchNote(state.scan);
}

// a search examines a bounded stretch of tasks per page: say so when that, not the end, stopped it
function searchNote(scan) {
  if (!scan) return "";
  if (scan.scan_bound) return `searched ${scan.scanned} tasks so far: next → searches on`;
  return scan.tasks.length ? "" : "no task matches";
}

async function act(method, record, suffix = "") {
  await api(method, `/tasks/${encodeURIComponent(record.service)}/${encodeURIComponent(record.id)}${suffix}`);
  await refresh();
  if (state.detail) await openTask(record.service, record.id);
}

// -- one task: record, events (live), deliveries ------------------------------------------------------

async function openTask(service, id) {
  const path = `/tasks/${encodeURIComponent(service)}/${encodeURIComponent(id)}`;
  const [record, hooks] = await Promise.all([api("GET", path), api("GET", "/hooks")]);
  const mine = hooks.deliveries.filter((d) => d.event && d.event.service === service && d.event.id === id);
  const events = el("ul", { id: "task-events" });
  const box = $("#task-detail");
  box.replaceChildren(el("h2", {}, `Task ${service}/${id} `, stateCell(record.state)),
    el("button", { onclick: closeTask }, "close"), " ", actions(record),
    el("h3", {}, "Events"), events, el("h3", {}, "Deliveries"), deliveriesTable(mine),
    el("h3", {}, "Record"), el("pre", {}, JSON.stringify(record, null, 2)));
  box.hidden = false;
  if (state.detail) state.detail.close();
  state.detail = stream({ service, id, after: "0-0" }, (e) => events.append(el("li", {},
    new Date(e.at_ms).toLocaleTimeString() + " " + e.type + " → " + e.state + (e.reason ? " (" + e.reason + ")" : ""))));
}

function deliveriesTable(deliveries) {
  const rows = deliveries.map((d) => el("tr", {}, el("td", {}, d.destination), el("td", {}, d.status),
    el("td", {}, d.attempts.map((a) => el("div", {}, new Date(a.at_ms).toLocaleTimeString() + " " +
      (a.ok ? "ok" : (a.status || "") + " " + (a.error || "")))))));
  return el("table", {}, el("tr", {}, el("th", {}, "destination"), el("th", {}, "status"), el("th", {}, "attempts")), rows);
}

function closeTask() {
  if (state.detail) state.detail.close();
  state.detail = null;
  $("#task-detail").hidden = true;
}

// -- dead letters ----------------------------------------------------------------------------------

function renderDead(deliveries) {
  $("#dead tbody").replaceChildren(...deliveries.map((d) => el("tr", { "data-delivery": d.delivery_id },
    el("td", {}, d.delivery_id), el("td", {}, d.event ? d.event.service + "/" + d.event.id : ""),
    el("td", {}, d.destination), el("td", {}, d.attempts.length),
    el("td", {}, el("button", { class: "replay", onclick: () => replay(d.delivery_id) }, "replay")))));
}

function renderDisabled(urls) {
  $("#disabled tbody").replaceChildren(...urls.map((u) => el("tr", { "data-url": u.url }, el("td", {}, u.url),
    el("td", {}, age(u.disabled_at_ms) + " ago"),
    el("td", {}, el("button", { class: "enable", onclick: () => enableUrl(u.url) }, "enable")))));
}

async function enableUrl(url) {
  const headers = { "content-type": "application/json" };
  if (token()) headers.authorization = "Bearer " + token();
  const resp = await fetch("/hooks/enable", { method: "POST", headers, body: JSON.stringify({ url }) });
  if (resp.status === 401) throw new Unauthorized();
  await refresh();
}

async function replay(deliveryId) {
  await api("POST", `/hooks/${encodeURIComponent(deliveryId)}/replay`);
  await refresh();
}

// -- live updates ----------------------------------------------------------------------------------

function stream(filters, onEvent) {
  const q = new URLSearchParams(filters);
  if (token()) q.set("access_token", token()); // EventSource cannot send headers
  const source = new EventSource("/events?" + q);
  for (const type of ["task.succeeded", "task.failed", "task.progress", "clip.succeeded"]) {
    source.addEventListener(type, (msg) => onEvent(JSON.parse(msg.data)));
  }
  return source;
}

function onLiveEvent(event) {
  const i = state.records.findIndex((r) => r.service === event.service && r.id === event.id);
  if (i < 0) return;
  if (event.record) {
    state.records[i] = event.record; // a task's end carries its whole record
  } else { // progress and clip events carry what changed
    const record = { ...state.records[i], state: event.state, progress: event.progress };
    if (event.clip) record.clips = record.clips.map((c) => (c.id === event.clip.id ? event.clip : c));
    state.records[i] = record;
  }
  renderTasks();
}

let refreshing = null;
async function refresh() {
  // one refresh at a time: a slow answer must not be overwritten by an older one
  refreshing = refreshing || Promise.all([api("GET", "/stats"), api("GET", listPath()),
    api("GET", "/hooks?dead=1"), api("GET", "/stats/series"), api("GET", "/hooks/disabled")])
    .then(([stats, page, dead, series, disabled]) => {
    renderStats(stats);
    state.records = page.tasks;
    state.nextCursor = page.next_cursor;
    state.scan = page.scanned === undefined ? null : page;
    renderTasks();
    renderDead(dead.deliveries);
    renderSeries(series);
    renderDisabled(disabled.urls);
  }).finally(() => { refreshing = null; });
  return refreshing;
}

function page(step) {
  if (step > 0 && state.nextCursor) { state.cursors[state.page + 1] = state.nextCursor; state.page += 1; }
  if (step < 0 && state.page > 0) state.page -= 1;
  refresh();
}

// a filter changed: back to the first page, once a refresh under way (with the old filters) is done
async function restart() {
  state.cursors = [null];
  state.page = 0;
  if (refreshing) await refreshing.catch(() => {});
  await refresh();
}

let searchTimer = null;
function searchSoon() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => restart().catch(report), SEARCH_DELAY_MS);
}

function startLive() {
  const live = $("#live");
  state.source = stream({}, onLiveEvent);
  state.source.onopen = () => { live.textContent = "live"; live.className = "badge live"; };
  state.source.onerror = () => { live.textContent = "reconnecting"; live.className = "badge"; };
  $("#filter-service").addEventListener("change", () => restart().catch(report));
  $("#filter-state").addEventListener("change", () => restart().catch(report));
  $("#filter-q").addEventListener("input", searchSoon);
  $("#next").addEventListener("click", () => page(1));
  $("#prev").addEventListener("click", () => page(-1));
  setInterval(() => refresh().catch(showLogin), REFRESH_MS);
}

// -- the token, asked for once per tab ----------------------------------------------------------------

function showLogin(error) {
  if (!(error instanceof Unauthorized)) { console.warn("acetrack: refresh failed:", error); return; }
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").hidden = !token();
}

async function open() {
  try {
    await refresh();
  } catch (error) {
    showLogin(error);
    return;
  }
  $("#login").hidden = true;
  $("#app").hidden = false;
  startLive();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token-input").value);
    open();
  });
  // the server says whether a token is needed, so the page asks before any call rather than after a 401
  if (document.body.dataset.tokenRequired === "1" && !token()) $("#login").hidden = false;
  else open();
});
