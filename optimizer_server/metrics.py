"""Prometheus metrics of one server (``--metrics-port``).

Two kinds of series, told apart by the ``scope`` label of the store-wide ones:

* **Per replica** (no ``scope`` label): what *this* server process did, as counters and
  histograms. Over several replicas, ``sum()`` them: ``powerbandit_rpc_total{method,code}``,
  ``powerbandit_rpc_latency_seconds{method}``, ``powerbandit_store_transaction_seconds``,
  ``powerbandit_runs_finished_total{gpu_model,state}`` (runs this replica completed, failed or
  expired), ``powerbandit_run_energy_joules_total{gpu_model}`` and
  ``powerbandit_run_gpu_seconds_total{gpu_model}`` (energy and GPU time, time x GPU count, that
  those finished runs reported), ``powerbandit_build_info{version}``, and the standard
  ``process_*`` and ``python_*`` collectors.
* **Store-wide** (``scope="store"``): the current state of the shared database, read when
  Prometheus scrapes; every replica exports the same value, so aggregate them with ``max``, never
  ``sum``: ``powerbandit_jobs``, ``powerbandit_runs{state="in_flight"}`` and
  ``powerbandit_energy_saved_joules{gpu_model}`` (the estimated saving against each job's
  measured default configuration, summed over jobs: the definition of
  :mod:`powerbandit.domain.savings`, the same figure ``powerbandit report`` prints).

Counters only go up (a restart resets them, which ``rate``/``increase`` handle); nothing
cumulative is a gauge, so deleting a job never makes a total drop. No ``_created`` series. Each
server has its own registry, so several servers in one process (tests, the demo) do not collide.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from optimizer_server.rate_limited_log import RateLimitedLog
from optimizer_server.store.base import (
    RUN_COMPLETED,
    RUN_EXPIRED,
    RUN_FAILED,
    RUN_IN_FLIGHT,
    RunRecord,
    Store,
)
from powerbandit.domain.savings import GpuSaving, saved_energy_by_gpu, savings_by_gpu

disable_created_metrics()  # no *_created series (process-wide switch of prometheus_client)

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: Label value of the store-wide series (aggregate with ``max`` over replicas).
STORE_SCOPE = "store"

#: Jobs read per store page when the saving is computed.
_PAGE_JOBS = 200


def energy_saved_by_gpu(store: Store) -> dict[str, float]:
    """Estimated energy saved (J) per GPU model over every job in ``store`` (models sorted).

    Each job's saving per GPU model from its run groups and profiles
    (:func:`powerbandit.domain.savings.savings_by_gpu`), summed over jobs: the definition the
    operator view prints (``powerbandit report``). GPU models without any baseline are left out.
    """
    per_job: list[list[GpuSaving]] = []
    after = ""
    while True:
        records = store.list_jobs("", _PAGE_JOBS, after)
        for record in records:
            job_id = record.spec.job_id
            groups = store.run_groups(job_id)
            per_job.append(
                savings_by_gpu(record.spec.default_batch_size, groups, groups, store.list_profiles(job_id))
            )
        if len(records) < _PAGE_JOBS:
            break
        after = records[-1].spec.job_id
    saved = saved_energy_by_gpu(per_job)
    return {model: float(saved[model]) for model in sorted(saved) if saved[model] is not None}  # type: ignore[arg-type]


class _StoreCollector(Collector):
    """Store-wide gauges (``scope="store"``), read from the store when Prometheus scrapes.

    The saving reads every job's run groups: it is recomputed at most every ``refresh_s``
    seconds, whatever the scrape rate. A store that cannot be read leaves the store-wide series
    out of that scrape (and logs one rate-limited line) instead of failing the whole scrape.
    """

    def __init__(self, store: Store, refresh_s: float) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._saved: dict[str, float] = {}
        self._saved_at = -float("inf")
        self._lock = threading.Lock()
        self._errors = RateLimitedLog(log)

    def _saved_by_gpu(self) -> dict[str, float]:
        with self._lock:
            now = time.monotonic()
            if now - self._saved_at >= self.refresh_s:
                self._saved = energy_saved_by_gpu(self.store)
                self._saved_at = now
            return self._saved

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            totals = self.store.totals()
            saved = self._saved_by_gpu()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail on a database outage
            self._errors.warning("metrics: store-wide series left out of this scrape: %s", exc)
            return
        labels = ["scope"]
        jobs = GaugeMetricFamily(
            "powerbandit_jobs", "Registered jobs (store-wide: the same on every replica; max, not sum)", labels=labels
        )
        jobs.add_metric([STORE_SCOPE], totals["jobs"])
        yield jobs
        runs = GaugeMetricFamily(
            "powerbandit_runs",
            "Runs now in each current state (store-wide; max, not sum). Finished runs: powerbandit_runs_finished_total",
            labels=["scope", "state"],
        )
        runs.add_metric([STORE_SCOPE, "in_flight"], totals["runs"].get(RUN_IN_FLIGHT, 0))
        yield runs
        energy = GaugeMetricFamily(
            "powerbandit_energy_saved_joules",
            "Estimated energy saved against each job's measured default configuration, summed over the jobs "
            "in the store, per GPU model (store-wide; max, not sum; drops when exploration costs or a job is deleted)",
            labels=["scope", "gpu_model"],
        )
        for model in sorted(saved):
            energy.add_metric([STORE_SCOPE, model], saved[model])
        yield energy


class Metrics:
    """The server's metrics; :meth:`serve` exposes them over HTTP.

    ``saved_refresh_s``: how often the store-wide saving is recomputed at most (it reads every
    job's run groups).
    """

    def __init__(self, store: Store, *, saved_refresh_s: float = 15.0) -> None:
        from powerbandit import __version__

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        build = Gauge("powerbandit_build_info", "The running powerbandit version (always 1)", ["version"],
                      registry=self.registry)  # fmt: skip
        build.labels(__version__).set(1)
        self.rpcs = Counter(
            "powerbandit_rpc", "RPCs handled, by method and status code", ["method", "code"], registry=self.registry
        )
        self.rpc_latency = Histogram(
            "powerbandit_rpc_latency_seconds", "RPC latency", ["method"], buckets=_LATENCY_BUCKETS, registry=self.registry
        )
        self.store_latency = Histogram(
            "powerbandit_store_transaction_seconds",
            "Duration of one job transaction in the store",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.runs_finished = Counter(
            "powerbandit_runs_finished",
            "Runs this replica finished, by GPU model and final state (completed, failed, expired)",
            ["gpu_model", "state"],
            registry=self.registry,
        )
        self.run_energy = Counter(
            "powerbandit_run_energy_joules",
            "Energy the runs finished on this replica reported, by GPU model (J, all GPUs of a run)",
            ["gpu_model"],
            registry=self.registry,
        )
        self.run_gpu_time = Counter(
            "powerbandit_run_gpu_seconds",
            "GPU time the runs finished on this replica reported: time x GPU count, by GPU model (s)",
            ["gpu_model"],
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(store, saved_refresh_s))
        self._http: object | None = None
        self._children: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}
        self._initialise(store)

    def _initialise(self, store: Store) -> None:
        """Export every series this replica may count at 0 from the start: counters that appear with
        their first event already in them lose that event to ``rate`` and ``increase``.

        RPCs: every method of the service with code OK; runs: every GPU model the store has runs on
        (a model seen for the first time still starts its series with its first run).
        """
        from powerbandit.v1 import optimizer_pb2 as pb

        for method in pb.DESCRIPTOR.services_by_name["OptimizerService"].methods:
            self.rpcs.labels(method.name, grpc.StatusCode.OK.name)
            self.rpc_latency.labels(method.name)
        try:
            models = store.run_gpu_models()
        except Exception as exc:  # noqa: BLE001 - metrics must not keep a server from starting
            log.warning("metrics: GPU models not read at start (%s); their series start with their first run", exc)
            return
        for model in models:
            self.run_energy.labels(model)
            self.run_gpu_time.labels(model)
            for state in (RUN_COMPLETED, RUN_FAILED, RUN_EXPIRED):
                self.runs_finished.labels(model, state)

    def observe_rpc(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Count one RPC and its latency."""
        children = self._children.get((method, code))
        if children is None:  # resolve the labelled series once per (method, code)
            children = self._children[(method, code)] = (
                self.rpcs.labels(method, code.name),
                self.rpc_latency.labels(method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_finished_run(self, run: RunRecord) -> None:
        """Count a run this replica finished, with the energy and GPU time it reported."""
        self.runs_finished.labels(run.gpu_model, run.state).inc()
        self.run_energy.labels(run.gpu_model).inc(max(0.0, run.energy_j))
        self.run_gpu_time.labels(run.gpu_model).inc(max(0.0, run.time_s) * max(1, run.gpu_count))

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (0: any free port); returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self._http is not None:
            self._http.shutdown()  # type: ignore[attr-defined]
            self._http.server_close()  # type: ignore[attr-defined]
            self._http = None
