"""The server's Prometheus metrics (prometheus_client), in a registry of their own per app, served at ``/metrics``.

Requests by route and status, prompt and generated tokens, waiting and running requests (read from the engine when
scraped), time to first token, and errors by OpenAI error type: what an operator graphs and alerts on.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/health",
    "/metrics",
    "/props",
    "/",
)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """One app's counters, gauges and histogram (prefix ``inference_``)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "inference_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r
        )
        self.prompt_tokens = Counter("inference_prompt_tokens", "prompt tokens of accepted requests", registry=r)
        self.generated_tokens = Counter("inference_generation_tokens", "tokens generated", registry=r)
        self.waiting = Gauge("inference_requests_waiting", "requests waiting for a place in the batch", registry=r)
        self.running = Gauge("inference_requests_running", "requests being decoded in the batch", registry=r)
        self.ttft = Histogram(
            "inference_time_to_first_token_seconds",
            "seconds from a request's submission to its first generated token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.errors = Counter("inference_errors", "error replies, by OpenAI error type", ["type"], registry=r)

    def watch_queue(self, waiting: Callable[[], int], running: Callable[[], int]) -> None:
        """Read the queue depth from the engine at each scrape."""
        self.waiting.set_function(waiting)
        self.running.set_function(running)

    def request(self, path: str, status: int) -> None:
        route = path if path in ROUTES or path.startswith("/web/") else "other"
        self.requests.labels("/web/" if route.startswith("/web/") else route, str(status)).inc()

    def reply(self, new_tokens: int, ttft: float | None) -> None:
        """A finished (or cancelled) generation."""
        self.generated_tokens.inc(new_tokens)
        if ttft is not None:
            self.ttft.observe(ttft)

    def render(self) -> bytes:
        return generate_latest(self.registry)
