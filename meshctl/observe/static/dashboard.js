// Ami dashboard: polls /api/v1/dashboard/state every 2 s and draws it with plain SVG.
"use strict";
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#58a6ff", "#bc8cff", "#3fb950", "#d29922", "#f778ba", "#39c5cf"];

// One colour per subset name, the same in every panel (by name, not by position: v3 is the
// second subset of a canary but may be the third of a route).
function subsetColour(name) {
  let h = 0;
  for (const ch of String(name)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4))
                                   : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%");
const ms = (v) => (v === null || v === undefined ? "–" : v.toFixed(0) + " ms");
function health(sr) {
  if (sr === null || sr === undefined) return "idle";
  return sr >= 0.99 ? "ok" : sr >= 0.95 ? "warn" : "bad";
}
const bytes = (v) => (v === null || v === undefined ? "–" : v < 1e3 ? v.toFixed(0) + " B/s"
  : v < 1e6 ? (v / 1e3).toFixed(1) + " kB/s" : (v / 1e6).toFixed(1) + " MB/s");
// A row (stat node, edge, chart point) with TCP traffic and no requests: show its connections.
const tcpOnly = (r) => r.rps === 0 && r.tcpConnections !== null && r.tcpConnections !== undefined;
const tcpWords = (r) =>
  `${r.tcpConnections} conn${r.tcpConnections === 1 ? "" : "s"} · ` +
  bytes(r.tcpReadBytesPerSec + r.tcpWriteBytesPerSec);
// TCP has no success rate to judge: drawn in the accent colour, never as failing or idle.
const style = (r) => (r && tcpOnly(r) ? "tcp" : health(r && r.successRate));

function graphModel(state) {
  const nodes = new Map();
  const add = (svc, ver) => {
    const id = svc + ":" + ver;
    if (!nodes.has(id)) nodes.set(id, { id, svc, ver, stat: null, depth: 0 });
    return nodes.get(id);
  };
  for (const p of state.proxies) if (p.service) add(p.service, p.version || "unknown");
  for (const r of state.nodes) add(r.service, r.version).stat = r;
  const edges = state.edges.map((e) => ({
    from: add(e.source, e.sourceVersion), to: add(e.destination, e.destinationVersion), e }));
  for (let i = 0; i < nodes.size; i++)  // longest-path layering (graphs are small)
    for (const { from, to } of edges)
      if (from !== to && to.depth < from.depth + 1) to.depth = Math.min(from.depth + 1, 8);
  return { nodes: [...nodes.values()], edges };
}

function drawGraph(state) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const { nodes, edges } = graphModel(state);
  const columns = new Map();
  for (const n of nodes) {
    if (!columns.has(n.depth)) columns.set(n.depth, []);
    columns.get(n.depth).push(n);
  }
  const depths = [...columns.keys()].sort((a, b) => a - b);
  // Columns wide enough for a node (140) plus an edge label (~190) between columns.
  const colW = 340, W = Math.max(1000, colW * depths.length);
  let H = 170;
  for (const col of columns.values()) H = Math.max(H, col.length * 78 + 40);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  depths.forEach((d, ci) => {
    const col = columns.get(d).sort((a, b) => a.id.localeCompare(b.id));
    col.forEach((n, ri) => {
      n.x = ci * colW + colW / 2 - 70;
      n.y = (H / (col.length + 1)) * (ri + 1) - 26;
    });
  });
  const defs = el("svg:defs");
  defs.innerHTML = '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7"' +
    ' markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#8b93a7"/></marker>';
  svg.append(defs);
  for (const { from, to, e } of edges) {
    const g = el("svg:g", { class: "edge", "data-edge": from.id + "->" + to.id });
    const x1 = from.x + 140, y1 = from.y + 26, x2 = to.x, y2 = to.y + 26;
    const mx = (x1 + x2) / 2;
    g.append(el("svg:path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`,
                              class: style(e), "marker-end": "url(#arrow)" }));
    const label = tcpOnly(e) ? tcpWords(e)
      : `${e.rps.toFixed(1)} rps · ${pct(e.successRate)} · p99 ${ms(e.p99)}`;
    // Labels sit just above the arrow head: targets have distinct rows, so labels never stack.
    const lx = x2 - 8, ly = y2 - 8;
    const text = el("svg:text", { x: lx, y: ly, "text-anchor": "end" }, label);
    g.append(text);
    svg.append(g);  // in the document, so the label can be measured
    if (e.secured) g.append(lock(lx - text.getComputedTextLength() - 14, ly - 11));
  }
  for (const n of nodes) {
    const s = n.stat;
    const g = el("svg:g", { class: "node", "data-service": n.svc, "data-version": n.ver,
                            transform: `translate(${n.x},${n.y})` });
    g.append(el("svg:rect", { width: 140, height: 52, rx: 8, class: style(s) }));
    const title = n.ver && n.ver !== "unknown" ? `${n.svc} ${n.ver}` : n.svc;
    g.append(el("svg:text", { x: 10, y: 20, class: "name" }, title));
    g.append(el("svg:text", { x: 10, y: 40 },
                !s ? "no traffic" : tcpOnly(s) ? tcpWords(s)
                  : `${s.rps.toFixed(1)} rps · ${pct(s.successRate)}`));
    svg.append(g);
  }
}

// A padlock drawn in SVG (an emoji needs a font headless browsers often lack).
function lock(x, y) {
  const g = el("svg:g", { class: "lock", transform: `translate(${x},${y})` });
  g.append(el("svg:title", {}, "mTLS"));
  g.append(el("svg:path", { d: "M2,7 V4.5 a3,3 0 0 1 6,0 V7", fill: "none",
                            stroke: "#7ee787", "stroke-width": 1.6 }));
  g.append(el("svg:rect", { x: 0, y: 7, width: 10, height: 8, rx: 1.5, fill: "#7ee787" }));
  return g;
}

function drawRoutes(state) {
  const box = document.getElementById("routes");
  if (!state.routes.length) {  // (the last Route deleted: its split must not stay drawn)
    box.replaceChildren(el("p", { class: "muted" }, "no routes"));
    return;
  }
  box.replaceChildren(...state.routes.map((r) => {
    const div = el("div", { class: "route", "data-route": r.name });
    const words = r.split.map((b) => `${b.subset} ${b.weight}%`).join(" / ");
    div.append(el("div", {}, `${r.host}: ${words}`));
    const bar = el("div", { class: "bar" });
    r.split.forEach((b) => {
      if (b.weight > 0)
        bar.append(el("div", { "data-subset": b.subset,
                               style: `width:${b.weight}%;background:${subsetColour(b.subset)}` },
                      b.weight >= 8 ? b.subset : ""));
    });
    div.append(bar);
    return div;
  }));
}

// Declared Canaries: the weight the control plane set, its phase, the last analysis against
// the thresholds (green when it passed, red when it missed) and the last events.
const PHASE_CLASS = { Progressing: "ok", Promoting: "ok", Succeeded: "ok", Holding: "warn",
                      Waiting: "warn", WaitingPromotion: "warn",  // a webhook gate holds it
                      Initializing: "idle", RolledBack: "bad", Failed: "bad" };

function figure(name, value, limit, passed) {
  return el("span", { class: passed === null ? "muted" : passed ? "ok" : "bad",
                      "data-figure": name }, `${name} ${value} (${limit})`);
}

function analysisFigures(c) {
  const a = c.lastAnalysis, t = c.thresholds;
  const box = el("div", { class: "figures" });
  if (!a) {
    box.append(el("span", { class: "muted" }, "no analysis yet"));
    return box;
  }
  const rate = a.successRate;
  box.append(
    figure("requests", String(a.requests), `≥ ${t.minRequests}`, a.requests >= t.minRequests),
    figure("success", pct(rate), `≥ ${pct(t.minSuccessRate)}`,
           rate === null || rate === undefined ? null : rate >= t.minSuccessRate),
    figure("p99", ms(a.p99Ms), t.maxP99Ms === null ? "not judged" : `≤ ${ms(t.maxP99Ms)}`,
           t.maxP99Ms === null || a.p99Ms === null || a.p99Ms === undefined ? null
             : a.p99Ms <= t.maxP99Ms),
    el("span", { class: "muted" },
       `at ${a.weight}% · ${new Date(a.time).toLocaleTimeString()}` +
       (a.failedChecks.length ? " · failed: " + a.failedChecks.join(", ") : "")));
  return box;
}

// A webhook's last answer, coloured by what it means for its type: a gate's "no" holds the
// run (warn), a rollback hook's 2xx rolled it back and its "no" is the usual answer.
function hookClass(h) {
  const ok = h.ok ?? /^HTTP 2\d\d$/.test(h.result);  // a status saved before "ok" was kept
  if (h.type === "rollback") return ok ? "bad" : "muted";
  if (ok) return "ok";
  return h.type.startsWith("confirm-") ? "warn" : "bad";
}

function webhookAnswers(c) {
  const box = el("div", { class: "figures" });
  box.append(...(c.webhooks || []).map((h) =>
    el("span", { class: hookClass(h), "data-webhook": h.name, title: h.time },
       `${h.name} (${h.type}): ${h.result}`)));
  return box;
}

function drawCanaries(state) {
  const card = document.getElementById("canary-card");
  const list = state.canaries || [];
  card.hidden = !list.length;
  document.getElementById("canaries").replaceChildren(...list.map((c) => {
    const div = el("div", { class: "canary", "data-canary": c.namespace + "/" + c.name });
    const head = el("div", { class: "head" });
    head.append(el("strong", {}, c.name),
                el("span", {}, `${c.service}: ${c.stable} → ${c.canary}`),
                el("span", { class: "phase " + (PHASE_CLASS[c.phase] || "idle"),
                             "data-phase": c.phase }, c.phase),
                el("span", { class: "muted" }, c.message));
    const bar = el("div", { class: "bar", "data-weight": String(c.weight) });
    const stable = 100 - c.weight;
    if (stable > 0)
      bar.append(el("div", { "data-subset": c.stable,
                             style: `width:${stable}%;background:${subsetColour(c.stable)}` },
                    stable >= 8 ? `${c.stable} ${stable}%` : ""));
    if (c.weight > 0)
      bar.append(el("div", { "data-subset": c.canary,
                             style: `width:${c.weight}%;background:${subsetColour(c.canary)}` },
                    c.weight >= 8 ? `${c.canary} ${c.weight}%` : ""));
    const events = el("table", { class: "events" });
    events.append(...c.events.slice().reverse().map((e) => {
      const tr = el("tr");
      tr.append(el("td", { class: "muted" }, new Date(e.time).toLocaleTimeString()),
                el("td", {}, `${e.weight}%`), el("td", {}, e.phase), el("td", {}, e.message));
      return tr;
    }));
    div.append(head, bar, analysisFigures(c));
    if ((c.webhooks || []).length) div.append(webhookAnswers(c));
    div.append(events);
    return div;
  }));
}

// A chart's points are placed by their time over the span (a gap where the service had no
// figures stays a gap); the figure beside it is the newest point's only when that point is
// the latest the control plane computed, else "–": a service whose sidecars stopped
// answering has no current figure, and its last one must not read as live.
function sparkline(points, field, color, fmt, name, span) {
  const wrap = el("div", { "data-field": field });
  const vals = points.map((p) => p[field]).filter((v) => v !== null && v !== undefined);
  const newest = points.length ? points[points.length - 1] : null;
  const current = newest && newest.t >= span.end - span.step / 2 ? newest[field] : null;
  const label = el("div", { class: "label" });
  label.append(el("span", {}, name || field),
               el("span", {}, fmt(current === undefined ? null : current)));
  const svg = el("svg:svg", { viewBox: "0 0 300 46", preserveAspectRatio: "none" });
  const max = Math.max(...vals, field === "successRate" ? 1 : 0.001);
  const min = field === "successRate" ? Math.min(...vals, 0.9) : 0;
  const x = (t) => Math.min(300, Math.max(0, 300 - ((span.end - t) / span.length) * 300));
  // a lone point: a short flat line ending at its time, not nothing
  if (points.length === 1) points = [{ ...points[0], t: points[0].t - span.step }, points[0]];
  const pts = points.map((p) => p[field] === null || p[field] === undefined ? null :
    `${x(p.t).toFixed(1)},${(44 - ((p[field] - min) / (max - min || 1)) * 40).toFixed(1)}`)
    .filter((v) => v).join(" ");
  svg.append(el("svg:polyline", { points: pts, stroke: color }));
  wrap.append(label, svg);
  return wrap;
}

function drawCharts(state) {
  const box = document.getElementById("charts");
  const span = { end: state.time, length: state.seriesSpan || 300,
                 step: state.seriesStep || 5 };
  box.replaceChildren(...Object.entries(state.series).sort().map(([svc, points]) => {
    const c = el("div", { class: "chart", "data-service": svc });
    const tcp = points.some((p) => p.tcpConnections !== null && p.tcpConnections !== undefined);
    const http = !tcp || points.some((p) => p.rps > 0);
    c.append(el("h3", {}, tcp && !http ? `${svc} · TCP` : svc));
    if (http)
      c.append(sparkline(points, "rps", "#58a6ff", (v) => (v === null ? "–" : v.toFixed(1)),
                         undefined, span),
               sparkline(points, "successRate", "#3fb950", pct, undefined, span),
               sparkline(points, "p99", "#d29922", ms, undefined, span));
    if (tcp)
      c.append(sparkline(points, "tcpConnections", "#58a6ff",
                         (v) => (v === null ? "–" : String(v)), "open connections", span),
               sparkline(points, "tcpReadBytesPerSec", "#bc8cff", bytes, "read", span),
               sparkline(points, "tcpWriteBytesPerSec", "#39c5cf", bytes, "written", span));
    return c;
  }));
}

function table(id, headers, rows) {
  const t = document.getElementById(id);
  const head = el("tr");
  headers.forEach((h) => head.append(el("th", {}, h)));
  t.replaceChildren(head, ...rows.map((r) => {
    const tr = el("tr");
    r.forEach((c) => tr.append(typeof c === "object" ? c : el("td", {}, c)));
    return tr;
  }));
}

function certLeft(expiry, now) {
  if (!expiry) return el("td", { class: "muted" }, "–");
  const left = (Date.parse(expiry) / 1000 - now) / 3600;
  return el("td", { class: left < 1 ? "bad" : left < 4 ? "warn" : "ok" },
            left < 0 ? "expired" : `${left.toFixed(1)} h left`);
}

// The sidecar's app probe: a NOT SERVING app's endpoint is withdrawn from the mesh.
function appState(app) {
  if (app === "serving") return el("td", { class: "ok" }, "✔ serving");
  if (app === "not_serving") return el("td", { class: "bad" }, "✘ not serving");
  return el("td", { class: "muted" }, "–");
}

// The Ami version the proxy runs (proxy-status' PROXY-VERSION); "unknown" from a proxy built
// before proxies reported it, or from an older control plane.
function proxyVersion(v) {
  return v && v !== "unknown" ? v : el("td", { class: "muted" }, "unknown");
}

// Whether the control plane's last scrape of the proxy worked: "–" for one it does not
// scrape (no admin address registered), the error as the cell's title for a failed one.
function scrapeCell(p, error) {
  if (!p.admin) return el("td", { class: "muted", title: "no admin address: not scraped" }, "–");
  return error ? el("td", { class: "bad", title: error }, "✘") : el("td", { class: "ok" }, "✔");
}

function drawTables(state) {
  table("proxies", ["proxy", "service", "version", "proxy version", "app", "synced", "config",
                    "certificate", "scrape"],
    state.proxies.map((p) => [p.name, p.service || "", p.version || "",
      proxyVersion(p.proxyVersion), appState(p.app),
      el("td", { class: p.nack ? "bad" : p.synced ? "ok" : "warn" },
         p.nack ? "NACK: " + p.nack : p.synced ? "✔ synced" : "… pending"),
      String(p.configVersion || "–"), certLeft(p.certExpiry, state.time),
      scrapeCell(p, state.scrapeErrors[p.name])]));
  // panics: times outlier detection ejected so many endpoints that the destination went
  // into panic (minHealthPercent) and spread traffic over all of them again.
  // denied: requests an AuthorizationPolicy refused (403 not_authorized), at the service's
  // own sidecars.
  table("counters", ["service", "ejections", "panics", "rate limited", "breaker overflow",
                     "retries", "denied"],
    Object.entries(state.counters).sort().map(([svc, c]) => [svc,
      String(c.ami_outlier_ejections), String(c.ami_outlier_panics), String(c.ami_rate_limited),
      String(c.ami_circuit_breaker_overflow), String(c.ami_retries),
      String(c.ami_authorization_denied)]));
}

// One refresh at a time, each given up after TIMEOUT_MS: a control plane that accepts and
// never answers (hung, stopped) must not pile requests up nor leave "updated …" showing. While
// refreshes fail the page says so and dims the figures it still shows (body data-stale="1"),
// with the time they are from; the next refresh that works makes it live again.
const TIMEOUT_MS = 5000;
let refreshing = false;
let shownTime = null;  // the state.time of the figures on the page

async function fetchState() {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    const resp = await fetch("/api/v1/dashboard/state", { cache: "no-store", signal: ctl.signal });
    if (!resp.ok) {  // the API's error shape: {"error": "<words>", "reason": ...}
      const body = await resp.json().catch(() => null);
      throw new Error(`HTTP ${resp.status}` + (body && body.error ? `: ${body.error}` : ""));
    }
    return await resp.json();
  } catch (err) {
    throw ctl.signal.aborted ? new Error(`no answer within ${TIMEOUT_MS / 1000} s`) : err;
  } finally {
    clearTimeout(timer);
  }
}

function stale(words) {
  const status = document.getElementById("status");
  const since = shownTime === null ? "" :
    ` · figures from ${new Date(shownTime * 1000).toLocaleTimeString()}, not live`;
  status.textContent = words + since;
  status.className = "bad";
  document.body.dataset.stale = "1";
}

async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    let state;
    try {
      state = await fetchState();
    } catch (err) {
      stale("control plane unreachable: " + err.message);
      return;
    }
    try {
      drawGraph(state); drawRoutes(state); drawCanaries(state); drawCharts(state);
      drawTables(state);
    } catch (err) {
      stale("could not draw the control plane's answer: " + err.message);
      console.error(err);
      return;
    }
    shownTime = state.time;
    const status = document.getElementById("status");
    status.textContent = `updated ${new Date(state.time * 1000).toLocaleTimeString()} · ` +
                         `${state.proxies.length} proxies`;
    status.className = "muted";
    delete document.body.dataset.stale;
    document.body.dataset.updated = String(state.time);
  } finally {
    refreshing = false;
  }
}
refresh();
setInterval(refresh, 2000);
