// ipchub dashboard: renders the samples /api/events streams, keeps a few
// minutes of per-channel rates for the charts, and tails a channel on demand.
// Everything the hub reports (channel and client names, payloads) is
// untrusted: it is only ever put into the page as text, never as HTML.
"use strict";

const HISTORY = 300; // samples kept for the charts (5 minutes at 1 s)
const SERIES = 6; // channels drawn per chart, the busiest
const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989"];

const state = { samples: 0, times: [], msgs: new Map(), bytes: new Map(), charts: {} };
window.ipchubDashboard = state; // for tests and the curious

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

function num(n) {
  if (n === null || n === undefined) return "–";
  if (Math.abs(n) >= 1e9) return (n / 1e9).toFixed(2) + " G";
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(2) + " M";
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + " k";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function uptime(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
}

function setStatus(ok, text) {
  const s = document.getElementById("status");
  s.className = "pill " + (ok ? "ok" : "bad");
  s.textContent = text;
}

function tiles(s) {
  const r = s.rates || {};
  const items = [
    ["messages in/s", num(r.messages_in)], ["messages out/s", num(r.messages_out)],
    ["bytes in/s", num(r.bytes_in)], ["bytes out/s", num(r.bytes_out)],
    ["drops/s", num(r.dropped)], ["messages in", num(s.totals.messages_in)],
    ["dropped", num(s.totals.dropped)], ["clients", s.client_count], ["channels", s.channel_count],
  ];
  document.getElementById("tiles").replaceChildren(
    ...items.map(([k, v]) => el("div", { class: "tile" }, el("div", { class: "v" }, v), el("div", { class: "k" }, k))));
}

function record(s) {
  const t = s.time_ms / 1000;
  state.times.push(t);
  const seen = new Set();
  for (const c of s.channels) {
    seen.add(c.name);
    for (const [map, v] of [[state.msgs, c.rate_messages], [state.bytes, c.rate_bytes]]) {
      if (!map.has(c.name)) map.set(c.name, new Array(state.times.length - 1).fill(null));
      map.get(c.name).push(v);
    }
  }
  for (const map of [state.msgs, state.bytes]) {
    for (const [name, arr] of map) {
      if (!seen.has(name)) arr.push(null);
      if (arr.length > HISTORY) arr.splice(0, arr.length - HISTORY);
      if (arr.every((v) => v === null || v === 0) && !seen.has(name)) map.delete(name);
    }
  }
  if (state.times.length > HISTORY) state.times.splice(0, state.times.length - HISTORY);
}

function busiest(map) {
  const score = (arr) => arr.reduce((a, v) => a + (v || 0), 0);
  return [...map.entries()].sort((a, b) => score(b[1]) - score(a[1]) || (a[0] < b[0] ? -1 : 1))
    .slice(0, SERIES).map(([name]) => name);
}

function chart(id, map, unit) {
  const box = document.getElementById(id);
  const names = busiest(map);
  const key = names.join("\n");
  const data = [state.times.slice(), ...names.map((n) => map.get(n).slice())];
  let c = state.charts[id];
  const width = Math.max(300, box.clientWidth);
  if (!c || c.key !== key) {
    if (c) c.plot.destroy();
    const opts = {
      width, height: 220,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [{}, { size: 60, values: (u, vals) => vals.map((v) => num(v)) }],
      series: [{}, ...names.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length], width: 2,
        value: (u, v) => (v === null ? "–" : num(v) + unit) }))],
      legend: { live: true },
    };
    c = state.charts[id] = { key, plot: new uPlot(opts, data, box) };
  } else {
    if (c.plot.width !== width) c.plot.setSize({ width, height: 220 });
    c.plot.setData(data);
  }
}

function channels(s) {
  const body = document.querySelector("#channels tbody");
  const rows = [...s.channels].sort((a, b) => (b.rate_messages || 0) - (a.rate_messages || 0) || (a.name < b.name ? -1 : 1));
  body.replaceChildren(...rows.map((c) => {
    const by = Object.entries(c.subscribers_by_transport).map(([t, n]) => t + " " + n).join(", ");
    const tail = el("button", { class: "link", type: "button", title: "show this channel's messages" }, "tail");
    tail.addEventListener("click", () => startTail(c.name));
    return el("tr", { "data-channel": c.name },
      el("td", { class: "wrap" }, c.name), el("td", { class: "num" }, c.subscribers), el("td", {}, by || "–"),
      el("td", {}, c.overflow),
      el("td", { class: "ring" }, c.ring ? c.ring_readers + " reading in place" : "–"),
      el("td", { class: "num rate-msgs" }, num(c.rate_messages)),
      el("td", { class: "num rate-bytes" }, num(c.rate_bytes)), el("td", { class: "num published" }, c.published),
      el("td", { class: "num" }, c.delivered), el("td", { class: "num" }, c.dropped), el("td", {}, tail));
  }));
}

function clients(s) {
  const body = document.querySelector("#clients tbody");
  const rows = [...s.clients].sort((a, b) => (b.slow - a.slow) || (b.queue_messages - a.queue_messages) || (a.id - b.id));
  body.replaceChildren(...rows.map((c) => {
    const st = el("td", {});
    if (c.slow) st.append(el("span", { class: "badge" }, "slow"), " ");
    if (c.blocked) st.append(el("span", { class: "badge blocked" }, "blocked"));
    return el("tr", { class: c.slow ? "slow" : "", "data-client": c.id, "data-client-name": c.name },
      el("td", { class: "num" }, c.id), el("td", { class: "wrap" }, c.name || "–"), el("td", {}, c.transport),
      el("td", { class: "num" }, c.pid), el("td", { class: "num" }, c.uid),
      el("td", { class: "wrap" }, c.subscriptions.join(", ") || "–"),
      el("td", { class: "num" }, c.queue_messages), el("td", { class: "num" }, num(c.queue_bytes)),
      el("td", { class: "num" }, num(c.rate_out)), el("td", { class: "num" }, c.messages_in),
      el("td", { class: "num" }, c.messages_out), el("td", { class: "num missed" }, c.dropped), st);
  }));
}

function components(s) {
  const body = document.querySelector("#components tbody");
  const names = Object.keys(s.components);
  body.replaceChildren(...(names.length ? names.map((n) => el("tr", {}, el("td", {}, n),
    el("td", { class: "wrap" }, Object.entries(s.components[n]).map(([k, v]) => k + "=" + v).join("  "))))
    : [el("tr", {}, el("td", { colSpan: 2 }, "none reported"))]));
}

function render(s) {
  state.samples += 1;
  state.last = s;
  if (s.error) {
    setStatus(false, "hub unreachable: " + s.error);
    return;
  }
  setStatus(true, "live");
  document.getElementById("hubinfo").textContent =
    "ipchubd " + s.version + " · up " + uptime(s.uptime_secs) + " · " + s.transports.join(", ");
  record(s);
  tiles(s);
  channels(s);
  clients(s);
  components(s);
  if (typeof uPlot !== "undefined") {
    chart("chart-msgs", state.msgs, "/s");
    chart("chart-bytes", state.bytes, " B/s");
  }
}

function connect() {
  const es = new EventSource("/api/events");
  es.addEventListener("sample", (e) => render(JSON.parse(e.data)));
  es.onerror = () => setStatus(false, "dashboard unreachable, retrying…");
}

// Tail: one EventSource per watched channel, closed when stopped or when
// the page goes away, which ends the hub subscription.
let tail = null;
const MAX_LINES = 200;

function tailLine(cls, text) {
  const list = document.getElementById("tail-lines");
  list.append(el("li", { class: cls }, text));
  while (list.children.length > MAX_LINES) list.firstChild.remove();
  list.scrollTop = list.scrollHeight;
}

function stopTail() {
  if (tail) tail.close();
  tail = null;
  document.getElementById("tail-start").disabled = false;
  document.getElementById("tail-stop").disabled = true;
  document.getElementById("tail-state").textContent = "";
}

function startTail(channel) {
  stopTail();
  const input = document.getElementById("tail-channel");
  if (channel) input.value = channel;
  const fmt = document.getElementById("tail-format").value;
  const max = document.getElementById("tail-max").value || "256";
  const q = new URLSearchParams({ channel: input.value, format: fmt, max });
  document.getElementById("tail-lines").replaceChildren();
  tail = new EventSource("/api/tail?" + q);
  document.getElementById("tail-start").disabled = true;
  document.getElementById("tail-stop").disabled = false;
  document.getElementById("tail-state").textContent = "subscribing…";
  tail.addEventListener("tail", (e) => {
    const m = JSON.parse(e.data);
    if (m.kind === "subscribed") document.getElementById("tail-state").textContent = "watching " + m.pattern;
    else if (m.kind === "message") {
      const meta = "[" + m.channel + "] #" + m.seq + " from " + m.origin + " (" + m.len + " B)" +
        (m.skipped ? " · " + m.skipped + " skipped" : "") + "  ";
      const li = el("li", {}, el("span", { class: "meta" }, meta), m.payload + (m.truncated ? " …" : ""));
      const list = document.getElementById("tail-lines");
      list.append(li);
      while (list.children.length > MAX_LINES) list.firstChild.remove();
      list.scrollTop = list.scrollHeight;
    } else if (m.kind === "missed") tailLine("meta", m.count + " messages missed");
    else if (m.kind === "error") { tailLine("err", m.text); stopTail(); }
  });
  tail.onerror = () => { if (tail && tail.readyState === EventSource.CLOSED) stopTail(); };
}

document.getElementById("tail-form").addEventListener("submit", (e) => { e.preventDefault(); startTail(); });
document.getElementById("tail-stop").addEventListener("click", stopTail);
window.addEventListener("pagehide", stopTail);
connect();
