"""Server metrics and their Prometheus text exposition (format version 0.0.4), written here.

Three metric kinds, each with optional labels: :class:`Counter` (only goes up), :class:`Gauge`
(set to a value, or read from a callback at scrape time) and :class:`Histogram` (cumulative
buckets, ``_sum`` and ``_count``). A :class:`Registry` renders them all for ``GET /metrics``.
Updates take a lock, so the engine thread and the event loop may both record.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Callable, Iterable, Sequence

#: Latency buckets in seconds: 0.25 ms .. 10 s, about 1.5x apart (fine enough to read a p99).
LATENCY_BUCKETS_S = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02,
                     0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()):
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict) -> tuple:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class _ValueMetric(_Metric):
    """A metric holding one number per label set; with ``read`` (no labels) the number is read from
    a callback at scrape time instead."""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = (),
                 read: Callable[[], float] | None = None):
        super().__init__(name, help_text, labelnames)
        if read is not None and labelnames:
            raise ValueError(f"{self.kind} {name}: a read callback takes no labels")
        self._values: dict[tuple, float] = {} if labelnames else {(): 0.0}
        self._read = read

    def value(self, **labels) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        if self._read is not None:
            return self.header() + [f"{self.name} {_fmt(float(self._read()))}"]
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in items]


class Counter(_ValueMetric):
    """A counter; with ``read`` (no labels) its value is read from a callback at scrape time."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot decrease (inc by {amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_ValueMetric):
    """A gauge; with ``read`` (no labels) its value is read from a callback at scrape time."""

    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float], labelnames: Sequence[str] = ()):
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        if not self.buckets:
            raise ValueError(f"histogram {name} needs at least one bucket")
        # per label set: [count per bucket (non-cumulative, last = +Inf overflow), sum, count]
        self._data: dict[tuple, list] = {}

    def observe(self, value: float, **labels) -> None:
        key = self._key(labels)
        value = float(value)
        idx = bisect.bisect_left(self.buckets, value)  # first bucket with value <= bound
        with self._lock:
            d = self._data.get(key)
            if d is None:
                d = self._data[key] = [[0] * (len(self.buckets) + 1), 0.0, 0]
            d[0][idx] += 1
            d[1] += value
            d[2] += 1

    def count(self, **labels) -> int:
        with self._lock:
            d = self._data.get(self._key(labels))
            return 0 if d is None else d[2]

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(v[0]), v[1], v[2])) for k, v in self._data.items())
        lines = self.header()
        for key, (counts, total, n) in items:
            running = 0
            for b, c in zip(self.buckets + (math.inf,), counts):
                running += c
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, 'le=' + chr(34) + _fmt(b) + chr(34))} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_fmt(total)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {n}")
        return lines


class Registry:
    """The metrics of one server, rendered in registration order."""

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for m in self._metrics:
            lines.extend(m.render())
        return "\n".join(lines) + "\n"


class ServerMetrics:
    """Every metric the inference server exports (names prefixed ``updlrm_``)."""

    def __init__(self, max_batch: int, queue_rows: Callable[[], float], queue_requests: Callable[[], float],
                 inflight_batches: Callable[[], float], ready: Callable[[], float] = lambda: 0.0,
                 engine_restarts: Callable[[], float] = lambda: 0.0):
        r = self.registry = Registry()
        self.requests = r.add(Counter("updlrm_requests_total", "Predict requests answered, by HTTP status code.",
                                      ("code",)))
        self.samples = r.add(Counter("updlrm_samples_total", "Samples predicted successfully."))
        self.errors = r.add(Counter("updlrm_errors_total", "Failed predict requests, by kind "
                                    "(invalid_request, overloaded, not_ready, shutting_down, engine_error:<Exception>).",
                                    ("kind",)))
        self.batches = r.add(Counter("updlrm_batches_total", "Engine batches run, by outcome (ok, error).",
                                     ("outcome",)))
        sizes, b = [], 1
        while b < max_batch:
            sizes.append(b)
            b *= 2
        sizes.append(max_batch)
        self.batch_size = r.add(Histogram("updlrm_batch_size_samples", "Samples per engine batch.", sizes))
        self.batch_requests = r.add(Histogram("updlrm_batch_requests", "Requests merged into one engine batch.", sizes))
        self.queue_depth_rows = r.add(Gauge("updlrm_queue_depth_samples", "Samples waiting for a batch.",
                                            read=queue_rows))
        self.queue_depth_requests = r.add(Gauge("updlrm_queue_depth_requests", "Requests waiting for a batch.",
                                                read=queue_requests))
        self.inflight = r.add(Gauge("updlrm_inflight_batches", "Batches being run by the engine.",
                                    read=inflight_batches))
        self.ready = r.add(Gauge("updlrm_ready", "1 while the model (and DPUs) are loaded and serving; 0 while "
                                 "loading, restarting the engine, failed or shutting down.", read=ready))
        self.engine_restarts = r.add(Counter("updlrm_engine_restarts_total",
                                             "Engine processes started again after one died (--engine-process).",
                                             read=engine_restarts))
        self.request_latency = r.add(Histogram("updlrm_request_latency_seconds",
                                               "Predict request latency inside the server (parse to answer).",
                                               LATENCY_BUCKETS_S))
        self.queue_wait = r.add(Histogram("updlrm_queue_wait_seconds",
                                          "Time a request waited between validation and its batch starting.",
                                          LATENCY_BUCKETS_S))
        self.batch_latency = r.add(Histogram("updlrm_batch_seconds",
                                             "Engine service time of a batch (merge, predict, split), wall clock.",
                                             LATENCY_BUCKETS_S))
        self.phase_latency = r.add(Histogram("updlrm_phase_seconds",
                                             "Per-phase time of a batch from engine.last_stats; source says where "
                                             "the figure comes from (measured, emulator-wall, modeled, ...).",
                                             LATENCY_BUCKETS_S, ("phase", "source")))

    def render(self) -> str:
        return self.registry.render()
