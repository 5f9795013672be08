"""Prometheus metrics of a function, registered on an injected registry.

Names follow the Prometheus conventions (base units, `_total` counters, `_seconds`); labels are
low-cardinality only: route template, method, variant, status class, error type, label, reason.
Never a raw path, an id or a text. `observability/` rules and dashboards use exactly these names;
a test checks that against a live scrape by a real Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "kubesentiment"
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
STAGE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (4, 8, 16, 32, 64, 128, 256, 512)
# P(positive) - P(negative): finer near the ends, where a confident model puts most texts.
SCORE_BUCKETS = (
    -0.95, -0.9, -0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 1.0,
)  # fmt: skip
# Probability of the predicted label: at least 1/len(labels), so finer above 0.5.
CONFIDENCE_BUCKETS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@dataclass(frozen=True)
class Metrics:
    """Every metric a function emits."""

    registry: CollectorRegistry
    requests: Counter
    request_duration: Histogram
    in_flight: Gauge
    rejected: Counter
    errors: Counter
    tokenization_duration: Histogram
    queue_wait: Histogram
    deadline_exceeded: Counter
    deduplicated: Counter
    cache_hits: Counter
    cache_misses: Counter
    cache_entries: Gauge
    cache_enabled: Gauge
    inference_duration: Histogram
    batch_size: Histogram
    batch_tokens: Counter
    tokens_per_text: Histogram
    predictions: Counter
    truncated: Counter
    prediction_score: Histogram
    prediction_score_offset: Counter
    prediction_confidence: Histogram
    cold_start: Gauge
    cold_start_phase: Gauge
    model_load: Gauge
    model_ready: Gauge
    model_info: Gauge
    secret_failures: Counter
    auth_failures: Counter
    events_sent: Counter
    sink_pending: Gauge
    event_redeliveries: Counter
    event_replay_entries: Gauge
    payload_log_events: Counter
    payload_log_pending: Gauge
    key_requests: Counter
    key_texts: Counter
    key_tokens: Counter
    key_model_cpu: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> Metrics:
        """Register every metric on `registry` (pass a fresh one per app in tests)."""
        p = PREFIX
        return cls(
            registry=registry,
            requests=Counter(
                f"{p}_http_requests_total",
                "HTTP requests by route template, method and status class.",
                ["route", "method", "status_class", "variant"],
                registry=registry,
            ),
            request_duration=Histogram(
                f"{p}_http_request_duration_seconds",
                "HTTP request duration from first byte in to response start.",
                ["route", "method", "variant"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            in_flight=Gauge(
                f"{p}_http_requests_in_flight",
                "HTTP requests being served now.",
                ["variant"],
                registry=registry,
            ),
            rejected=Counter(
                f"{p}_rejected_requests_total",
                "Requests refused with 429 or 503, by reason "
                "(overloaded, not_ready, shutting_down, sink_full, quota_exceeded).",
                ["route", "reason", "variant"],
                registry=registry,
            ),
            errors=Counter(
                f"{p}_errors_total",
                "Error responses by stable error type.",
                ["route", "error_type", "variant"],
                registry=registry,
            ),
            tokenization_duration=Histogram(
                f"{p}_tokenization_duration_seconds",
                "Time to tokenize one batch.",
                ["variant"],
                buckets=STAGE_BUCKETS,
                registry=registry,
            ),
            queue_wait=Histogram(
                f"{p}_batch_queue_wait_seconds",
                "Time a text waited in the batch queue before its ONNX run started.",
                ["variant"],
                buckets=STAGE_BUCKETS,
                registry=registry,
            ),
            deduplicated=Counter(
                f"{p}_deduplicated_texts_total",
                "Texts answered by another text's computation (DEDUP): a duplicate in the same "
                "batch (scope batch) or a text already being computed for another request "
                "(scope in_flight).",
                ["scope", "variant"],
                registry=registry,
            ),
            cache_hits=Counter(
                f"{p}_cache_hits_total",
                "Response cache lookups answered from the cache (CACHE_SIZE).",
                ["variant"],
                registry=registry,
            ),
            cache_misses=Counter(
                f"{p}_cache_misses_total",
                "Response cache lookups not in the cache (CACHE_SIZE).",
                ["variant"],
                registry=registry,
            ),
            cache_entries=Gauge(
                f"{p}_cache_entries",
                "Predictions held by the response cache (at most CACHE_SIZE).",
                ["variant"],
                registry=registry,
            ),
            cache_enabled=Gauge(
                f"{p}_cache_enabled",
                "1 while the response cache is in use; 0 when CACHE_SIZE is 0 or its hit-rate "
                "guard turned it off.",
                ["variant"],
                registry=registry,
            ),
            deadline_exceeded=Counter(
                f"{p}_deadline_exceeded_total",
                "Texts never run because their request's deadline (X-Request-Timeout, v2 "
                "parameters.timeout, CloudEvents deadline, or MAX_REQUEST_TIMEOUT_SECONDS) "
                "passed while they were queued, by priority lane.",
                ["priority", "variant"],
                registry=registry,
            ),
            inference_duration=Histogram(
                f"{p}_inference_duration_seconds",
                "Time of one ONNX Runtime session.run.",
                ["variant"],
                buckets=STAGE_BUCKETS,
                registry=registry,
            ),
            batch_size=Histogram(
                f"{p}_batch_size",
                "Texts (or chunks) per ONNX run.",
                ["variant"],
                buckets=SIZE_BUCKETS,
                registry=registry,
            ),
            batch_tokens=Counter(
                f"{p}_batch_tokens",
                "Tokens fed to ONNX runs: `real` (the texts' own) and `padded` (windows x width, "
                "padding included); padded / real is the padding waste.",
                ["kind", "variant"],
                registry=registry,
            ),
            tokens_per_text=Histogram(
                f"{p}_tokens_per_text",
                "Tokens per text after truncation, special tokens included, by predicted label.",
                ["label", "variant"],
                buckets=TOKEN_BUCKETS,
                registry=registry,
            ),
            predictions=Counter(
                f"{p}_predictions_total",
                "Predicted texts by label.",
                ["label", "variant"],
                registry=registry,
            ),
            truncated=Counter(
                f"{p}_truncated_texts_total",
                "Texts longer than the model's max tokens that were truncated.",
                ["variant"],
                registry=registry,
            ),
            prediction_score=Histogram(
                f"{p}_prediction_score",
                "Score of each prediction (P(positive) - P(negative), or the model's score "
                "weights), by predicted label; models without a score observe nothing.",
                ["label", "variant"],
                buckets=SCORE_BUCKETS,
                registry=registry,
            ),
            prediction_score_offset=Counter(
                f"{p}_prediction_score_offset",
                "Sum of (score + 1) over scored predictions, by label: the score histogram has "
                "negative buckets, so it exposes no _sum; the mean score is rate(this) / "
                "rate(kubesentiment_prediction_score_count) - 1.",
                ["label", "variant"],
                registry=registry,
            ),
            prediction_confidence=Histogram(
                f"{p}_prediction_confidence",
                "Probability of the predicted label (top-class confidence), by label.",
                ["label", "variant"],
                buckets=CONFIDENCE_BUCKETS,
                registry=registry,
            ),
            cold_start=Gauge(
                f"{p}_cold_start_seconds",
                "Seconds from process start to ready (model loaded and warmed up), by revision "
                "(K_REVISION, else local).",
                ["variant", "revision"],
                registry=registry,
            ),
            cold_start_phase=Gauge(
                f"{p}_cold_start_phase_seconds",
                "Seconds of the cold start spent in each phase (imports, model_pull, model_load, "
                "warmup, secrets, other): consecutive, they add up to cold_start_seconds.",
                ["phase", "variant", "revision"],
                registry=registry,
            ),
            model_load=Gauge(
                f"{p}_model_load_seconds",
                "Seconds to verify the model directory and build the ONNX session.",
                ["variant"],
                registry=registry,
            ),
            model_ready=Gauge(
                f"{p}_model_ready",
                "1 when the model is loaded, warmed up and accepting work, else 0.",
                ["variant"],
                registry=registry,
            ),
            model_info=Gauge(
                f"{p}_model_info",
                "Always 1; labels describe the served model.",
                ["variant", "model", "version", "precision"],
                registry=registry,
            ),
            secret_failures=Counter(
                f"{p}_secret_failures_total",
                "Failed Vault operations (login, read, renew).",
                ["operation", "variant"],
                registry=registry,
            ),
            auth_failures=Counter(
                f"{p}_auth_failures_total",
                "Requests refused for a missing or invalid API key.",
                ["reason", "variant"],
                registry=registry,
            ),
            events_sent=Counter(
                f"{p}_events_sent_total",
                "Result CloudEvents sent to K_SINK, by outcome (success, failure: given up "
                "after retries or cancelled at the shutdown deadline).",
                ["outcome", "variant"],
                registry=registry,
            ),
            sink_pending=Gauge(
                f"{p}_sink_pending",
                "Result CloudEvents being computed or delivered to K_SINK (at most "
                "SINK_MAX_PENDING; beyond it CloudEvent requests get 503).",
                ["variant"],
                registry=registry,
            ),
            event_redeliveries=Counter(
                f"{p}_event_redeliveries_total",
                "CloudEvents seen again by (source, id), by outcome: replayed (the stored reply), "
                "joined (the first delivery's computation still running), conflict (different "
                "content under a used id: computed afresh).",
                ["outcome", "variant"],
                registry=registry,
            ),
            event_replay_entries=Gauge(
                f"{p}_event_replay_entries",
                "Answered CloudEvents kept for redeliveries (at most EVENT_REPLAY_SIZE).",
                ["variant"],
                registry=registry,
            ),
            payload_log_events=Counter(
                f"{p}_payload_log_events_total",
                "Sampled request/response CloudEvents for PAYLOAD_LOG_SINK, by outcome (success; "
                "failure: given up after retries or cancelled at shutdown; dropped: the queue "
                "was full).",
                ["outcome", "variant"],
                registry=registry,
            ),
            payload_log_pending=Gauge(
                f"{p}_payload_log_pending",
                "Sampled payload events waiting for PAYLOAD_LOG_SINK (at most "
                "PAYLOAD_LOG_MAX_PENDING; beyond it they are dropped and counted).",
                ["variant"],
                registry=registry,
            ),
            # Usage per API key: `key_id` is a configured key's id (shared/quotas.py), never the
            # key, so its values are bounded by the keys configured.
            key_requests=Counter(
                f"{p}_key_requests_total",
                "Inference requests per API key id, by result: allowed by the key's token bucket "
                "(however they were then answered), or limited (refused with 429 quota_exceeded).",
                ["key_id", "result", "variant"],
                registry=registry,
            ),
            key_texts=Counter(
                f"{p}_key_texts_total",
                "Texts classified for each API key id.",
                ["key_id", "variant"],
                registry=registry,
            ),
            key_tokens=Counter(
                f"{p}_key_tokens_total",
                "Tokenizer tokens (after truncation, special tokens included) of the texts "
                "classified for each API key id.",
                ["key_id", "variant"],
                registry=registry,
            ),
            key_model_cpu=Counter(
                f"{p}_key_model_cpu_seconds_total",
                "Process CPU time of the ONNX runs spent on each API key id's texts (a run's CPU "
                "time shared among its texts by their windows).",
                ["key_id", "variant"],
                registry=registry,
            ),
        )


def status_class(status: int) -> str:
    """'2xx', '4xx', '5xx' ... for a status code."""
    return f"{status // 100}xx"
