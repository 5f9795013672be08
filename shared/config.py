"""Typed settings, read once from the environment at start.

Every setting is one environment variable, declared once as a `Settings` field by `setting(...)`
with its default, parser and meaning; `FIELDS` and the README's configuration table (kept in sync by
a test) are derived from that declaration. A bad value
fails at start with the variable's name and the value. Secret values are wrapped in `Secret` so
their repr is masked; a secret may also be a Vault reference (`vault:MOUNT/PATH#KEY`) that the
Vault client resolves at start.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from shared.modelstore import ModelUri
from shared.modelstore import parse_setting as parse_model_uri
from shared.settings_base import ConfigError as ConfigError
from shared.settings_base import Secret as Secret
from shared.settings_base import (
    Var,
    _bool,
    _choice,
    _csv,
    _float,
    _int,
    _model_name,
    _optional_str,
    _optional_url,
    _path,
    _secret,
    _str,
    _unit,
)


def setting(
    env: str, default: str, parse: Callable[[str], Any], doc: str, *, secret: bool = False
) -> Any:
    """Declare one Settings field: the dataclass default is `parse(default)`, so the typed
    default, the variable, its meaning and the README table all come from this one call."""
    var = Var(env, default, parse, doc, secret)
    return field(default=parse(default), metadata={"var": var})


@dataclass(frozen=True)
class Settings:
    """Every setting of a function, parsed and validated; one `setting(...)` per variable, in the
    order of the README's configuration table."""

    host: str = setting("HOST", "0.0.0.0", _str, "Address to bind.")
    port: int = setting(
        "PORT", "8080", _int(1, 65535), "Port to listen on (Knative runtime contract)."
    )
    model_dir: Path = setting(
        "MODEL_DIR", "models/minilm-sentiment-int8", _path, "Model directory to serve."
    )
    model_uri: ModelUri | None = setting(
        "MODEL_URI",
        "",
        parse_model_uri,
        "Model to serve instead of MODEL_DIR: `oci://HOST[:PORT]/REPO@sha256:DIGEST` (pulled at "
        "start, verified, cached; a tag alone is refused) or `file:///DIR`; empty = MODEL_DIR.",
    )
    model_cache_dir: Path = setting(
        "MODEL_CACHE_DIR",
        # A pod's /tmp is its own emptyDir; elsewhere a planted entry is still refused, since
        # a cache hit is checked against the pinned digest (shared/modelstore.py).
        "/tmp/kubesentiment-models",  # noqa: S108
        _path,
        "Writable directory for pulled models, one per digest (an emptyDir in a pod).",
    )
    model_registry_plain_http: bool = setting(
        "MODEL_REGISTRY_PLAIN_HTTP",
        "false",
        _bool,
        "Reach MODEL_URI's registry over HTTP, not HTTPS (a loopback registry always is).",
    )
    variant: str = setting(
        "VARIANT", "cpu-int8", _str, "Variant name used in responses, logs, metrics."
    )
    model_name: str | None = setting(
        "MODEL_NAME",
        "",
        _model_name,
        "Name the v2 routes serve the model under (`/v2/models/NAME`), besides its own name and "
        "VARIANT; KServe's runtime sets the InferenceService's name. Empty = the model's name.",
    )
    providers: tuple[str, ...] = setting(
        "ORT_PROVIDERS",
        "CPUExecutionProvider",
        _csv,
        "ONNX Runtime execution providers in order of preference; unavailable ones are skipped.",
    )
    intra_op_threads: int = setting(
        "ORT_INTRA_OP_THREADS",
        "0",
        _int(0, 256),
        "ORT intra-op threads; 0 = the container's CPU quota (cgroup v2 or v1), "
        "else the CPU count.",
    )
    inter_op_threads: int = setting(
        "ORT_INTER_OP_THREADS", "1", _int(1, 64), "ORT inter-op threads."
    )
    ort_spinning: bool = setting(
        "ORT_ALLOW_SPINNING",
        "false",
        _bool,
        "Let idle ORT threads spin; off, they leave the CPU to the event loop (2-core pods).",
    )
    max_texts: int = setting(
        "MAX_TEXTS", "256", _int(1), "Most texts accepted in one request or event."
    )
    max_text_chars: int = setting(
        "MAX_TEXT_CHARS", "10000", _int(1), "Most characters in one text."
    )
    max_body_bytes: int = setting(
        "MAX_BODY_BYTES", "1048576", _int(256), "Largest request body, checked before parsing."
    )
    long_text: str = setting(
        "LONG_TEXT",
        "truncate",
        _choice("truncate", "chunk"),
        "Texts over the model's max tokens: `truncate` (flagged) or `chunk` (windows, averaged).",
    )
    chunk_overlap: int = setting(
        "CHUNK_OVERLAP_TOKENS", "32", _int(0), "Tokens shared by neighbouring chunk windows."
    )
    batching: bool = setting(
        "BATCHING", "true", _bool, "Coalesce concurrent requests into one ONNX run."
    )
    batch_max_size: int = setting(
        "BATCH_MAX_SIZE", "32", _int(1, 4096), "Most texts in one ONNX run."
    )
    batch_max_wait_ms: float = setting(
        "BATCH_MAX_WAIT_MS",
        "2",
        _float(0.0),
        "Longest a text waits for company while a run is already busy; a lone text never waits.",
    )
    priorities: bool = setting(
        "PRIORITIES", "on", _bool, "Serve queued texts by priority lane (high, normal, low)."
    )
    priority_max_wait_ms: float = setting(
        "PRIORITY_MAX_WAIT_MS",
        "500",
        _float(0.0),
        "Longest a lower-priority text is overtaken: past it, it goes before newer texts.",
    )
    max_request_timeout_s: float = setting(
        "MAX_REQUEST_TIMEOUT_SECONDS",
        "25",
        _float(0.0, above=True),
        "Deadline of every request, and cap on a client's own; texts still queued at their "
        "deadline are never run (504). Keep it below the Knative revision's timeoutSeconds.",
    )
    max_concurrency: int = setting(
        "MAX_CONCURRENCY",
        "64",
        _int(1),
        "In-flight inference requests before 429; match Knative containerConcurrency.",
    )
    max_queued_texts: int = setting(
        "MAX_QUEUED_TEXTS", "4096", _int(1), "Texts waiting for inference before 429."
    )
    dedup: bool = setting(
        "DEDUP",
        "on",
        _bool,
        "Compute identical texts (same options) once: duplicates in a batch, and texts already "
        "being computed for another request in flight.",
    )
    cache_size: int = setting(
        "CACHE_SIZE",
        "0",
        _int(0),
        "Entries of the LRU response cache keyed on the model's sha256, options and text; 0 = off.",
    )
    cache_min_hit_rate: float = setting(
        "CACHE_MIN_HIT_RATE",
        "0.02",
        _unit,
        "The cache turns itself off (until restart) when its hit rate over the last "
        "CACHE_GUARD_WINDOW lookups is below this; 0 = never.",
    )
    cache_guard_window: int = setting(
        "CACHE_GUARD_WINDOW", "2000", _int(1), "Lookups the cache's hit-rate guard looks at."
    )
    retry_after_s: int = setting(
        "RETRY_AFTER_SECONDS", "1", _int(0), "Retry-After sent with 429/503."
    )
    shutdown_timeout_s: float = setting(
        "SHUTDOWN_TIMEOUT_SECONDS",
        "25",
        _float(0.0, above=True),
        "On SIGTERM, the one deadline shared by every shutdown step (uvicorn drain, batch queue, "
        "K_SINK flush, span flush); keep it below the pod's termination grace period.",
    )
    startup_timeout_s: float = setting(
        "STARTUP_TIMEOUT_SECONDS",
        "120",
        _float(0.0, above=True),
        "Longest start-up may take (Vault login and reads are retried with backoff); past it "
        "liveness fails so Kubernetes restarts the pod.",
    )
    body_timeout_s: float = setting(
        "BODY_TIMEOUT_SECONDS",
        "30",
        _float(0.0, above=True),
        "Longest a client may take to send its request body before a 408 frees its slot.",
    )
    warmup: bool = setting(
        "WARMUP", "true", _bool, "Run a warm-up inference before reporting ready."
    )
    explain_max_words: int = setting(
        "EXPLAIN_MAX_WORDS",
        "64",
        _int(1, 4096),
        "Words an explanation scores (one model input each); later words get no attribution.",
    )
    playground: bool = setting(
        "PLAYGROUND", "on", _bool, "Serve the playground page at `GET /playground`."
    )
    labelling: bool = setting(
        "LABELLING",
        "off",
        _bool,
        "Serve the labelling page at `GET /label` (behind the API keys when they are on).",
    )
    log_level: str = setting(
        "LOG_LEVEL", "INFO", _choice("debug", "info", "warning", "error"), "Log level."
    )
    log_format: str = setting("LOG_FORMAT", "json", _choice("json", "text"), "Log line format.")
    api_keys: Secret | None = setting(
        "API_KEYS",
        "",
        _secret,
        "Comma-separated API keys, or a JSON list of keys and `{key, id, rate, burst, events}` "
        "objects (quotas per key); or `vault:MOUNT/PATH#KEY`; empty = no authentication.",
        secret=True,
    )
    vault_addr: str | None = setting(
        "VAULT_ADDR", "", _optional_str, "Vault/OpenBao address; empty = no Vault."
    )
    vault_auth: str = setting(
        "VAULT_AUTH_METHOD",
        "kubernetes",
        _choice("token", "kubernetes", "approle"),
        "How to log in to Vault.",
    )
    vault_token: Secret | None = setting(
        "VAULT_TOKEN", "", _secret, "Token for `token` auth.", secret=True
    )
    vault_role: str = setting("VAULT_ROLE", "kubesentiment", _str, "Role for `kubernetes` auth.")
    vault_k8s_mount: str = setting(
        "VAULT_KUBERNETES_MOUNT", "kubernetes", _str, "Mount path of the Kubernetes auth method."
    )
    vault_k8s_token_path: Path = setting(
        "VAULT_KUBERNETES_TOKEN_PATH",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        _path,
        "Projected service-account token file.",
    )
    vault_approle_mount: str = setting(
        "VAULT_APPROLE_MOUNT", "approle", _str, "AppRole mount path."
    )
    vault_role_id: str = setting("VAULT_ROLE_ID", "", _str, "AppRole role id.")
    vault_secret_id: Secret | None = setting(
        "VAULT_SECRET_ID", "", _secret, "AppRole secret id.", secret=True
    )
    vault_timeout_s: float = setting(
        "VAULT_TIMEOUT_SECONDS", "5", _float(0.1), "Vault request timeout."
    )
    k_sink: str | None = setting(
        "K_SINK", "", _optional_str, "Where result events are also sent (set by SinkBinding)."
    )
    sink_max_pending: int = setting(
        "SINK_MAX_PENDING",
        "1024",
        _int(1),
        "Result events waiting for K_SINK; beyond it CloudEvents get 503 + Retry-After.",
    )
    event_replay_size: int = setting(
        "EVENT_REPLAY_SIZE",
        "1024",
        _int(0),
        "Answered CloudEvents kept by (source, id) so a redelivery gets the stored reply (and "
        "one still being computed is joined); 0 = every delivery is computed.",
    )
    event_replay_ttl_s: float = setting(
        "EVENT_REPLAY_TTL_SECONDS",
        "600",
        _float(0.0, above=True),
        "How long an answered CloudEvent is replayed to a redelivery (the Broker's retries "
        "with backoff must fit in it).",
    )
    payload_log_sample: float = setting(
        "PAYLOAD_LOG_SAMPLE",
        "0",
        _unit,
        "Fraction (0-1) of inference requests whose texts and predictions are sent as "
        "CloudEvents to PAYLOAD_LOG_SINK; 0 = off.",
    )
    payload_log_sink: str | None = setting(
        "PAYLOAD_LOG_SINK", "", _optional_url, "URL that receives the sampled payload events."
    )
    payload_log_hash_texts: bool = setting(
        "PAYLOAD_LOG_HASH_TEXTS", "false", _bool, "Send each text's sha256 (hex) instead of it."
    )
    payload_log_max_pending: int = setting(
        "PAYLOAD_LOG_MAX_PENDING",
        "256",
        _int(1),
        "Payload events waiting for their sink; beyond it new ones are dropped (counted).",
    )
    ce_source: str = setting(
        "CE_SOURCE", "", _str, "`source` of emitted CloudEvents; empty = /kubesentiment/VARIANT."
    )
    otel_endpoint: str | None = setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        _optional_str,
        "OTLP endpoint; tracing is off when it and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT are empty.",
    )
    otel_traces_endpoint: str | None = setting(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "", _optional_str, "OTLP traces endpoint."
    )
    service_name: str = setting(
        "OTEL_SERVICE_NAME", "", _str, "Service name in traces; empty = K_SERVICE or kubesentiment."
    )
    k_service: str = setting("K_SERVICE", "", _str, "Knative Service name (set by Knative).")
    k_revision: str = setting("K_REVISION", "", _str, "Knative Revision name (set by Knative).")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Parse every variable in FIELDS; an unusable value raises ConfigError naming it."""
        values: dict[str, Any] = {}
        for name, var in FIELDS.items():
            raw = environ.get(var.env, var.default)
            try:
                values[name] = var.parse(raw)
            except ValueError as e:
                shown = "**********" if var.secret else repr(raw)
                raise ConfigError(f"{var.env}={shown} is invalid: {e}") from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-field rules that a single parser cannot see."""
        if self.vault_addr and self.vault_auth == "token" and self.vault_token is None:
            raise ConfigError("VAULT_TOKEN is required when VAULT_AUTH_METHOD=token")
        if self.vault_addr and self.vault_auth == "approle" and not self.vault_role_id:
            raise ConfigError("VAULT_ROLE_ID is required when VAULT_AUTH_METHOD=approle")
        refs = [v for v in self.secrets().values() if v.is_vault_ref]
        if refs and not self.vault_addr:
            raise ConfigError("a setting references Vault (vault:...) but VAULT_ADDR is empty")
        if self.batch_max_size > self.max_queued_texts:
            raise ConfigError("BATCH_MAX_SIZE must not exceed MAX_QUEUED_TEXTS")
        if self.api_keys is not None and not self.api_keys.is_vault_ref:
            from shared.quotas import parse_entries  # only with API keys

            try:
                parse_entries(self.api_keys.get())
            except ValueError as e:
                raise ConfigError(f"API_KEYS=********** is invalid: {e}") from None
        if self.payload_log_sample > 0 and not self.payload_log_sink:
            raise ConfigError("PAYLOAD_LOG_SINK is required when PAYLOAD_LOG_SAMPLE > 0")

    def secrets(self) -> dict[str, Secret]:
        """The secret settings that are set, by field name."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if FIELDS[f.name].secret and getattr(self, f.name) is not None
        }

    @property
    def event_source(self) -> str:
        """`source` attribute of the CloudEvents this function emits."""
        return self.ce_source or f"/kubesentiment/{self.variant}"

    @property
    def tracing_enabled(self) -> bool:
        """True when a standard OTLP endpoint variable is set."""
        return bool(self.otel_endpoint or self.otel_traces_endpoint)


# Field name -> how it is read, derived from the Settings declaration (README table, Vault refs).
FIELDS: Mapping[str, Var] = {f.name: f.metadata["var"] for f in fields(Settings)}
