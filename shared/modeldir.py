"""The one model directory format: an ONNX graph, a `tokenizer.json` and a `manifest.json`.

Every file in the directory except the manifest is listed in the manifest with its sha256, so a
loader can refuse a missing or corrupted model with a clear message before it builds a session.
Only the standard library is used here: training writes this format, serving reads it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ModelDirError(Exception):
    """The model directory is missing, incomplete or corrupted."""


@dataclass(frozen=True)
class Manifest:
    """What a model directory holds and how it was made."""

    name: str
    version: str
    labels: tuple[str, ...]
    max_tokens: int
    precision: str
    onnx_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    files: Mapping[str, str] = field(default_factory=dict)
    base_model: str = ""
    training_data: Sequence[str] = ()
    evaluation: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The manifest as the JSON object written to `manifest.json`."""
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "labels": list(self.labels),
            "max_tokens": self.max_tokens,
            "precision": self.precision,
            "onnx_file": self.onnx_file,
            "tokenizer_file": self.tokenizer_file,
            "files": dict(sorted(self.files.items())),
            "base_model": self.base_model,
            "training_data": list(self.training_data),
            "evaluation": dict(self.evaluation),
            **dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse a manifest object, failing with the name of the first bad field."""
        known = {
            "format_version",
            "name",
            "version",
            "labels",
            "max_tokens",
            "precision",
            "onnx_file",
            "tokenizer_file",
            "files",
            "base_model",
            "training_data",
            "evaluation",
        }
        try:
            labels = tuple(str(label) for label in data["labels"])
            manifest = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                labels=labels,
                max_tokens=int(data["max_tokens"]),
                precision=str(data["precision"]),
                onnx_file=str(data.get("onnx_file", "model.onnx")),
                tokenizer_file=str(data.get("tokenizer_file", "tokenizer.json")),
                files={str(k): str(v) for k, v in dict(data.get("files", {})).items()},
                base_model=str(data.get("base_model", "")),
                training_data=tuple(str(d) for d in data.get("training_data", ())),
                evaluation=dict(data.get("evaluation", {})),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelDirError(f"invalid manifest: {e!r}") from e
        if len(labels) < 2:
            raise ModelDirError("invalid manifest: 'labels' needs at least two labels")
        if manifest.max_tokens < 8:
            raise ModelDirError(f"invalid manifest: 'max_tokens' is {manifest.max_tokens}")
        return manifest


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: Path) -> Manifest:
    """Read the manifest of a model directory without checking the files."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ModelDirError(f"model directory {directory} does not exist")
    if not path.is_file():
        raise ModelDirError(f"model directory {directory} has no {MANIFEST}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelDirError(f"{path} must hold a JSON object")
    return Manifest.from_json(data)


def verify(directory: Path, manifest: Manifest, *, known: Mapping[str, str] | None = None) -> None:
    """Check that every file the manifest lists exists and has the recorded sha256; `known` holds
    hex sha256s the caller has just computed from the files' bytes (a download checked on the
    way), by file name, so those files are not read again."""
    for required in (manifest.onnx_file, manifest.tokenizer_file):
        if required not in manifest.files:
            raise ModelDirError(f"manifest of {directory} lists no checksum for {required}")
    for name, expected in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise ModelDirError(f"model file {path} is missing")
        actual = (known or {}).get(name) or sha256_file(path)
        if actual != expected:
            raise ModelDirError(
                f"model file {path} is corrupted: sha256 {actual[:12]}... "
                f"does not match the manifest's {expected[:12]}..."
            )


def load(directory: Path, *, check: bool = True) -> Manifest:
    """Read a model directory's manifest and, unless `check` is false, verify its files."""
    manifest = read_manifest(directory)
    if check:
        verify(directory, manifest)
    return manifest


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Write `manifest.json`, recording the sha256 of every other file in the directory."""
    files = {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    final = replace(manifest, files=files)
    (directory / MANIFEST).write_text(
        json.dumps(final.to_json(), indent=2, sort_keys=False) + "\n", encoding="utf-8"
    )
    return final
