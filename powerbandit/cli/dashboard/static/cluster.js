/* The cluster page: energy used and saved over time per GPU model, and the jobs table. */
"use strict";

(() => {
  const state = { jobs: [], sortKey: "job_id", ascending: true, prefix: "", charts: {}, chartKey: "" };
  const tbody = document.querySelector("#jobs tbody");
  const prefixInput = document.getElementById("prefix");

  function url() {
    return "/api/cluster" + (state.prefix ? "?prefix=" + encodeURIComponent(state.prefix) : "");
  }

  function renderTimeline(tl) {
    const key = tl.models.join("\u0000");
    for (const [name, field] of [["used", "used_j"], ["saved", "saved_j"]]) {
      const container = document.getElementById(name + "-chart");
      const readout = document.getElementById(name + "-readout");
      if (!tl.t.length) {
        if (state.charts[name]) { state.charts[name].pbDispose(); delete state.charts[name]; }
        PB.empty(container, "no finished runs yet");
        continue;
      }
      const data = [tl.t, ...tl.models.map((m) => tl[field][m].map((v) => (v === null ? null : v / 3.6e6)))];
      const describe = (i) => `${PB.fmtDate(tl.t[i])}: ` + tl.models.map(
        (m) => `${m} ${PB.fmtEnergy(tl[field][m][i])}`).join(", ");
      if (state.charts[name] && state.chartKey === key) {
        state.charts[name].setData(data);
        continue;
      }
      if (state.charts[name]) state.charts[name].pbDispose();
      state.charts[name] = PB.chart(container, {
        scales: { x: { time: true } },
        axes: [{}, { label: "kWh", size: 60 }],
        series: [{ label: "time" }, ...tl.models.map((m, i) => ({
          label: m, stroke: PB.PALETTE[i % PB.PALETTE.length], width: 2,
          value: (u, v) => (v === null ? "–" : v.toFixed(3) + " kWh"),
        }))],
      }, data, readout, describe);
    }
    state.chartKey = key;
  }

  function cellText(job, key) {
    switch (key) {
      case "best_power_limit_w": return PB.fmtNum(job[key], " W");
      case "expected_energy_j": case "energy_j": return PB.fmtEnergy(job[key]);
      case "expected_time_s": return PB.fmtTime(job[key]);
      case "saved_energy_j": return job.saved_text;
      default: return job[key] === null || job[key] === undefined ? "–" : String(job[key]);
    }
  }

  function renderTable() {
    const headers = document.querySelectorAll("#jobs th");
    const keys = Array.from(headers, (th) => th.dataset.key);
    const { sortKey, ascending } = state;
    const rows = state.jobs.filter((j) => j.job_id.startsWith(state.prefix));
    rows.sort((a, b) => {
      const x = a[sortKey], y = b[sortKey];
      if (x === y) return a.job_id < b.job_id ? -1 : 1;
      if (x === null || x === undefined) return 1;   // unknown values last, whatever the order
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * (ascending ? 1 : -1);
    });
    headers.forEach((th) => {
      if (th.dataset.key === sortKey) th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    });
    const fragment = document.createDocumentFragment();
    for (const job of rows) {
      const tr = PB.el("tr", { "data-job": job.job_id });
      for (const key of keys) {
        if (key === "job_id") {
          tr.append(PB.el("td", { class: "text" }, PB.el("a", { href: "/job?id=" + encodeURIComponent(job.job_id), text: job.job_id })));
        } else {
          const td = PB.el("td", { text: cellText(job, key) });
          if (key === "saved_energy_j" && job.saved_reason) td.title = job.saved_reason;
          tr.append(td);
        }
      }
      fragment.append(tr);
    }
    tbody.replaceChildren(fragment);
    document.getElementById("shown").textContent = `${rows.length} of ${state.jobs.length} job(s)`;
  }

  function renderTotals(jobs) {
    const runs = jobs.reduce((s, j) => s + j.finished_runs, 0);
    const used = jobs.reduce((s, j) => s + j.energy_j, 0);
    const saved = jobs.filter((j) => j.saved_energy_j !== null);
    const savedText = saved.length ? PB.fmtEnergy(saved.reduce((s, j) => s + j.saved_energy_j, 0)) : "–";
    document.getElementById("totals").textContent =
      `${jobs.length} job(s), ${runs} finished run(s), energy used ${PB.fmtEnergy(used)}, ` +
      `estimated saved ${savedText} (${saved.length} job(s) with a measured default configuration)`;
  }

  async function load() {
    const body = await PB.getJSON(url());
    state.jobs = body.jobs;
    renderTotals(body.jobs);
    renderTable();
    renderTimeline(body.timeline);
    document.body.dataset.loaded = String(body.jobs.length);
    if (!document.body.dataset.firstLoadMs) {  // from navigation start to the first full render
      document.body.dataset.firstLoadMs = String(Math.round(performance.now()));
    }
  }

  document.querySelectorAll("#jobs th button").forEach((button) => {
    button.addEventListener("click", () => {
      const key = button.parentElement.dataset.key;
      if (state.sortKey === key) state.ascending = !state.ascending;
      else { state.sortKey = key; state.ascending = button.parentElement.dataset.type === "text"; }
      renderTable();
    });
  });
  let timer = null;
  prefixInput.addEventListener("input", () => {
    state.prefix = prefixInput.value;
    renderTable();  // at once from what is loaded; the curves follow from the server
    clearTimeout(timer);
    timer = setTimeout(() => load().catch((e) => PB.setStatus(`could not load: ${e.message}`, true)), 400);
  });
  PB.getJSON("/api/config").then((c) => {
    document.getElementById("savings-note").textContent = c.savings_note;
  }).catch(() => {});
  PB.refreshing(load);
})();
