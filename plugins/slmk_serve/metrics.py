"""What the server counts: Prometheus text for ``/metrics``, one log line per request, 503s for ``/health``.

Written by hand in the Prometheus text exposition format (version 0.0.4): a few counters
and histograms need no client library. Every update happens on the server's event loop;
the lock keeps a scrape consistent should that change.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger("slmk.serve")

#: Upper bounds (seconds) of the latency histograms' buckets.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Routes counted by name; any other path is counted as "other" (a scan must not grow the labels).
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/openapi.json")


def route_of(path: str) -> str:
    if path in ROUTES:
        return path
    return "/v1/models/{name}" if path.startswith("/v1/models/") else "other"


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[Any, ...], extra: str = "") -> str:
    parts = [f'{name}="{_escaped(str(value))}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Histogram:
    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class Metrics:
    """Counters and histograms by label values, rendered as Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}  # (method, route, status)
        self.rejected: dict[tuple[str, str], int] = {}  # (model, code): 503s of a busy model
        self.prompt_tokens: dict[str, int] = {}
        self.completion_tokens: dict[str, int] = {}
        self.ttft: dict[str, _Histogram] = {}
        self.latency: dict[str, _Histogram] = {}

    def count_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.setdefault(route, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def count_generation(self, model: str, prompt_tokens: int, completion_tokens: int, ttft: float | None) -> None:
        with self._lock:
            self.prompt_tokens[model] = self.prompt_tokens.get(model, 0) + prompt_tokens
            self.completion_tokens[model] = self.completion_tokens.get(model, 0) + completion_tokens
            if ttft is not None:
                self.ttft.setdefault(model, _Histogram(TTFT_BUCKETS)).observe(ttft)

    def count_rejected(self, model: str, code: str) -> None:
        with self._lock:
            self.rejected[(model, code)] = self.rejected.get((model, code), 0) + 1

    def rejected_of(self, model: str) -> dict[str, int]:
        with self._lock:
            return {code: n for (name, code), n in self.rejected.items() if name == model}

    def render(self, gauges: Mapping[str, Mapping[str, int]]) -> str:
        """The exposition text; ``gauges`` maps a model to its ``queued`` and ``active`` now."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)

        def histogram(name: str, label: str, histograms: Mapping[str, _Histogram]) -> Iterable[str]:
            for value, hist in sorted(histograms.items()):
                cumulative = 0
                for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    bucket = _labels((label,), (value,), 'le="' + le + '"')
                    yield f"{name}_bucket{bucket} {cumulative}"
                yield f"{name}_sum{_labels((label,), (value,))} {hist.total!r}"
                yield f"{name}_count{_labels((label,), (value,))} {cumulative}"

        def counter(names: tuple[str, ...], values: Mapping[Any, int]) -> Iterable[str]:
            for key, value in sorted(values.items()):
                key = key if isinstance(key, tuple) else (key,)
                yield f"{_labels(names, key)} {value}"

        with self._lock:
            family(
                "slmk_requests_total",
                "counter",
                "HTTP requests answered, by method, route and status.",
                (f"slmk_requests_total{s}" for s in counter(("method", "route", "status"), self.requests)),
            )
            family(
                "slmk_rejected_total",
                "counter",
                "Requests refused with 503 because their model was busy (queue_full, queue_timeout).",
                (f"slmk_rejected_total{s}" for s in counter(("model", "code"), self.rejected)),
            )
            family(
                "slmk_prompt_tokens_total",
                "counter",
                "Prompt tokens of answered requests.",
                (f"slmk_prompt_tokens_total{s}" for s in counter(("model",), self.prompt_tokens)),
            )
            family(
                "slmk_completion_tokens_total",
                "counter",
                "Generated tokens.",
                (f"slmk_completion_tokens_total{s}" for s in counter(("model",), self.completion_tokens)),
            )
            family(
                "slmk_time_to_first_token_seconds",
                "histogram",
                "From the request's arrival to its first answer token (queue wait included).",
                histogram("slmk_time_to_first_token_seconds", "model", self.ttft),
            )
            family(
                "slmk_request_duration_seconds",
                "histogram",
                "From the request's arrival to the end of its response, by route.",
                histogram("slmk_request_duration_seconds", "route", self.latency),
            )
        for gauge, help_text in (("queued", "Requests waiting for a session."), ("active", "Generations running.")):
            name = "slmk_queue_depth" if gauge == "queued" else "slmk_active_generations"
            samples = (f"{name}{_labels(('model',), (model,))} {now[gauge]}" for model, now in gauges.items())
            family(name, "gauge", help_text, samples)
        return "\n".join(out) + "\n"


class Observer:
    """ASGI middleware: counts every request, and logs one line for it at info level.

    A generation route leaves its figures in ``scope["state"]["generation"]`` (model,
    prompt and completion tokens, the time of the first token): the line and the token
    counters use them once the response (a stream too) has been sent.
    """

    def __init__(self, app: Callable, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = 500  # an app that raises before answering: uvicorn answers 500

        async def observed_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.record(scope, state, status, started)

    def record(self, scope, state: dict, status: int, started: float) -> None:
        total = time.perf_counter() - started
        route = route_of(scope.get("path", ""))
        self.metrics.count_request(scope.get("method", ""), route, status, total)
        generation = state.get("generation")
        fields = ""
        if generation is not None:
            first = generation.get("first_token_at")
            ttft = first - started if first is not None else None
            self.metrics.count_generation(
                generation["model"], generation["prompt_tokens"], generation["completion_tokens"], ttft
            )
            shown = f"{ttft * 1000:.1f}" if ttft is not None else "-"
            fields = (
                f" model={generation['model']} prompt_tokens={generation['prompt_tokens']}"
                f" completion_tokens={generation['completion_tokens']} ttft_ms={shown}"
            )
        if log.isEnabledFor(logging.INFO):
            client = scope.get("client") or ("-", 0)
            log.info(
                "%s %s %s %d%s total_ms=%.1f",
                client[0],
                scope.get("method", ""),
                scope.get("path", ""),
                status,
                fields,
                total * 1000,
            )
