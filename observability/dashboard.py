"""Build the Grafana dashboard `grafana/kubesentiment.json` from a short description in code.

Panels are declared as data (title, unit, queries); this module lays them out on Grafana's
24-column grid. The JSON is committed for Grafana's file provisioning or a dashboard ConfigMap, and
a test fails when it differs from what this module builds:

    python -m observability.dashboard > observability/grafana/kubesentiment.json

Knative panels read the OpenTelemetry names of Knative Serving 1.19+ and fall back with `or` to the
OpenCensus names of 1.18 and earlier, so one dashboard serves both.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

RATE = "$__rate_interval"
V = 'variant=~"$variant"'
KSVC_QP = 'knative_service=~"$knative_service"'  # set by the PodMonitor relabelling
KSVC_OTEL = 'kn_service_name=~"$knative_service"'  # autoscaler, Knative >= 1.19
KSVC_OC = 'service_name=~"$knative_service"'  # autoscaler, Knative <= 1.18


@dataclass(frozen=True)
class Query:
    """One PromQL target and its legend."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A panel: timeseries unless `kind` says otherwise; `width` in grid columns (of 24)."""

    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 8
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def q(expr: str, legend: str = "") -> Query:
    return Query(" ".join(expr.split()), legend)


def quantiles(metric: str, selector: str, by: str = "variant") -> tuple[Query, ...]:
    return tuple(
        q(
            f"histogram_quantile({p}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"{{{{{by}}}}} p{int(p * 100)}",
        )
        for p in (0.5, 0.95, 0.99)
    )


def knative(otel: str, legacy: str, legend: str) -> Query:
    """A query on the 1.19+ name, falling back to the <= 1.18 one."""
    return q(f"({otel}) or ({legacy})", legend)


INFERENCE = f'{V},route!~".*/health/.*|.*/ready|/metrics"'

ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Requests (RED, per variant)",
        (
            Panel(
                "Request rate",
                (
                    q(
                        "sum by (variant) (rate("
                        f"kubesentiment_http_requests_total{{{INFERENCE}}}[{RATE}]))",
                        "{{variant}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Requests by route and status",
                (
                    q(
                        f"sum by (variant, route, status_class) "
                        f"(rate(kubesentiment_http_requests_total{{{V}}}[{RATE}]))",
                        "{{variant}} {{route}} {{status_class}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Request duration",
                quantiles("kubesentiment_http_request_duration_seconds", INFERENCE),
                unit="s",
            ),
            Panel(
                "5xx ratio (availability SLI)",
                (q(f"variant:kubesentiment_http_errors:ratio_rate5m{{{V}}}", "{{variant}}"),),
                unit="percentunit",
            ),
            Panel(
                "Errors by type",
                (
                    q(
                        "sum by (variant, error_type) (rate("
                        f"kubesentiment_errors_total{{{V}}}[{RATE}]))",
                        "{{variant}} {{error_type}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Rejected requests by reason (429/503)",
                (
                    q(
                        f"sum by (variant, reason) "
                        f"(rate(kubesentiment_rejected_requests_total{{{V}}}[{RATE}]))",
                        "{{variant}} {{reason}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Texts past their deadline by lane (504 deadline_exceeded)",
                (
                    q(
                        f"sum by (variant, priority) "
                        f"(rate(kubesentiment_deadline_exceeded_total{{{V}}}[{RATE}]))",
                        "{{variant}} {{priority}}",
                    ),
                ),
                unit="ops",
                description="Texts never computed because their deadline (X-Request-Timeout, v2 "
                "parameters.timeout, the CloudEvents deadline or MAX_REQUEST_TIMEOUT_SECONDS) "
                "passed while queued; per priority lane.",
            ),
            Panel(
                "Error budget burn rate (1h)",
                (
                    q(
                        f"variant:kubesentiment_http_errors:ratio_rate1h{{{V}}} / 0.005",
                        "{{variant}} availability",
                    ),
                    q(
                        f"variant:kubesentiment_http_slow_requests:ratio_rate1h{{{V}}} / 0.01",
                        "{{variant}} latency",
                    ),
                ),
                description="1 = burning the budget exactly as fast as the SLO allows; "
                "the fast-burn page fires at 14.4.",
                width=8,
            ),
            Panel(
                "Requests slower than 0.5 s (latency SLI)",
                (
                    q(
                        f"variant:kubesentiment_http_slow_requests:ratio_rate5m{{{V}}}",
                        "{{variant}}",
                    ),
                ),
                unit="percentunit",
            ),
            Panel(
                "In-flight requests",
                (
                    q(
                        f"sum by (variant) (kubesentiment_http_requests_in_flight{{{V}}})",
                        "{{variant}}",
                    ),
                ),
            ),
        ),
    ),
    (
        "Inference pipeline",
        (
            Panel(
                "Stage latency (p95)",
                (
                    q(
                        f"histogram_quantile(0.95, sum by (variant, le) "
                        f"(rate(kubesentiment_tokenization_duration_seconds_bucket{{{V}}}[{RATE}])))",
                        "{{variant}} tokenize",
                    ),
                    q(
                        f"histogram_quantile(0.95, sum by (variant, le) "
                        f"(rate(kubesentiment_batch_queue_wait_seconds_bucket{{{V}}}[{RATE}])))",
                        "{{variant}} queue wait",
                    ),
                    q(
                        f"histogram_quantile(0.95, sum by (variant, le) "
                        f"(rate(kubesentiment_inference_duration_seconds_bucket{{{V}}}[{RATE}])))",
                        "{{variant}} inference",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Batch size",
                (
                    q(
                        f"sum by (variant) (rate(kubesentiment_batch_size_sum{{{V}}}[{RATE}])) / "
                        f"sum by (variant) (rate(kubesentiment_batch_size_count{{{V}}}[{RATE}]))",
                        "{{variant}} mean",
                    ),
                    q(
                        f"histogram_quantile(0.95, sum by (variant, le) "
                        f"(rate(kubesentiment_batch_size_bucket{{{V}}}[{RATE}])))",
                        "{{variant}} p95",
                    ),
                ),
            ),
            Panel(
                "ONNX runs per second",
                (
                    q(
                        "sum by (variant) (rate("
                        f"kubesentiment_inference_duration_seconds_count{{{V}}}[{RATE}]))",
                        "{{variant}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Tokens per text",
                quantiles("kubesentiment_tokens_per_text", V)[:2],
            ),
            Panel(
                "Truncated texts",
                (
                    q(
                        f"variant:kubesentiment_truncated_texts:ratio_rate5m{{{V}}}",
                        "{{variant}}",
                    ),
                ),
                unit="percentunit",
            ),
            Panel(
                "Predictions by label",
                (
                    q(
                        "sum by (variant, label) (rate("
                        f"kubesentiment_predictions_total{{{V}}}[{RATE}]))",
                        "{{variant}} {{label}}",
                    ),
                ),
                unit="ops",
            ),
        ),
    ),
    (
        "Prediction monitoring",
        (
            Panel(
                "Label mix: last hour vs trailing week",
                (
                    q(
                        f"variant_label:kubesentiment_predictions:ratio_rate1h{{{V}}}",
                        "{{variant}} {{label}} last hour",
                    ),
                    q(
                        f"variant_label:kubesentiment_predictions:ratio_rate1w{{{V}}}",
                        "{{variant}} {{label}} trailing week",
                    ),
                ),
                unit="percentunit",
                width=12,
                description="Each label's share of the predictions; the drift alert fires when a "
                "share is 0.15 away from the week's for 30 minutes (runbooks.md).",
            ),
            Panel(
                "Prediction score",
                (
                    q(
                        f"variant:kubesentiment_prediction_score:mean_rate1h{{{V}}}",
                        "{{variant}} mean, last hour",
                    ),
                    q(
                        f"variant:kubesentiment_prediction_score:mean_rate1w{{{V}}}",
                        "{{variant}} mean, trailing week",
                    ),
                    *(
                        q(
                            f"histogram_quantile({p}, sum by (variant, le) "
                            f"(rate(kubesentiment_prediction_score_bucket{{{V}}}[{RATE}])))",
                            f"{{{{variant}}}} p{int(p * 100)}",
                        )
                        for p in (0.1, 0.5, 0.9)
                    ),
                ),
                width=12,
                description="P(positive) - P(negative), from -1 to 1.",
            ),
            Panel(
                "Score distribution",
                (
                    q(
                        f"sum by (le) (rate(kubesentiment_prediction_score_bucket{{{V}}}[{RATE}]))",
                        "{{le}}",
                    ),
                ),
                kind="heatmap",
                options={"format": "heatmap"},
            ),
            Panel(
                "Top-class confidence",
                (
                    q(
                        f"variant:kubesentiment_prediction_confidence:mean_rate1h{{{V}}}",
                        "{{variant}} mean, last hour",
                    ),
                    q(
                        f"histogram_quantile(0.5, sum by (variant, label, le) "
                        f"(rate(kubesentiment_prediction_confidence_bucket{{{V}}}[{RATE}])))",
                        "{{variant}} {{label}} p50",
                    ),
                ),
                unit="percentunit",
                description="Probability of the predicted label; falling confidence is typical "
                "of inputs unlike the training data.",
            ),
            Panel(
                "Tokens per text by label",
                (
                    q(
                        f"histogram_quantile(0.5, sum by (variant, label, le) "
                        f"(rate(kubesentiment_tokens_per_text_bucket{{{V}}}[{RATE}])))",
                        "{{variant}} {{label}} p50",
                    ),
                ),
            ),
            Panel(
                "Payload log events (PAYLOAD_LOG_SAMPLE)",
                (
                    q(
                        f"sum by (variant, outcome) "
                        f"(rate(kubesentiment_payload_log_events_total{{{V}}}[{RATE}]))",
                        "{{variant}} {{outcome}}",
                    ),
                    q(
                        f"sum by (variant) (kubesentiment_payload_log_pending{{{V}}})",
                        "{{variant}} pending",
                    ),
                ),
                description="Sampled request/response events sent to PAYLOAD_LOG_SINK; dropped "
                "and failure are events lost (queue full, sink down).",
            ),
        ),
    ),
    (
        "Cold starts and model",
        (
            Panel(
                "Cold start (process start to ready), per pod",
                (
                    q(
                        f"kubesentiment_cold_start_seconds{{{V}}}",
                        "{{variant}} {{revision}} {{pod}}",
                    ),
                ),
                unit="s",
                description="Knative emits no cold-start metric of its own; "
                "this is the function's.",
            ),
            Panel(
                "Cold start by revision and phase (slowest pod in the time range)",
                (
                    q(
                        "max by (variant, revision, phase) (max_over_time("
                        f"kubesentiment_cold_start_phase_seconds{{{V}}}[$__range])) "
                        "or label_replace(max by (variant, revision) (max_over_time("
                        f"kubesentiment_cold_start_seconds{{{V}}}[$__range])), "
                        '"phase", "total", "", "")'
                    ),
                ),
                unit="s",
                kind="table",
                width=16,
                description="Where each revision's cold start goes: imports (interpreter and web "
                "stack), model_pull (oci:// MODEL_URI), model_load (what the load adds after the "
                "imports it overlaps), warmup, secrets (Vault), other; the phases of one pod add "
                "up to its total. Revision is K_REVISION; pods that scaled to zero still count "
                "within the dashboard's time range.",
                options={"format": "table", "instant": True},
            ),
            Panel(
                "Model load, per pod",
                (q(f"kubesentiment_model_load_seconds{{{V}}}", "{{variant}} {{pod}}"),),
                unit="s",
            ),
            Panel(
                "Pods with a ready model",
                (q(f"sum by (variant) (kubesentiment_model_ready{{{V}}})", "{{variant}}"),),
            ),
            Panel(
                "Served models",
                (
                    q(
                        "max by (variant, model, version, precision) ("
                        f"kubesentiment_model_info{{{V}}})"
                    ),
                ),
                kind="table",
                width=12,
                options={"format": "table", "instant": True},
            ),
            Panel(
                "Vault, API key and K_SINK failures",
                (
                    q(
                        f"sum by (variant, operation) "
                        f"(increase(kubesentiment_secret_failures_total{{{V}}}[{RATE}]))",
                        "{{variant}} vault {{operation}}",
                    ),
                    q(
                        f"sum by (variant, reason) "
                        f"(increase(kubesentiment_auth_failures_total{{{V}}}[{RATE}]))",
                        "{{variant}} auth {{reason}}",
                    ),
                    q(
                        f"sum by (variant, outcome) "
                        f"(increase(kubesentiment_events_sent_total{{{V}}}[{RATE}]))",
                        "{{variant}} events {{outcome}}",
                    ),
                ),
                width=12,
            ),
        ),
    ),
    (
        "Knative autoscaler",
        (
            Panel(
                "Pods: desired, requested, actual",
                (
                    knative(
                        f"sum by (kn_revision_name) (kn_revision_pods_desired{{{KSVC_OTEL}}})",
                        f"sum by (revision_name) (autoscaler_desired_pods{{{KSVC_OC}}})",
                        "desired {{kn_revision_name}}{{revision_name}}",
                    ),
                    knative(
                        f"sum by (kn_revision_name) (kn_revision_pods_requested{{{KSVC_OTEL}}})",
                        f"sum by (revision_name) (autoscaler_requested_pods{{{KSVC_OC}}})",
                        "requested {{kn_revision_name}}{{revision_name}}",
                    ),
                    knative(
                        f"sum by (kn_revision_name) (kn_revision_pods_count{{{KSVC_OTEL}}})",
                        f"sum by (revision_name) (autoscaler_actual_pods{{{KSVC_OC}}})",
                        "actual {{kn_revision_name}}{{revision_name}}",
                    ),
                ),
            ),
            Panel(
                "Pods not ready / pending",
                (
                    knative(
                        "sum by (kn_revision_name) ("
                        f"kn_revision_pods_not_ready_count{{{KSVC_OTEL}}})",
                        f"sum by (revision_name) (autoscaler_not_ready_pods{{{KSVC_OC}}})",
                        "not ready {{kn_revision_name}}{{revision_name}}",
                    ),
                    knative(
                        "sum by (kn_revision_name) ("
                        f"kn_revision_pods_pending_count{{{KSVC_OTEL}}})",
                        f"sum by (revision_name) (autoscaler_pending_pods{{{KSVC_OC}}})",
                        "pending {{kn_revision_name}}{{revision_name}}",
                    ),
                ),
            ),
            Panel(
                "Concurrency per pod: stable, panic, target",
                (
                    knative(
                        "sum by (kn_revision_name) ("
                        f"kn_revision_concurrency_stable{{{KSVC_OTEL}}})",
                        "sum by (revision_name) ("
                        f"autoscaler_stable_request_concurrency{{{KSVC_OC}}})",
                        "stable {{kn_revision_name}}{{revision_name}}",
                    ),
                    knative(
                        f"sum by (kn_revision_name) (kn_revision_concurrency_panic{{{KSVC_OTEL}}})",
                        "sum by (revision_name) ("
                        f"autoscaler_panic_request_concurrency{{{KSVC_OC}}})",
                        "panic {{kn_revision_name}}{{revision_name}}",
                    ),
                    knative(
                        "sum by (kn_revision_name) ("
                        f"kn_revision_concurrency_target{{{KSVC_OTEL}}})",
                        "sum by (revision_name) ("
                        f"autoscaler_target_concurrency_per_pod{{{KSVC_OC}}})",
                        "target {{kn_revision_name}}{{revision_name}}",
                    ),
                ),
            ),
            Panel(
                "Panic mode (Knative <= 1.18)",
                (
                    q(
                        f"max by (revision_name) (autoscaler_panic_mode{{{KSVC_OC}}})",
                        "{{revision_name}}",
                    ),
                ),
                description="1 while the KPA is in panic mode; "
                "Knative 1.19+ exports no such gauge.",
            ),
            Panel(
                "Excess burst capacity",
                (
                    knative(
                        f"sum by (kn_revision_name) (kn_revision_capacity_excess{{{KSVC_OTEL}}})",
                        f"sum by (revision_name) (autoscaler_excess_burst_capacity{{{KSVC_OC}}})",
                        "{{kn_revision_name}}{{revision_name}}",
                    ),
                ),
            ),
            Panel(
                "Requests through the activator (concurrency)",
                (
                    knative(
                        "sum by (kn_revision_name) ("
                        f"kn_revision_request_concurrency{{{KSVC_OTEL}}})",
                        f"sum by (revision_name) (activator_request_concurrency{{{KSVC_OC}}})",
                        "{{kn_revision_name}}{{revision_name}}",
                    ),
                ),
                description="Non-zero while a revision is scaled to zero or below its burst "
                "capacity: requests wait in the activator (cold starts).",
            ),
        ),
    ),
    (
        "Knative queue-proxy",
        (
            Panel(
                "Requests through queue-proxy by status",
                (
                    knative(
                        f"sum by (http_response_status_code) "
                        f"(rate(kn_serving_invocation_duration_seconds_count{{{KSVC_QP}}}[{RATE}]))",
                        f"sum by (response_code_class) "
                        f"(rate(revision_request_count{{{KSVC_QP}}}[{RATE}]))",
                        "{{http_response_status_code}}{{response_code_class}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Latency p95: queue-proxy vs user container",
                (
                    knative(
                        f"histogram_quantile(0.95, sum by (le) "
                        f"(rate(http_server_request_duration_seconds_bucket{{{KSVC_QP}}}[{RATE}])))",
                        f"histogram_quantile(0.95, sum by (le) "
                        f"(rate(revision_request_latencies_bucket{{{KSVC_QP}}}[{RATE}]))) / 1000",
                        "through queue-proxy",
                    ),
                    knative(
                        f"histogram_quantile(0.95, sum by (le) "
                        f"(rate(kn_serving_invocation_duration_seconds_bucket{{{KSVC_QP}}}[{RATE}])))",
                        f"histogram_quantile(0.95, sum by (le) "
                        f"(rate(revision_app_request_latencies_bucket{{{KSVC_QP}}}[{RATE}]))) / "
                        "1000",
                        "user container",
                    ),
                ),
                unit="s",
                description="Knative <= 1.18 reports milliseconds; the query converts to seconds.",
            ),
            Panel(
                "Queue depth",
                (
                    knative(
                        f"sum by (pod) (kn_serving_queue_depth{{{KSVC_QP}}})",
                        f"sum by (pod) (revision_queue_depth{{{KSVC_QP}}})",
                        "{{pod}}",
                    ),
                ),
                description="Requests waiting in queue-proxy for a containerConcurrency slot.",
            ),
        ),
    ),
)

KSVC_QUERY = 'label_values(kubesentiment_model_info{variant=~"$variant"}, knative_service)'
TEMPLATING = [
    {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
    },
    {
        "name": "variant",
        "label": "Variant",
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": "label_values(kubesentiment_model_info, variant)", "refId": "variant"},
        "definition": "label_values(kubesentiment_model_info, variant)",
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
        "hide": 0,
    },
    {
        "name": "knative_service",
        "label": "Knative Service",
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {
            "query": KSVC_QUERY,
            "refId": "knative_service",
        },
        "definition": KSVC_QUERY,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
        "hide": 0,
    },
]


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    targets = [
        {
            "datasource": datasource,
            "expr": query.expr,
            "legendFormat": query.legend or "__auto",
            "refId": chr(ord("A") + i),
            **({"format": "table", "instant": True} if panel.options.get("instant") else {}),
            **({"format": panel.options["format"]} if "format" in panel.options else {}),
        }
        for i, query in enumerate(panel.queries)
    ]
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": datasource,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if panel.kind == "timeseries"
        else {},
        "targets": targets,
    }


def dashboard() -> dict[str, Any]:
    """The whole dashboard as Grafana JSON (schema version 39)."""
    panels: list[dict[str, Any]] = []
    panel_id, y = 1, 0
    for title, row_panels in ROWS:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y, x = panel_id + 1, y + 1, 0
        for panel in row_panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel(panel, panel_id, x, y))
            panel_id, x = panel_id + 1, x + panel.width
        y += 8
    return {
        "uid": "kubesentiment",
        "title": "KubeSentiment",
        "description": "Sentiment functions on Knative: per-variant RED metrics, pipeline stages, "
        "cold starts, and Knative's autoscaler and queue-proxy.",
        "tags": ["kubesentiment", "knative"],
        "timezone": "utc",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": TEMPLATING},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def main() -> None:
    """Print the dashboard JSON."""
    json.dump(dashboard(), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
