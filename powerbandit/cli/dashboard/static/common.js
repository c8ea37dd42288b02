/* Shared helpers of the dashboard pages: fetching, formatting, charts with keyboard control. */
"use strict";

const PB = (() => {
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                   "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      throw new Error((body && body.error) || `${url}: HTTP ${response.status}`);
    }
    return body;
  }

  // The same units as the terminal views (powerbandit.operator_view.fmt_energy / fmt_time).
  function fmtEnergy(j) {
    if (j === null || j === undefined || !isFinite(j)) return "–";
    if (Math.abs(j) >= 3.6e6) return (j / 3.6e6).toFixed(2) + " kWh";
    return (j / 1e3).toFixed(1) + " kJ";
  }
  function fmtTime(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    if (Math.abs(s) >= 2 * 86400) return (s / 86400).toFixed(1) + " d";
    if (Math.abs(s) >= 3600) return (s / 3600).toFixed(2) + " h";
    if (Math.abs(s) >= 60) return (s / 60).toFixed(1) + " min";
    return s.toFixed(0) + " s";
  }
  function fmtNum(v, unit) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    return Number(v.toPrecision(4)).toString() + (unit || "");
  }
  function fmtDate(unixS) {
    if (!unixS) return "–";
    const d = new Date(unixS * 1000);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }
  // A unit for joule values: [factor, unit] so that the largest value reads well.
  function joulesScale(values) {
    const top = Math.max(0, ...values.filter((v) => v !== null && isFinite(v)).map(Math.abs));
    for (const [f, u] of [[1e9, "GJ"], [1e6, "MJ"], [1e3, "kJ"]]) if (top >= f) return [f, u];
    return [1, "J"];
  }

  function setStatus(text, isError) {
    const el = document.getElementById("status");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  /* A uPlot chart in `container` that the keyboard can drive: arrow keys move the cursor from
     point to point (Home/End: first/last), `describe(idx)` says what is under it in `readout`. */
  function chart(container, opts, data, readout, describe) {
    container.textContent = "";
    const width = Math.max(320, container.clientWidth - 10);
    const u = new uPlot(Object.assign({ width, height: 300 }, opts, {
      hooks: Object.assign({}, opts.hooks || {}, {
        setCursor: [(uu) => {
          if (uu.cursor.idx !== null && uu.cursor.idx !== undefined && readout) readout.textContent = describe(uu.cursor.idx);
        }].concat((opts.hooks || {}).setCursor || []),
      }),
    }), data, container);
    let idx = -1;
    container.onkeydown = (ev) => {
      const n = u.data[0].length;
      if (!n) return;
      if (ev.key === "ArrowRight" || ev.key === "ArrowUp") idx = Math.min(n - 1, idx + 1);
      else if (ev.key === "ArrowLeft" || ev.key === "ArrowDown") idx = Math.max(0, idx < 0 ? n - 1 : idx - 1);
      else if (ev.key === "Home") idx = 0;
      else if (ev.key === "End") idx = n - 1;
      else return;
      ev.preventDefault();
      u.setCursor({ left: u.valToPos(u.data[0][idx], "x"), top: u.bbox.height / devicePixelRatio / 2 });
      if (readout) readout.textContent = describe(idx);
    };
    const resize = () => u.setSize({ width: Math.max(320, container.clientWidth - 10), height: 300 });
    window.addEventListener("resize", resize);
    u.pbDispose = () => { window.removeEventListener("resize", resize); u.destroy(); };
    container.pbChart = u;  // what is drawn, for tests and the browser console
    return u;
  }

  function empty(container, text) {
    container.textContent = "";
    container.append(el("p", { class: "empty", text }));
  }

  /* Call `load` now and every `refresh_s` seconds (from /api/config) while the page is visible. */
  async function refreshing(load) {
    let refreshS = 10;
    try { refreshS = (await getJSON("/api/config")).refresh_s || refreshS; } catch (e) { /* keep the default */ }
    const tick = async () => {
      try {
        await load();
        setStatus(`updated ${new Date().toLocaleTimeString()}; refreshes every ${refreshS} s`);
      } catch (e) {
        setStatus(`could not load: ${e.message}`, true);
      }
    };
    await tick();
    setInterval(() => { if (!document.hidden) tick(); }, refreshS * 1000);
  }

  return { PALETTE, getJSON, fmtEnergy, fmtTime, fmtNum, fmtDate, joulesScale, setStatus, el, chart, empty, refreshing };
})();
