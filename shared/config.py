"""Typed settings, read once from the environment at start.

Every setting is one environment variable, declared once in `FIELDS` with its default, parser and
meaning; the README's configuration table is checked against this list by a test. A bad value
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


class ConfigError(ValueError):
    """A setting has a value that cannot be used."""


@dataclass(frozen=True)
class Secret:
    """A secret string whose repr and str never show the value."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def get(self) -> str:
        """The secret value, for the one place that needs it."""
        return self.value

    @property
    def is_vault_ref(self) -> bool:
        """True when the value names a Vault secret instead of holding one."""
        return self.value.startswith("vault:")


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true/false")


def _int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"must be {bound}")
        return value

    return parse


def _float(minimum: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw.strip())
        if not value >= minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _str(raw: str) -> str:
    return raw.strip()


def _optional_str(raw: str) -> str | None:
    return raw.strip() or None


def _secret(raw: str) -> Secret | None:
    return Secret(raw.strip()) if raw.strip() else None


def _path(raw: str) -> Path:
    return Path(raw.strip())


@dataclass(frozen=True)
class Var:
    """How one setting is read: its environment variable, default text, parser and meaning."""

    env: str
    default: str
    parse: Callable[[str], Any]
    doc: str
    secret: bool = False


# One entry per Settings field, in the order of the README's configuration table.
FIELDS: Mapping[str, Var] = {
    "host": Var("HOST", "0.0.0.0", _str, "Address to bind."),
    "port": Var("PORT", "8080", _int(1, 65535), "Port to listen on (Knative runtime contract)."),
    "model_dir": Var(
        "MODEL_DIR", "models/minilm-sentiment-int8", _path, "Model directory to serve."
    ),
    "variant": Var("VARIANT", "cpu-int8", _str, "Variant name used in responses, logs, metrics."),
    "providers": Var(
        "ORT_PROVIDERS",
        "CPUExecutionProvider",
        _csv,
        "ONNX Runtime execution providers in order of preference; unavailable ones are skipped.",
    ),
    "intra_op_threads": Var(
        "ORT_INTRA_OP_THREADS",
        "0",
        _int(0, 256),
        "ORT intra-op threads; 0 = the container's CPU quota (cgroup v2 or v1), "
        "else the CPU count.",
    ),
    "inter_op_threads": Var("ORT_INTER_OP_THREADS", "1", _int(1, 64), "ORT inter-op threads."),
    "ort_spinning": Var(
        "ORT_ALLOW_SPINNING",
        "false",
        _bool,
        "Let idle ORT threads spin; off, they leave the CPU to the event loop (2-core pods).",
    ),
    "max_texts": Var("MAX_TEXTS", "256", _int(1), "Most texts accepted in one request or event."),
    "max_text_chars": Var("MAX_TEXT_CHARS", "10000", _int(1), "Most characters in one text."),
    "max_body_bytes": Var(
        "MAX_BODY_BYTES", "1048576", _int(256), "Largest request body, checked before parsing."
    ),
    "long_text": Var(
        "LONG_TEXT",
        "truncate",
        _choice("truncate", "chunk"),
        "Texts over the model's max tokens: `truncate` (flagged) or `chunk` (windows, averaged).",
    ),
    "chunk_overlap": Var(
        "CHUNK_OVERLAP_TOKENS", "32", _int(0), "Tokens shared by neighbouring chunk windows."
    ),
    "batching": Var("BATCHING", "true", _bool, "Coalesce concurrent requests into one ONNX run."),
    "batch_max_size": Var("BATCH_MAX_SIZE", "32", _int(1, 4096), "Most texts in one ONNX run."),
    "batch_max_wait_ms": Var(
        "BATCH_MAX_WAIT_MS",
        "2",
        _float(0.0),
        "Longest a text waits for company while a run is already busy; a lone text never waits.",
    ),
    "max_concurrency": Var(
        "MAX_CONCURRENCY",
        "64",
        _int(1),
        "In-flight inference requests before 429; match Knative containerConcurrency.",
    ),
    "max_queued_texts": Var(
        "MAX_QUEUED_TEXTS", "4096", _int(1), "Texts waiting for inference before 429."
    ),
    "retry_after_s": Var("RETRY_AFTER_SECONDS", "1", _int(0), "Retry-After sent with 429/503."),
    "shutdown_timeout_s": Var(
        "SHUTDOWN_TIMEOUT_SECONDS",
        "25",
        _float(0.0),
        "On SIGTERM, how long accepted work may take to finish.",
    ),
    "warmup": Var("WARMUP", "true", _bool, "Run a warm-up inference before reporting ready."),
    "log_level": Var(
        "LOG_LEVEL", "INFO", _choice("debug", "info", "warning", "error"), "Log level."
    ),
    "log_format": Var("LOG_FORMAT", "json", _choice("json", "text"), "Log line format."),
    "api_keys": Var(
        "API_KEYS",
        "",
        _secret,
        "Comma-separated API keys (or `vault:MOUNT/PATH#KEY`); empty = no authentication.",
        secret=True,
    ),
    "vault_addr": Var("VAULT_ADDR", "", _optional_str, "Vault/OpenBao address; empty = no Vault."),
    "vault_auth": Var(
        "VAULT_AUTH_METHOD",
        "kubernetes",
        _choice("token", "kubernetes", "approle"),
        "How to log in to Vault.",
    ),
    "vault_token": Var("VAULT_TOKEN", "", _secret, "Token for `token` auth.", secret=True),
    "vault_role": Var("VAULT_ROLE", "kubesentiment", _str, "Role for `kubernetes` auth."),
    "vault_k8s_mount": Var(
        "VAULT_KUBERNETES_MOUNT", "kubernetes", _str, "Mount path of the Kubernetes auth method."
    ),
    "vault_k8s_token_path": Var(
        "VAULT_KUBERNETES_TOKEN_PATH",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        _path,
        "Projected service-account token file.",
    ),
    "vault_approle_mount": Var("VAULT_APPROLE_MOUNT", "approle", _str, "AppRole mount path."),
    "vault_role_id": Var("VAULT_ROLE_ID", "", _str, "AppRole role id."),
    "vault_secret_id": Var("VAULT_SECRET_ID", "", _secret, "AppRole secret id.", secret=True),
    "vault_timeout_s": Var("VAULT_TIMEOUT_SECONDS", "5", _float(0.1), "Vault request timeout."),
    "k_sink": Var(
        "K_SINK", "", _optional_str, "Where result events are also sent (set by SinkBinding)."
    ),
    "ce_source": Var(
        "CE_SOURCE", "", _str, "`source` of emitted CloudEvents; empty = /kubesentiment/VARIANT."
    ),
    "otel_endpoint": Var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        _optional_str,
        "OTLP endpoint; tracing is off when it and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT are empty.",
    ),
    "otel_traces_endpoint": Var(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "", _optional_str, "OTLP traces endpoint."
    ),
    "service_name": Var(
        "OTEL_SERVICE_NAME", "", _str, "Service name in traces; empty = K_SERVICE or kubesentiment."
    ),
    "k_service": Var("K_SERVICE", "", _str, "Knative Service name (set by Knative)."),
    "k_revision": Var("K_REVISION", "", _str, "Knative Revision name (set by Knative)."),
}


@dataclass(frozen=True)
class Settings:
    """Every setting of a function, parsed and validated."""

    host: str = "0.0.0.0"
    port: int = 8080
    model_dir: Path = Path("models/minilm-sentiment-int8")
    variant: str = "cpu-int8"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    ort_spinning: bool = False
    max_texts: int = 256
    max_text_chars: int = 10000
    max_body_bytes: int = 1048576
    long_text: str = "truncate"
    chunk_overlap: int = 32
    batching: bool = True
    batch_max_size: int = 32
    batch_max_wait_ms: float = 2.0
    max_concurrency: int = 64
    max_queued_texts: int = 4096
    retry_after_s: int = 1
    shutdown_timeout_s: float = 25.0
    warmup: bool = True
    log_level: str = "info"
    log_format: str = "json"
    api_keys: Secret | None = None
    vault_addr: str | None = None
    vault_auth: str = "kubernetes"
    vault_token: Secret | None = None
    vault_role: str = "kubesentiment"
    vault_k8s_mount: str = "kubernetes"
    vault_k8s_token_path: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    vault_approle_mount: str = "approle"
    vault_role_id: str = ""
    vault_secret_id: Secret | None = None
    vault_timeout_s: float = 5.0
    k_sink: str | None = None
    ce_source: str = ""
    otel_endpoint: str | None = None
    otel_traces_endpoint: str | None = None
    service_name: str = ""
    k_service: str = ""
    k_revision: str = ""

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
