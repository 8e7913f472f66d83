// facade dashboard: refreshes the server-rendered sections, draws the charts as SVG, sends actions.
// No dependencies, no build step. Server HTML is escaped where it is rendered (facade/dashboard/render.py);
// everything this script adds itself goes through textContent / setAttribute, never innerHTML.
"use strict";

(function () {
  const REFRESH_MS = 3000;
  const TOKEN_KEY = "facade-admin-token";
  const SVG = "http://www.w3.org/2000/svg";
  const W = 440, H = 150, PAD_L = 48, PAD_R = 8, PAD_T = 18, PAD_B = 20;

  const $ = (id) => document.getElementById(id);

  // -- the admin token: typed once, kept in this tab's sessionStorage only ---------------------------
  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
  function showTokenState() {
    $("token-state").textContent = token() ? "token set for this tab" : "no token: actions will be refused";
  }
  function say(text, kind) {
    const m = $("message");
    m.textContent = text;
    m.className = "message " + (kind || "");
  }

  // -- refreshing the server-rendered sections --------------------------------------------------------
  async function fetchText(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.text();
  }
  function openJournals() {
    return new Set([...document.querySelectorAll("#migrations article")]
      .filter((a) => a.querySelector("details") && a.querySelector("details").open)
      .map((a) => a.dataset.plan));
  }
  async function refreshSections() {
    const open = openJournals();
    const [routes, migrations, carve] = await Promise.all([
      fetchText("/ui/fragment/routes"), fetchText("/ui/fragment/migrations"), fetchText("/ui/fragment/carveout"),
    ]);
    $("routes").innerHTML = routes;  // rendered and escaped by the server
    $("migrations").innerHTML = migrations;
    $("carve").innerHTML = carve;
    for (const a of document.querySelectorAll("#migrations article")) {
      if (open.has(a.dataset.plan)) a.querySelector("details").open = true;
    }
    syncRouteChoice();
  }
  // After a reload of the config the route list may differ: keep the chooser in step, and the choice.
  function syncRouteChoice() {
    const names = [...document.querySelectorAll("#routes tr[data-route]")].map((r) => r.dataset.route);
    const select = $("route-select");
    if (names.join("\n") === [...select.options].map((o) => o.value).join("\n")) return;
    const chosen = select.value;
    select.replaceChildren(...names.map((name) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      option.selected = name === chosen;
      return option;
    }));
  }
  async function refreshDiffs() {
    const route = $("route-select").value;
    if (!route) return;
    $("diffs").innerHTML = await fetchText("/ui/fragment/diffs?route=" + encodeURIComponent(route));
  }

  // -- actions: confirmation, token, and the version the card was rendered from --------------------------
  async function act(button) {
    const plan = button.dataset.plan, action = button.dataset.action;
    // The confirmation also asks why: the journal records it (Cancel sends nothing).
    const why = window.prompt(action + " " + plan + " (now at step " + button.dataset.step + ")?\n" +
      "Reason for the journal (optional):", "");
    if (why === null) return;
    const headers = { "content-type": "application/json" };
    if (token()) headers.authorization = "Bearer " + token();
    const body = { version: Number(button.dataset.version), actor: "dashboard",
      reason: why.trim() || "from the dashboard" };
    let answer;
    try {
      const r = await fetch("/migrations/" + encodeURIComponent(plan) + "/" + encodeURIComponent(action),
        { method: "POST", headers: headers, body: JSON.stringify(body), cache: "no-store" });
      answer = { ok: r.ok, status: r.status, doc: await r.json().catch(() => ({})) };
    } catch (e) {
      say(action + " " + plan + ": " + e, "bad");
      return;
    }
    if (answer.ok) {
      say(action + " " + plan + ": now " + answer.doc.state + " at step " + answer.doc.step + " of " + answer.doc.steps,
        "ok");
    } else {
      say(action + " " + plan + " refused (" + answer.status + "): " + (answer.doc.error || "no reason given"), "bad");
    }
    await Promise.all([refreshSections(), refreshCharts()]).catch((e) => say("refresh failed: " + e, "bad"));
  }

  // -- charts -------------------------------------------------------------------------------------------
  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (Math.abs(v) >= 100) return v.toFixed(0);
    if (Math.abs(v) >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }
  function clock(t) { return new Date(t * 1000).toISOString().substring(11, 19); }

  // series: [{name, cls, points: [[t, v|null], ...]}]; marks: [{at, label}]
  function chart(title, metric, unit, series, marks, fixedMax) {
    const svg = el("svg", { viewBox: "0 0 " + W + " " + H, class: "chart", "data-metric": metric, role: "img" });
    svg.appendChild(el("title", {}, title));
    svg.appendChild(el("text", { x: PAD_L, y: 12, class: "chart-title" }, title));
    const all = series.flatMap((s) => s.points);
    const times = all.map((p) => p[0]);
    const values = all.map((p) => p[1]).filter((v) => v !== null);
    if (!times.length) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, "no samples yet"));
      return svg;
    }
    // A step change newer than the last sample still shows, at the right edge of the axis.
    const t0 = Math.min(...times), t1 = Math.max(...times, ...marks.map((m) => m.at), t0 + 1);
    const top = fixedMax || Math.max(1e-9, ...values) * 1.1;
    const x = (t) => PAD_L + (W - PAD_L - PAD_R) * (t - t0) / (t1 - t0);
    const y = (v) => H - PAD_B - (H - PAD_T - PAD_B) * v / top;
    svg.appendChild(el("line", { x1: PAD_L, y1: H - PAD_B, x2: W - PAD_R, y2: H - PAD_B, class: "axis" }));
    svg.appendChild(el("line", { x1: PAD_L, y1: PAD_T, x2: PAD_L, y2: H - PAD_B, class: "axis" }));
    svg.appendChild(el("text", { x: PAD_L - 4, y: PAD_T + 4, "text-anchor": "end", class: "tick" }, fmt(top) + unit));
    svg.appendChild(el("text", { x: PAD_L - 4, y: H - PAD_B, "text-anchor": "end", class: "tick" }, "0"));
    svg.appendChild(el("text", { x: PAD_L, y: H - 4, class: "tick" }, clock(t0)));
    svg.appendChild(el("text", { x: W - PAD_R, y: H - 4, "text-anchor": "end", class: "tick" }, clock(t1)));
    for (const m of marks) {
      if (m.at < t0 || m.at > t1) continue;
      const line = el("line", { x1: x(m.at), y1: PAD_T, x2: x(m.at), y2: H - PAD_B, class: "mark" });
      line.appendChild(el("title", {}, clock(m.at) + " " + m.label));
      svg.appendChild(line);
    }
    for (const s of series) {
      let d = "";
      for (const [t, v] of s.points) {
        if (v === null) { continue; }
        d += (d ? " L" : "M") + x(t).toFixed(1) + " " + y(v).toFixed(1);
      }
      if (d) {
        const path = el("path", { d: d, class: "line " + s.cls });
        path.appendChild(el("title", {}, s.name));
        svg.appendChild(path);
      }
      for (const [t, v] of s.points) {
        if (v === null) continue;
        const dot = el("circle", { cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 1.6, class: "pt " + s.cls,
          "data-backend": s.name, "data-value": v, "data-at": t });
        dot.appendChild(el("title", {}, s.name + " " + clock(t) + ": " + fmt(v) + unit));
        svg.appendChild(dot);
      }
    }
    return svg;
  }

  function backendSeries(doc, pick) {
    const names = new Set();
    for (const p of doc.points) for (const b of Object.keys(p.backends)) names.add(b);
    if (doc.old) names.add(doc.old);
    if (doc.new) names.add(doc.new);
    return [...names].sort().map((name) => ({
      name: name,
      cls: name === doc.old ? "old" : name === doc.new ? "new" : "other",
      points: doc.points.map((p) => [p.at, p.backends[name] ? pick(p.backends[name]) : null]),
    }));
  }

  async function refreshCharts() {
    const route = $("route-select").value;
    const box = $("charts");
    if (!route) { box.textContent = "no routes"; return; }
    const r = await fetch("/ui/series?route=" + encodeURIComponent(route), { cache: "no-store" });
    if (!r.ok) return;
    const doc = await r.json();
    const legend = $("live-legend");
    legend.textContent = doc.plan ? "old = " + doc.old + " (blue), new = " + doc.new + " (orange), plan " + doc.plan +
      "; dashed lines: step changes" : "not migrating: every backend of the route";
    const rate = (s) => s.rps;
    const errors = (s) => (s.error_rate === null ? null : s.error_rate * 100);
    const charts = [
      chart("request rate", "rps", "/s", backendSeries(doc, rate), doc.marks),
      chart("error rate", "error_rate", "%", backendSeries(doc, errors), doc.marks),
      chart("p50 latency", "p50", " ms", backendSeries(doc, (s) => s.p50_ms), doc.marks),
      chart("p99 latency", "p99", " ms", backendSeries(doc, (s) => s.p99_ms), doc.marks),
      chart("shadow diff rate", "diff_rate", "%", [{ name: "diffs", cls: "diff",
        points: doc.points.map((p) => [p.at, p.diff_rate === null ? null : p.diff_rate * 100]) }], doc.marks),
    ];
    box.replaceChildren(...charts);
  }

  async function refreshCarveChart() {
    const r = await fetch("/ui/carveout", { cache: "no-store" });
    if (!r.ok) return;
    const doc = await r.json();
    const pct = (points) => points.map(([t, v]) => [t, v === null ? null : v * 100]);
    const series = [{ name: "total", cls: "total", points: pct(doc.total) }];
    for (const [route, data] of Object.entries(doc.routes)) {
      if (data.requests) series.push({ name: route, cls: "route", points: pct(data.points) });
    }
    $("carve-chart").replaceChildren(chart("share of requests on carved services", "carve", "%", series, [], 100));
  }

  // -- the loop -------------------------------------------------------------------------------------------
  let busy = false;
  async function tick() {
    if (busy) return;
    busy = true;
    try {
      await Promise.all([refreshSections(), refreshCharts(), refreshDiffs(), refreshCarveChart()]);
      document.body.dataset.refreshed = String(Date.now());
    } catch (e) {
      say("refresh failed: " + e, "bad");
    } finally {
      busy = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      $("token").value = "";
      showTokenState();
    });
    $("token-forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showTokenState(); });
    $("migrations").addEventListener("click", (event) => {
      const button = event.target.closest("button.action");
      if (button && !button.disabled) act(button);
    });
    $("route-select").addEventListener("change", () => { refreshCharts(); refreshDiffs(); });
    showTokenState();
    tick();
    setInterval(tick, REFRESH_MS);
  });
})();
