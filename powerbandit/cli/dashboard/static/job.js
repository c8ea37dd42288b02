/* The job page: cost per run, posterior per batch size, power profiles, runs in flight, outlook. */
"use strict";

(() => {
  const jobId = new URLSearchParams(location.search).get("id") || "";
  const charts = {};
  const signature = {};

  function colorOf(batchSizes, b) {
    return PB.PALETTE[Math.max(0, batchSizes.indexOf(b)) % PB.PALETTE.length];
  }

  function keep(name, key, container, build, data) {
    // Rebuild a chart when its series change, else only swap its data (keeps the cursor and focus).
    if (charts[name] && signature[name] === key) { charts[name].setData(data); return; }
    if (charts[name]) charts[name].pbDispose();
    charts[name] = build();
    signature[name] = key;
  }

  function renderCost(job) {
    const runs = job.finished_runs;
    const container = document.getElementById("cost-chart");
    const readout = document.getElementById("cost-readout");
    container.dataset.points = String(runs.length);
    if (!runs.length) { PB.empty(container, "no finished runs yet"); delete charts.cost; return; }
    const sizes = job.spec.batch_sizes;
    const used = sizes.filter((b) => runs.some((r) => r.batch_size === b));
    const [factor, unit] = PB.joulesScale(runs.map((r) => r.cost));
    const x = runs.map((r) => r.index);
    const data = [x,
      ...used.map((b) => runs.map((r) => (r.batch_size === b ? r.cost / factor : null))),
      runs.map((r) => (r.state === "completed" && r.reached_target ? null : r.cost / factor)),
      job.best_so_far.map((v) => (v === null ? null : v / factor))];
    const describe = (i) => {
      const r = runs[i];
      return `run ${r.index} (${PB.fmtDate(r.finished_unix_s)}): batch size ${r.batch_size}, power limit ` +
        `${PB.fmtNum(r.power_limit_w, " W")} on ${r.gpu_model}, energy ${PB.fmtEnergy(r.energy_j)}, ` +
        `time ${PB.fmtTime(r.time_s)}, cost ${PB.fmtNum(r.cost / factor, " " + unit)}, ${r.outcome}`;
    };
    keep("cost", used.join(",") + unit, container, () => PB.chart(container, {
      scales: { x: { time: false, range: [0.5, runs.length + 0.5] } },
      axes: [
        { label: "run (finished runs, in order of suggestion)", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
          values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? String(v) : "")) },
        { label: `cost per run (${unit})`, size: 70 },
      ],
      series: [
        { label: "run", value: (u, v) => (v === null ? "–" : String(v)) },
        ...used.map((b) => {
          const c = colorOf(sizes, b);
          return { label: `batch size ${b}${b === job.spec.default_batch_size ? " (default)" : ""}`, stroke: c,
                   paths: () => null, points: { show: true, size: 9, stroke: c, fill: c } };
        }),
        { label: "did not reach target (ring)", stroke: "#222", paths: () => null,
          points: { show: true, size: 15, width: 1.5, stroke: "#222", fill: "rgba(0,0,0,0)" } },
        { label: "best so far (reached target)", stroke: "#222", width: 2, dash: [6, 3],
          paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } },
      ],
    }, data, readout, describe), data);
  }

  function renderPosterior(job) {
    const arms = job.arms;
    const container = document.getElementById("posterior-chart");
    const readout = document.getElementById("posterior-readout");
    if (!arms.length) { PB.empty(container, "no batch sizes"); return; }
    const [factor, unit] = PB.joulesScale(arms.flatMap((a) => [a.cost_mean, a.cost_high]));
    const scaled = (v) => (v === null ? null : v / factor);
    const x = arms.map((a, i) => i);
    const data = [x, arms.map((a) => scaled(a.cost_mean)), arms.map((a) => scaled(a.cost_low)),
                  arms.map((a) => scaled(a.cost_high))];
    const label = (a) => `${a.batch_size}${a.is_default ? "*" : ""}`;
    const describe = (i) => {
      const a = arms[i];
      const tag = (a.is_best ? ", best" : "") + (a.is_default ? ", default" : "");
      if (a.cost_mean === null) return `batch size ${a.batch_size}${tag}: ${a.status}, no estimate yet`;
      return `batch size ${a.batch_size}${tag}: ${a.status}, ${a.observations} run(s), mean ` +
        `${PB.fmtNum(a.cost_mean / factor, " " + unit)}, 90% interval [${PB.fmtNum(scaled(a.cost_low))}, ` +
        `${PB.fmtNum(scaled(a.cost_high))}] ${unit}`;
    };
    const whiskers = (u) => {
      const ctx = u.ctx;
      ctx.save();
      ctx.lineWidth = 2 * devicePixelRatio;
      arms.forEach((a, i) => {
        if (a.cost_low === null || a.cost_high === null) {
          const px = u.valToPos(i, "x", true);
          ctx.fillStyle = "#57606a";
          ctx.font = `${12 * devicePixelRatio}px sans-serif`;
          ctx.textAlign = "center";
          ctx.fillText(a.status, px, u.bbox.top + u.bbox.height - 8 * devicePixelRatio);
          return;
        }
        const px = u.valToPos(i, "x", true);
        ctx.strokeStyle = a.is_best ? "#1f77b4" : "#57606a";
        ctx.beginPath();
        ctx.moveTo(px, u.valToPos(scaled(a.cost_low), "y", true));
        ctx.lineTo(px, u.valToPos(scaled(a.cost_high), "y", true));
        ctx.stroke();
      });
      ctx.restore();
    };
    keep("posterior", arms.map(label).join(",") + unit, container, () => PB.chart(container, {
      scales: { x: { time: false, range: [-0.5, arms.length - 0.5] } },
      axes: [
        { label: "batch size (* = default)", incrs: [1],
          values: (u, splits) => splits.map((v) => (Number.isInteger(v) && arms[v] ? label(arms[v]) : "")) },
        { label: `cost of one run (${unit})`, size: 70 },
      ],
      series: [
        { label: "batch size", value: (u, v) => (v === null || !arms[v] ? "–" : String(arms[v].batch_size)) },
        { label: "posterior mean", stroke: "#1f77b4", paths: () => null,
          points: { show: true, size: 10, stroke: "#1f77b4", fill: "#1f77b4" } },
        { label: "90% low", stroke: "#57606a", paths: () => null, points: { show: true, size: 5, fill: "#57606a" } },
        { label: "90% high", stroke: "#57606a", paths: () => null, points: { show: true, size: 5, fill: "#57606a" } },
      ],
      hooks: { draw: [whiskers] },
    }, data, readout, describe), data);
  }

  function renderProfiles(job) {
    const host = document.getElementById("profiles");
    const models = [...new Set(job.profiles.map((p) => p.gpu_model))];
    const key = job.profiles.map((p) => `${p.gpu_model}/${p.batch_size}/${p.points.length}`).join(",");
    if (signature.profiles === key) return;
    signature.profiles = key;
    Object.keys(charts).filter((k) => k.startsWith("profile:")).forEach((k) => { charts[k].pbDispose(); delete charts[k]; });
    host.textContent = "";
    if (!models.length) { host.append(PB.el("p", { class: "note", text: "no power profile measured yet" })); return; }
    for (const model of models) {
      const profiles = job.profiles.filter((p) => p.gpu_model === model);
      const limits = [...new Set(profiles.flatMap((p) => p.points.map((pt) => pt.power_limit_w)))].sort((a, b) => a - b);
      const [factor, unit] = PB.joulesScale(profiles.flatMap((p) => p.points.map((pt) => pt.energy_per_epoch_j)));
      const data = [limits, ...profiles.map((p) => limits.map((l) => {
        const pt = p.points.find((q) => Math.abs(q.power_limit_w - l) <= 0.5);
        return pt ? pt.energy_per_epoch_j / factor : null;
      }))];
      const figure = PB.el("figure", {});
      const id = "profile-" + models.indexOf(model);
      figure.append(PB.el("figcaption", { text: `${model}: energy of one epoch against the power limit` }));
      const container = PB.el("div", { id, class: "chart", tabindex: "0", role: "img",
        "aria-label": `Power profile on ${model}; arrow keys step through power limits` });
      const readout = PB.el("p", { class: "readout", "aria-live": "polite" });
      figure.append(container, readout);
      host.append(figure);
      const describe = (i) => `${limits[i]} W: ` + profiles.map((p) => {
        const pt = p.points.find((q) => Math.abs(q.power_limit_w - limits[i]) <= 0.5);
        return pt ? `batch size ${p.batch_size} ${PB.fmtNum(pt.average_power_w, " W")} average, ` +
          `${PB.fmtTime(pt.time_per_epoch_s)}/epoch, ${PB.fmtEnergy(pt.energy_per_epoch_j)}/epoch` : `batch size ${p.batch_size} –`;
      }).join("; ");
      charts["profile:" + model] = PB.chart(container, {
        scales: { x: { time: false } },
        axes: [{ label: "power limit (W)" }, { label: `energy per epoch (${unit})`, size: 70 }],
        series: [{ label: "limit", value: (u, v) => (v === null ? "–" : v + " W") },
          ...profiles.map((p) => {
            const c = colorOf(job.spec.batch_sizes, p.batch_size);
            return { label: `batch size ${p.batch_size}`, stroke: c, width: 2, spanGaps: true,
                     points: { show: true, size: 7, stroke: c, fill: c } };
          })],
      }, data, readout, describe);
    }
  }

  function fillTable(id, rows) {
    const tbody = document.querySelector(`#${id} tbody`);
    const fragment = document.createDocumentFragment();
    for (const cells of rows) {
      const tr = PB.el("tr", {});
      cells.forEach((c, i) => tr.append(PB.el("td", { text: c, class: i === cells.length - 1 ? "text" : "" })));
      fragment.append(tr);
    }
    tbody.replaceChildren(fragment);
  }

  function renderText(job) {
    const s = job.spec;
    document.title = `powerbandit: ${s.job_id}`;
    document.getElementById("title").textContent = s.job_id;
    document.getElementById("spec").textContent =
      `policy ${s.policy}, eta ${s.eta}, target ${s.target_metric} (${s.metric_direction.replaceAll("_", " ")}), ` +
      `max ${s.max_epochs} epochs, default batch size ${s.default_batch_size}, batch sizes ${s.batch_sizes.join(", ")}; ` +
      `runs: ${job.completed_runs} completed, ${job.in_flight_runs} in flight, ${job.failed_runs} failed or expired`;
    const b = job.summary.best;
    document.getElementById("best").textContent = b.batch_size
      ? `Best configuration: batch size ${b.batch_size}, power limit ${PB.fmtNum(b.power_limit_w, " W")}; expected per run ` +
        `${PB.fmtEnergy(b.energy_j)}, ${PB.fmtTime(b.time_s)}` + (b.detail ? ` (${b.detail})` : "")
      : `Best configuration: none yet (${b.detail})`;
    document.getElementById("saving").textContent = job.summary.saving_sentence;
    document.getElementById("outlook").textContent = job.outlook;
  }

  async function load() {
    if (!jobId) throw new Error("no job id in the address: open a job from the jobs table");
    const job = await PB.getJSON("/api/job?id=" + encodeURIComponent(jobId));
    renderText(job);
    renderCost(job);
    renderPosterior(job);
    renderProfiles(job);
    fillTable("in-flight", job.in_flight.map((r) => [r.run_id, r.gpu_model, String(r.batch_size),
      PB.fmtNum(r.power_limit_w, " W"), r.phase, PB.fmtDate(r.created_unix_s)]));
    if (!job.in_flight.length) fillTable("in-flight", [["none", "", "", "", "", ""]]);
    fillTable("arms", job.arms.map((a) => [`${a.batch_size}${a.is_best ? " (best)" : ""}${a.is_default ? " (default)" : ""}`,
      a.status, String(a.observations), String(a.successes), PB.fmtNum(a.cost_mean),
      a.cost_low === null ? "–" : `[${PB.fmtNum(a.cost_low)}, ${PB.fmtNum(a.cost_high)}]`, PB.fmtNum(a.epochs_mean)]));
    fillTable("runs", job.finished_runs.map((r) => [String(r.index), PB.fmtDate(r.finished_unix_s), r.gpu_model,
      String(r.batch_size), PB.fmtNum(r.power_limit_w, " W"), PB.fmtEnergy(r.energy_j), PB.fmtTime(r.time_s),
      PB.fmtNum(r.cost), r.outcome]));
    document.body.dataset.loaded = String(job.finished_runs.length);
    if (!document.body.dataset.firstLoadMs) {  // from navigation start to the first full render
      document.body.dataset.firstLoadMs = String(Math.round(performance.now()));
    }
  }

  PB.refreshing(load);
})();
