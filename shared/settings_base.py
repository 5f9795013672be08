"""How a setting is declared and read: the parsers, `Secret` and `Var`.

`shared.config.Settings` declares every variable with these; they live here so that module stays a
list of settings (and `setting(...)`, which declares one).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
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


def _float(minimum: float, *, above: bool = False) -> Callable[[str], float]:
    """A finite number >= `minimum` (> `minimum` with `above`); NaN and inf are refused."""

    def parse(raw: str) -> float:
        value = float(raw.strip())
        ok = math.isfinite(value) and (value > minimum if above else value >= minimum)
        if not ok:
            raise ValueError(f"must be a finite number {'>' if above else '>='} {minimum}")
        return value

    return parse


def _unit(raw: str) -> float:
    """A fraction between 0 and 1."""
    value = float(raw.strip())
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError("must be between 0 and 1")
    return value


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


def _optional_url(raw: str) -> str | None:
    value = raw.strip()
    scheme, sep, rest = value.partition("://")
    if value and not (sep and scheme.lower() in {"http", "https"} and rest.split("/")[0]):
        raise ValueError("must be an http:// or https:// URL with a host")
    return value or None


def _secret(raw: str) -> Secret | None:
    return Secret(raw.strip()) if raw.strip() else None


def _path(raw: str) -> Path:
    return Path(raw.strip())


# One URL path segment, as KServe names an InferenceService (a DNS label fits); no `{{`, so a
# runtime's `{{.Name}}` that KServe did not fill in fails at start instead of serving under it.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def _model_name(raw: str) -> str | None:
    value = raw.strip()
    if value and not _MODEL_NAME.fullmatch(value):
        raise ValueError("must be letters, digits, '.', '_' or '-' (at most 253), starting alnum")
    return value or None


@dataclass(frozen=True)
class Var:
    """How one setting is read: its environment variable, default text, parser and meaning."""

    env: str
    default: str
    parse: Callable[[str], Any]
    doc: str
    secret: bool = False
