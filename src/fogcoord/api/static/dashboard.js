// The fogcoord live dashboard: one snapshot, then Server-Sent Events applied as they arrive.
// Charts are inline SVG drawn by the small functions below; nothing is loaded from elsewhere.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const HISTORY_S = 1800;
  const MAX_EVENTS = 200;
  const MAX_SEEN = 10000;
  const MAX_DEDUPE = 1000;
  const RETRY_MS = 3000;
  const KEY_STORE = "fogcoord.dashboard.key";
  const HEALTH = ["passing", "warning", "critical"];
  const BREAKER = ["closed", "half-open", "open"];
  const ALERT_RANK = { firing: 0, pending: 1, resolved: 2, inactive: 3 };
  const TRACKED = [
    "market.last_clearing_price",
    "host.cpu_percent",
    "process.cpu_percent",
    "host.memory_percent",
    "process.rss_mb",
  ];
  const JOB_ORDER = [
    "submitted", "auctioned", "allocated", "running", "verified", "settled", "failed", "cancelled",
  ];
  const TASK_ORDER = ["pending", "running", "verified", "failed"];
  const ROLE_ORDER = ["provider", "validator", "platform", "refund"];
  const BALANCE_ORDER = ["wallets", "escrow", "platform", "minted"];

  const state = {
    key: "",
    latest: {},
    series: {},
    health: { state: "unknown", reasons: [], services: {} },
    alerts: new Map(),
    dedupe: new Set(),
    dedupeOrder: [],
    eventTotal: 0,
    source: null,
    retryTimer: 0,
    renderQueued: false,
  };

  // When each event row was put on screen (Date.now()), by its key as in the row's data-key:
  // lets a test or a latency measurement see what arrived and when.
  const seen = new Map();
  window.__seen = seen;

  // --- small DOM helpers ------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(v) {
    if (typeof v !== "number" || !Number.isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e9) return `${(v / 1e9).toFixed(1)}G`;
    if (a >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
    if (a >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
    if (Number.isInteger(v)) return String(v);
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return v.toFixed(2);
    return String(Number(v.toPrecision(2)));
  }

  const pad = (n) => String(n).padStart(2, "0");

  function clock(t) {
    const d = new Date(t * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function setText(id, value) {
    const node = $(id);
    if (node) node.textContent = fmt(value);
  }

  function byPrefix(prefix) {
    const out = {};
    for (const [name, value] of Object.entries(state.latest)) {
      if (name.startsWith(prefix)) out[name.slice(prefix.length)] = value;
    }
    return out;
  }

  function ordered(values, order) {
    const rank = (k) => {
      const i = order.indexOf(k);
      return i < 0 ? order.length : i;
    };
    return Object.keys(values)
      .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))
      .map((label) => ({ label, value: values[label] }));
  }

  // --- charts -----------------------------------------------------------------------------

  const WIDTH = 400;

  function empty(box, text) {
    box.replaceChildren(el("p", "empty", text));
  }

  // Labels wider than their bar's slot would run into their neighbours; the bar's tooltip
  // keeps the full label.
  function shorten(label, slot) {
    const fits = Math.max(2, Math.floor(slot / 5.8));
    return label.length > fits ? `${label.slice(0, fits - 1)}…` : label;
  }

  function barChart(box, bars, opts = {}) {
    if (!bars.length) return empty(box, opts.empty || "no data yet");
    const height = opts.height || 130;
    const top = 14;
    const bottom = 16;
    const max = Math.max(0, ...bars.map((b) => b.value)) || 1;
    const slot = WIDTH / bars.length;
    const gap = opts.gap !== undefined ? opts.gap : Math.min(10, slot * 0.25);
    const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img" });
    chart.append(svg("line", {
      class: "grid", x1: 0, x2: WIDTH, y1: height - bottom + 0.5, y2: height - bottom + 0.5,
    }));
    bars.forEach((bar, i) => {
      const h = ((height - top - bottom) * Math.max(bar.value, 0)) / max;
      const x = i * slot + gap / 2;
      const w = Math.max(slot - gap, 1);
      const y = height - bottom - h;
      const rect = svg("rect", { class: opts.alt ? "bar alt" : "bar", x, y, width: w, height: h });
      rect.append(svg("title", {}, `${bar.label}: ${fmt(bar.value)}`));
      chart.append(rect);
      if (opts.values !== false) {
        chart.append(svg("text", {
          class: "value", x: x + w / 2, y: y - 3, "text-anchor": "middle",
        }, fmt(bar.value)));
      }
      if (bar.label !== "") {
        chart.append(svg("text", { x: x + w / 2, y: height - 4, "text-anchor": "middle" },
          shorten(bar.label, slot)));
      }
    });
    box.replaceChildren(chart);
  }

  // Contiguous bins over [lo, hi): edges are labelled rather than bins.
  function histogram(box, counts, lo, hi) {
    if (!counts.length) return empty(box, "no data yet");
    const height = 120;
    const top = 14;
    const bottom = 16;
    const max = Math.max(0, ...counts) || 1;
    const slot = WIDTH / counts.length;
    const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img" });
    counts.forEach((count, i) => {
      const h = ((height - top - bottom) * count) / max;
      const x = i * slot;
      const y = height - bottom - h;
      const from = lo + ((hi - lo) * i) / counts.length;
      const to = lo + ((hi - lo) * (i + 1)) / counts.length;
      const rect = svg("rect", { class: "bar alt", x: x + 0.5, y, width: slot - 1, height: h });
      rect.append(svg("title", {}, `${from.toFixed(1)}–${to.toFixed(1)}: ${fmt(count)}`));
      chart.append(rect);
      if (count > 0) {
        chart.append(svg("text", {
          class: "value", x: x + slot / 2, y: y - 3, "text-anchor": "middle",
        }, fmt(count)));
      }
    });
    chart.append(svg("line", {
      class: "grid", x1: 0, x2: WIDTH, y1: height - bottom + 0.5, y2: height - bottom + 0.5,
    }));
    for (let i = 0; i <= counts.length; i += counts.length / 2) {
      const anchor = i === 0 ? "start" : i === counts.length ? "end" : "middle";
      const edge = lo + ((hi - lo) * i) / counts.length;
      chart.append(svg("text", { x: i * slot, y: height - 4, "text-anchor": anchor }, edge.toFixed(1)));
    }
    box.replaceChildren(chart);
  }

  function lineChart(box, lines, opts = {}) {
    let t0 = Infinity;
    let t1 = -Infinity;
    let lo = Infinity;
    let hi = -Infinity;
    for (const line of lines) {
      for (const [t, v] of line.points) {
        if (t < t0) t0 = t;
        if (t > t1) t1 = t;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    if (t0 === Infinity) return empty(box, opts.empty || "no data yet");
    if (t1 - t0 < 60) t0 = t1 - 60;
    const y0 = opts.yMin !== undefined ? Math.min(opts.yMin, lo) : Math.min(0, lo);
    let y1 = opts.yMax !== undefined ? Math.max(opts.yMax, hi) : hi + (hi - y0) * 0.1;
    if (!(y1 > y0)) y1 = y0 + 1;
    const height = opts.height || 110;
    const left = 34;
    const right = 4;
    const top = 6;
    const bottom = 14;
    const sx = (t) => left + ((t - t0) / (t1 - t0)) * (WIDTH - left - right);
    const sy = (v) => top + (1 - (v - y0) / (y1 - y0)) * (height - top - bottom);
    const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, role: "img" });
    for (const v of [y0, (y0 + y1) / 2, y1]) {
      const y = sy(v);
      chart.append(svg("line", { class: "grid", x1: left, x2: WIDTH - right, y1: y, y2: y }));
      chart.append(svg("text", { x: left - 4, y: y + 3, "text-anchor": "end" }, fmt(v)));
    }
    chart.append(svg("text", { x: left, y: height - 2 }, clock(t0)));
    chart.append(svg("text", { x: WIDTH - right, y: height - 2, "text-anchor": "end" }, clock(t1)));
    lines.forEach((line, i) => {
      const cls = `s${i % 3}`;
      if (line.points.length === 1) {
        const [t, v] = line.points[0];
        chart.append(svg("circle", { class: cls, cx: sx(t), cy: sy(v), r: 2.5 }));
        return;
      }
      const points = line.points.map(([t, v]) => `${sx(t).toFixed(1)},${sy(v).toFixed(1)}`);
      chart.append(svg("polyline", { class: `line ${cls}`, points: points.join(" ") }));
    });
    const parts = [];
    if (lines.length > 1) {
      const legend = el("div", "legend");
      lines.forEach((line, i) => {
        const item = el("span");
        item.append(el("span", `swatch s${i % 3}`), line.label);
        legend.append(item);
      });
      parts.push(legend);
    }
    parts.push(chart);
    box.replaceChildren(...parts);
  }

  // --- panels -----------------------------------------------------------------------------

  function points(name) {
    return state.series[name] || [];
  }

  function serviceIds() {
    const ids = new Set(Object.keys(state.health.services || {}));
    for (const name of Object.keys(state.latest)) {
      const m = /^service\.(.+)\.(health|breaker|requests|errors|latency_ms)$/.exec(name);
      if (m) ids.add(m[1]);
    }
    return [...ids].sort();
  }

  function renderServices() {
    const box = $("services");
    const ids = serviceIds();
    if (!ids.length) return empty(box, "no data yet");
    const cards = ids.map((id) => {
      const figure = (what) => state.latest[`service.${id}.${what}`];
      const reported = (state.health.services || {})[id];
      const healthLevel = figure("health");
      const health = healthLevel !== undefined
        ? HEALTH[Math.min(2, Math.max(0, Math.round(healthLevel)))]
        : (reported && reported.state) || "unknown";
      const breakerLevel = figure("breaker");
      const breaker = breakerLevel !== undefined
        ? BREAKER[Math.min(2, Math.max(0, Math.round(breakerLevel)))]
        : "unknown";
      const card = el("div", "service");
      card.dataset.id = id;
      card.dataset.health = health;
      card.dataset.breaker = breaker;
      if (reported && reported.reason) card.title = reported.reason;
      const head = el("div", "head");
      head.append(el("span", "name", id), el("span", "breaker", `breaker ${breaker}`));
      card.append(head, el("div", "detail", health));
      if (figure("requests") !== undefined) {
        card.append(el("div", "detail",
          `${fmt(figure("requests"))} req · ${fmt(figure("errors"))} err · ` +
          `${fmt(figure("latency_ms"))} ms`));
      }
      return card;
    });
    box.replaceChildren(...cards);
  }

  function renderHealth() {
    const badge = $("health");
    const h = state.health;
    badge.dataset.state = h.state;
    badge.textContent = `health: ${h.state}`;
    badge.title = (h.reasons || []).join("\n") || "all services passing";
  }

  function renderDevices() {
    const d = byPrefix("devices.");
    setText("devices-online", d.online);
    setText("devices-charging", d.charging);
    setText("devices-registered", d.registered);
    setText("devices-connected", d.connected);
    const bins = Object.keys(d)
      .filter((k) => k.startsWith("trust_bin."))
      .map((k) => [Number(k.slice("trust_bin.".length)), d[k]])
      .sort((a, b) => a[0] - b[0])
      .map(([, count]) => count);
    histogram($("trust"), bins, 0, 1);
  }

  function renderJobs() {
    const all = byPrefix("jobs.");
    const jobs = {};
    const tasks = {};
    for (const [name, value] of Object.entries(all)) {
      if (name.startsWith("tasks_")) tasks[name.slice("tasks_".length)] = value;
      else if (!name.includes(".")) jobs[name] = value;
    }
    barChart($("jobs"), ordered(jobs, JOB_ORDER));
    barChart($("tasks"), ordered(tasks, TASK_ORDER), { alt: true });
  }

  function renderMarket() {
    const m = byPrefix("market.");
    setText("market-open", m.open_auctions);
    setText("market-price", m.last_clearing_price);
    setText("market-volume", m.volume);
    const fill = $("market-fill");
    fill.textContent = typeof m.fill_rate === "number" ? `${(m.fill_rate * 100).toFixed(0)}%` : "–";
    lineChart($("price"), [{ label: "clearing price", points: points("market.last_clearing_price") }], {
      empty: "no auction has cleared yet",
    });
    barChart($("revenue"), ordered(byPrefix("market.revenue."), ROLE_ORDER));
  }

  function renderLedger() {
    const l = byPrefix("ledger.");
    setText("ledger-blocks", l.blocks);
    setText("ledger-transfers", l.transfers);
    setText("ledger-volume", l.volume);
    barChart($("balances"), ordered(byPrefix("ledger.balance."), BALANCE_ORDER), { alt: true });
  }

  function renderPrivacy() {
    const budgets = byPrefix("privacy.");
    const box = $("privacy");
    if (!Object.keys(budgets).length) return empty(box, "not available");
    barChart(box, ordered(budgets, []));
  }

  function renderHost() {
    lineChart($("cpu"), [
      { label: "host", points: points("host.cpu_percent") },
      { label: "process", points: points("process.cpu_percent") },
    ], { yMin: 0, yMax: 100 });
    lineChart($("memory"), [{ label: "host", points: points("host.memory_percent") }], {
      yMin: 0, yMax: 100,
    });
    lineChart($("rss"), [{ label: "process", points: points("process.rss_mb") }]);
  }

  function renderAlerts() {
    const body = $("alerts").tBodies[0];
    const views = [...state.alerts.values()].sort(
      (a, b) => (ALERT_RANK[a.state] ?? 9) - (ALERT_RANK[b.state] ?? 9) || a.name.localeCompare(b.name),
    );
    body.replaceChildren(...views.map((a) => {
      const row = el("tr", "alert");
      row.dataset.name = a.name;
      row.dataset.state = a.state;
      row.dataset.silenced = String(Boolean(a.silenced));
      row.append(
        el("td", "", a.name),
        el("td", "", a.group || ""),
        el("td", "", a.state),
        el("td", "", fmt(a.value)),
        el("td", "", a.since ? clock(a.since) : ""),
        el("td", "", a.silenced ? "yes" : ""),
      );
      return row;
    }));
    $("alerts-empty").hidden = views.length > 0;
  }

  function renderAll() {
    state.renderQueued = false;
    renderHealth();
    renderServices();
    renderDevices();
    renderJobs();
    renderMarket();
    renderLedger();
    renderPrivacy();
    renderHost();
    renderAlerts();
  }

  function scheduleRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(renderAll);
  }

  // --- applying messages ------------------------------------------------------------------

  function trim(name, now) {
    const list = state.series[name];
    let drop = 0;
    while (drop < list.length && list[drop][0] < now - HISTORY_S) drop += 1;
    if (drop) list.splice(0, drop);
  }

  function healthFromServices() {
    let worst = -1;
    const reasons = [];
    for (const [name, level] of Object.entries(state.latest)) {
      const m = /^service\.(.+)\.health$/.exec(name);
      if (!m) continue;
      worst = Math.max(worst, level);
      if (level > 0) reasons.push(`${m[1]}: ${HEALTH[Math.min(2, Math.round(level))]}`);
    }
    if (worst < 0) return;
    state.health = {
      state: HEALTH[Math.min(2, Math.round(worst))],
      reasons,
      services: state.health.services,
    };
  }

  function applySnapshot(snap) {
    state.latest = snap.latest || {};
    const history = snap.history || {};
    state.series = {};
    for (const name of TRACKED) {
      const given = (history[name] || []).map(([t, v]) => [t, v]);
      if (!given.length && typeof state.latest[name] === "number") given.push([snap.time, state.latest[name]]);
      state.series[name] = given;
    }
    const health = snap.health || {};
    state.health = {
      state: health.state || "unknown",
      reasons: health.reasons || [],
      services: health.services || {},
    };
    state.alerts = new Map((snap.alerts || []).map((a) => [a.name, a]));
    state.eventTotal = Object.values(snap.event_counts || {}).reduce((a, b) => a + b, 0);
    for (const event of snap.events || []) addEvent(event, false);
    showTotal();
    if (snap.time) $("updated").textContent = `updated ${clock(snap.time)}`;
    scheduleRender();
  }

  function applyMetrics(msg) {
    state.latest = msg.values || {};
    for (const name of TRACKED) {
      const v = state.latest[name];
      if (typeof v !== "number") continue;
      (state.series[name] ||= []).push([msg.time, v]);
      trim(name, msg.time);
    }
    healthFromServices();
    $("updated").textContent = `updated ${clock(msg.time)}`;
    scheduleRender();
  }

  // Live alert messages are transitions (rule, state_to, at); snapshots carry views (name, state).
  function applyAlert(a) {
    const name = a.name || a.rule;
    if (!name) return;
    const before = state.alerts.get(name) || {};
    state.alerts.set(name, {
      ...before,
      name,
      group: a.group || before.group || "",
      state: a.state || a.state_to || before.state || "inactive",
      value: a.value !== undefined ? a.value : before.value,
      since: a.since || a.at || before.since,
      silenced: a.silenced !== undefined ? a.silenced : before.silenced,
    });
    scheduleRender();
  }

  function eventKey(event) {
    for (const [name, value] of Object.entries(event.fields || {})) {
      if (name.endsWith("_id") && (typeof value === "string" || typeof value === "number")) {
        return `${event.type}:${value}`;
      }
    }
    return `${event.type}@${event.time}`;
  }

  function describe(fields) {
    return Object.entries(fields || {})
      .map(([k, v]) => `${k}=${v !== null && typeof v === "object" ? JSON.stringify(v) : v}`)
      .join(" ");
  }

  function addEvent(event, live) {
    // a snapshot taken while the stream was already listening may repeat a live event
    const identity = `${event.type}|${event.source}|${event.time}|${describe(event.fields)}`;
    if (state.dedupe.has(identity)) return;
    state.dedupe.add(identity);
    state.dedupeOrder.push(identity);
    if (state.dedupeOrder.length > MAX_DEDUPE) state.dedupe.delete(state.dedupeOrder.shift());

    const key = eventKey(event);
    const row = el("li", live ? "event fresh" : "event");
    row.dataset.type = event.type;
    row.dataset.key = key;
    const text = describe(event.fields);
    row.title = text;
    row.append(
      el("span", "time", clock(event.time)),
      el("span", "type", event.type),
      el("span", "source", event.source || ""),
      el("span", "fields", text.length > 240 ? `${text.slice(0, 240)}…` : text),
    );
    const list = $("events");
    list.prepend(row);
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
    seen.set(key, Date.now());
    if (seen.size > MAX_SEEN) seen.delete(seen.keys().next().value);
    if (live) {
      state.eventTotal += 1;
      showTotal();
    }
  }

  function showTotal() {
    $("event-total").textContent = state.eventTotal ? `(${fmt(state.eventTotal)} seen)` : "";
  }

  // --- connection -------------------------------------------------------------------------

  function setStatus(status) {
    const node = $("status");
    node.dataset.state = status;
    $("status-text").textContent = status;
  }

  const withKey = (path) => `${path}?key=${encodeURIComponent(state.key)}`;

  function closeStream() {
    if (state.source) state.source.close();
    state.source = null;
  }

  function retryLater() {
    closeStream();
    setStatus("reconnecting");
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(connect, RETRY_MS);
  }

  async function connect() {
    clearTimeout(state.retryTimer);
    if (!state.source) setStatus($("status").dataset.state === "connected" ? "reconnecting" : "connecting");
    let response;
    try {
      response = await fetch(withKey("/v1/stats/snapshot"), { cache: "no-store" });
    } catch (err) {
      return retryLater();
    }
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      return askKey(body.detail || "the key was refused");
    }
    if (!response.ok) return retryLater();
    applySnapshot(await response.json());
    openStream();
  }

  function openStream() {
    closeStream();
    const source = new EventSource(withKey("/v1/stats/stream"));
    state.source = source;
    source.addEventListener("snapshot", (m) => {
      applySnapshot(JSON.parse(m.data));
      setStatus("connected");
    });
    source.addEventListener("event", (m) => addEvent(JSON.parse(m.data).event, true));
    source.addEventListener("metrics", (m) => applyMetrics(JSON.parse(m.data)));
    source.addEventListener("alert", (m) => applyAlert(JSON.parse(m.data).alert));
    source.addEventListener("error", () => {
      if (source !== state.source) return;
      // the browser retries a dropped stream by itself, but gives up on an error status:
      // then the key is checked again before a new stream is opened
      if (source.readyState === EventSource.CLOSED) retryLater();
      else setStatus("reconnecting");
    });
  }

  function askKey(message) {
    closeStream();
    setStatus("offline");
    sessionStorage.removeItem(KEY_STORE);
    const form = $("login");
    const error = $("login-error");
    error.textContent = message || "";
    error.hidden = !message;
    form.hidden = false;
    $("login-key").focus();
  }

  function start() {
    $("login").addEventListener("submit", (e) => {
      e.preventDefault();
      const key = $("login-key").value.trim();
      if (!key) return;
      $("login-key").value = "";
      $("login").hidden = true;
      sessionStorage.setItem(KEY_STORE, key);
      state.key = key;
      connect();
    });
    const params = new URLSearchParams(location.search);
    const fromUrl = params.get("key");
    if (fromUrl) {
      sessionStorage.setItem(KEY_STORE, fromUrl);
      // the key should not stay in the address bar, the history or a shared screenshot
      params.delete("key");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
    }
    state.key = sessionStorage.getItem(KEY_STORE) || "";
    if (!state.key) return askKey("");
    connect();
  }

  start();
})();
