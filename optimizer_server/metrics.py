"""Prometheus metrics of one server (``--metrics-port``).

RPCs by method and status code, RPC latency, store transaction latency, and, computed from the
store at scrape time, the number of jobs and of runs in flight. Each server has its own registry,
so several servers in one process (tests, the demo) do not collide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from optimizer_server.store.base import Store

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _StoreCollector(Collector):
    """Jobs and runs in flight, read from the store when Prometheus scrapes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        totals = self.store.totals()
        jobs = GaugeMetricFamily("powerbandit_jobs", "Registered jobs")
        jobs.add_metric([], totals["jobs"])
        yield jobs
        runs = GaugeMetricFamily("powerbandit_runs", "Runs by state", labels=["state"])
        for state, count in totals["runs"].items():
            runs.add_metric([state], count)
        yield runs
        in_flight = GaugeMetricFamily("powerbandit_runs_in_flight", "Runs suggested and not finished")
        in_flight.add_metric([], totals["runs"].get("in_flight", 0))
        yield in_flight


class Metrics:
    """The server's metrics; :meth:`serve` exposes them over HTTP."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
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
        self.registry.register(_StoreCollector(store))
        self._http: object | None = None
        self._children: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

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
