"""Model directories as OCI artifacts: push one to a registry, fetch it at start-up by digest.

MODEL_URI names the model to serve instead of MODEL_DIR (the baked one, the default and the
fastest cold start):

- `oci://HOST[:PORT]/REPO@sha256:HEX`: an artifact whose layers are the directory's files, one
  each, titled with the file's name (as `push` and `oras push` make them). Only a digest pins the
  bytes, so a tag alone is refused when the settings are read.
- `file:///ABSOLUTE/DIR`: a model directory on a mounted volume, verified like a baked one.

`fetch` checks three things before it hands a directory over: the manifest's bytes hash to the
pinned digest, each layer's bytes hash to the digest the manifest records for it, and the model
manifest's own sha256 checksums hold (`shared.modeldir.verify`); a cache hit is checked
against the same digests (the entry keeps the artifact's manifest). It downloads into a temporary
directory beside the cache entry (MODEL_CACHE_DIR/sha256-HEX) and renames it into place, so
processes starting at once never see half a model and a refused download leaves nothing behind; a
verified entry is reused without the network.

    python -m shared.modelstore push DIR oci://HOST:PORT/REPO:TAG  # prints oci://...@sha256:...
    python -m shared.modelstore pull URI --cache DIR               # prints the directory
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import modeldir, registry

LAYER_TYPE = "application/vnd.kubesentiment.model.file.v1"
CONFIG_TYPE = "application/vnd.kubesentiment.model.manifest.v1+json"  # the model's manifest.json
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?")
# OCI distribution spec: path components of lower-case alphanumerics joined by separators.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
OCI_MANIFEST_FILE = ".oci-manifest.json"  # kept in a cache entry: what its files are checked by


class ModelStoreError(RuntimeError):
    """A model URI cannot be served: a digest or checksum mismatch, an artifact that is not a
    model directory, or one the registry does not have. Retrying does not help."""


@dataclass(frozen=True)
class ModelUri:
    """A parsed MODEL_URI: `oci` with host, repository and digest, or `file` with a path."""

    scheme: str
    host: str = ""
    repository: str = ""
    digest: str = ""
    path: Path | None = None

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"oci://{self.host}/{self.repository}@{self.digest}"


def _reference(rest: str) -> tuple[str, str]:
    """`HOST[:PORT]/REPO...` -> (host, the rest), both checked."""
    host, _, name = rest.partition("/")
    if not HOST.fullmatch(host) or not name:
        raise ValueError("expected oci://HOST[:PORT]/REPOSITORY...")
    return host, name


def parse(uri: str) -> ModelUri:
    """Parse a MODEL_URI; a ValueError says what is wrong (a tag alone, a relative path)."""
    scheme, sep, rest = uri.strip().partition("://")
    if sep and scheme == "file":
        if not rest.startswith("/"):
            raise ValueError("a file:// URI needs an absolute path, file:///DIR")
        return ModelUri("file", path=Path(urllib.parse.unquote(rest)))
    if not sep or scheme != "oci":
        raise ValueError("expected oci://HOST[:PORT]/REPO@sha256:DIGEST or file:///DIR")
    host, name = _reference(rest)
    name, at, digest = name.partition("@")
    repository, colon, tag = name.partition(":")
    if not at:
        raise ValueError(
            "a tag does not pin the model's bytes: name it by digest, "
            "oci://HOST[:PORT]/REPO@sha256:DIGEST (`python -m shared.modelstore push` prints it)"
        )
    if not DIGEST.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a sha256 digest (sha256: and 64 hex digits)")
    if not REPOSITORY.fullmatch(repository) or (colon and not TAG.fullmatch(tag)):
        raise ValueError(f"{name!r} is not a valid repository[:tag]")
    return ModelUri("oci", host=host, repository=repository, digest=digest)


def parse_setting(raw: str) -> ModelUri | None:
    """MODEL_URI's parser: empty = serve MODEL_DIR."""
    return parse(raw) if raw.strip() else None


def local_dir(uri: ModelUri | None, model_dir: Path) -> Path | None:
    """The directory to load without fetching: MODEL_URI's file:// path, else MODEL_DIR when
    MODEL_URI is empty (MODEL_URI wins when set); None for oci://, which `fetch` must pull."""
    if uri is None:
        return model_dir
    return uri.path if uri.scheme == "file" else None


def _plain_http(host: str, plain_http: bool) -> bool:
    return plain_http or registry.is_loopback(host)


def push(directory: Path, reference: str, *, plain_http: bool = False, check: bool = True) -> str:
    """Push a model directory as `oci://HOST[:PORT]/REPO:TAG` (tag `latest` when none) and return
    the `oci://...@sha256:` URI that pins it. `check` verifies its checksums first."""
    scheme, sep, rest = reference.strip().partition("://")
    try:
        host, name = _reference(rest if sep and scheme == "oci" else "")
    except ValueError:
        msg = f"push target {reference!r}: expected oci://HOST[:PORT]/REPO:TAG"
        raise ModelStoreError(msg) from None
    repository, _, tag = name.partition(":")
    tag = tag or "latest"
    if not REPOSITORY.fullmatch(repository) or not TAG.fullmatch(tag):
        raise ModelStoreError(f"push target {reference!r}: {name!r} is not a repository:tag")
    try:
        modeldir.load(directory, check=check)
    except modeldir.ModelDirError as e:
        raise ModelStoreError(f"refusing to push {directory}: {e}") from e
    files = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    if any(not p.is_file() for p in files):
        raise ModelStoreError(f"refusing to push {directory}: a model directory holds only files")
    client = registry.client(host, plain_http=_plain_http(host, plain_http))
    target = registry.container(client, host, repository, tag)
    digest = registry.push(
        client,
        target,
        files,
        layer_type=LAYER_TYPE,
        config=directory / modeldir.MANIFEST,
        config_type=CONFIG_TYPE,
    )
    return str(ModelUri("oci", host=host, repository=repository, digest=digest))


def fetch(uri: ModelUri | str, cache_dir: Path, *, plain_http: bool = False) -> Path:
    """The verified model directory for `uri`: a file:// path as it is, an oci:// artifact from
    the cache or pulled into it. Raises ModelStoreError when refused and
    `registry.RegistryUnavailable` when the registry cannot be reached (worth retrying)."""
    uri = parse(uri) if isinstance(uri, str) else uri
    if uri.path is not None:
        _refuse_unless(uri, lambda: modeldir.load(uri.path or Path()))
        return uri.path
    entry = cache_dir / uri.digest.replace(":", "-")
    if entry.is_dir():
        try:
            _verify_entry(uri, entry)
            return entry  # no network
        except ModelStoreError:
            shutil.rmtree(entry, ignore_errors=True)  # damaged in the cache: pull it again
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".partial", dir=cache_dir))
    try:
        known = _pull(uri, partial, plain_http=_plain_http(uri.host, plain_http))
        _verify_model(uri, partial, known)
        partial.chmod(0o755)  # mkdtemp's 0700 would hide it from other users of the cache
        try:
            os.rename(partial, entry)  # atomic; fails if another process finished first
        except OSError:
            _verify_entry(uri, entry)  # theirs, if it holds exactly the pinned artifact
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone after the rename, else half-written
    return entry


def _refuse_unless(uri: ModelUri, check: Callable[[], object]) -> None:
    """Run a model directory check; its ModelDirError becomes a refusal naming `uri`."""
    try:
        check()
    except modeldir.ModelDirError as e:
        raise ModelStoreError(f"{uri} refused: {e}") from e


def _verify_entry(uri: ModelUri, entry: Path) -> None:
    """A cache entry holds exactly the pinned artifact: its stored OCI manifest hashes to the
    digest, each file to its layer's digest, and the model manifest's checksums hold."""
    try:
        raw = (entry / OCI_MANIFEST_FILE).read_bytes()
    except OSError as e:
        raise ModelStoreError(f"{uri}: cache entry {entry} has no {OCI_MANIFEST_FILE}") from e
    if "sha256:" + hashlib.sha256(raw).hexdigest() != uri.digest:
        raise ModelStoreError(f"{uri}: cache entry {entry} holds another artifact")
    layers = {_title(uri, layer): str(layer.get("digest")) for layer in _layers(uri, raw)}
    if {p.name for p in entry.iterdir()} != {*layers, OCI_MANIFEST_FILE}:
        raise ModelStoreError(f"{uri}: cache entry {entry} holds other files than its layers")
    known = {name: modeldir.sha256_file(entry / name) for name in layers}
    for name, digest in layers.items():
        if "sha256:" + known[name] != digest:
            raise ModelStoreError(f"{uri}: cache entry {entry}: {name} is corrupted")
    _verify_model(uri, entry, known)


def _verify_model(uri: ModelUri, directory: Path, known: dict[str, str]) -> None:
    """The model manifest's own checksums, against the sha256s just computed (no second read)."""
    _refuse_unless(
        uri, lambda: modeldir.verify(directory, modeldir.read_manifest(directory), known=known)
    )


def _layers(uri: ModelUri, raw: bytes) -> list[dict[str, Any]]:
    """The layers of an artifact manifest (its raw bytes)."""
    try:
        manifest = json.loads(raw)
        media_type = manifest.get("mediaType", registry.OCI_MANIFEST)
        layers = manifest.get("layers") or []
    except (ValueError, AttributeError) as e:
        raise ModelStoreError(f"{uri} refused: its manifest is not a JSON object") from e
    if media_type not in {registry.OCI_MANIFEST, registry.DOCKER_MANIFEST}:
        raise ModelStoreError(f"{uri} refused: {media_type} is not an artifact manifest")
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        raise ModelStoreError(f"{uri} refused: its manifest's layers are not a list of objects")
    return layers


def _title(uri: ModelUri, layer: dict[str, Any]) -> str:
    """A layer's file name, refused unless it is a plain name inside the directory."""
    name = str((layer.get("annotations") or {}).get(registry.TITLE, ""))
    if not name or name != Path(name).name or name.startswith(".") or name in {"..", "."}:
        raise ModelStoreError(f"{uri} refused: a layer is titled {name!r}, not a file name")
    return name


def _pull(uri: ModelUri, out: Path, *, plain_http: bool) -> dict[str, str]:
    """Download the artifact's layers into `out`, checking every digest on the way, and keep its
    manifest there (a cache hit is checked against it); returns each file's sha256."""
    client = registry.client(uri.host, plain_http=plain_http)
    target = registry.container(client, uri.host, uri.repository, uri.digest)
    try:
        raw = registry.manifest(client, target)
    except registry.RegistryError as e:
        raise ModelStoreError(f"{uri} refused: {e}") from e
    actual = "sha256:" + hashlib.sha256(raw).hexdigest()
    if actual != uri.digest:
        raise ModelStoreError(
            f"{uri} refused: the registry's manifest has digest {actual}, not the pinned one"
        )
    known: dict[str, str] = {}
    for layer in _layers(uri, raw):
        name = _title(uri, layer)
        digest = hashlib.sha256()
        try:
            with (out / name).open("xb") as f:  # "x": a second layer of the same name fails
                for chunk in registry.blob(client, target, str(layer.get("digest"))):
                    digest.update(chunk)
                    f.write(chunk)
        except FileExistsError as e:
            raise ModelStoreError(f"{uri} refused: two layers are titled {name!r}") from e
        except registry.RegistryError as e:
            raise ModelStoreError(f"{uri} refused: {e}") from e
        if "sha256:" + digest.hexdigest() != layer.get("digest"):
            raise ModelStoreError(
                f"{uri} refused: layer {name} does not match its digest {layer.get('digest')}"
            )
        known[name] = digest.hexdigest()
    (out / OCI_MANIFEST_FILE).write_bytes(raw)
    return known


def main(argv: list[str] | None = None) -> int:
    """`push DIR oci://HOST:PORT/REPO:TAG` prints the pinned URI; `pull URI --cache DIR` prints
    the verified directory."""
    parser = argparse.ArgumentParser(
        prog="python -m shared.modelstore", description=(__doc__ or "").splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("push", help="push a model directory; prints oci://...@sha256:...")
    p.add_argument("directory", type=Path)
    p.add_argument("reference", help="oci://HOST[:PORT]/REPO[:TAG]")
    p.add_argument("--plain-http", action="store_true", help="HTTP, not HTTPS (loopback is)")
    q = sub.add_parser("pull", help="fetch and verify a model; prints its directory")
    q.add_argument("uri", help="oci://HOST[:PORT]/REPO@sha256:DIGEST or file:///DIR")
    q.add_argument("--cache", type=Path, required=True, help="cache directory (MODEL_CACHE_DIR)")
    q.add_argument("--plain-http", action="store_true", help="HTTP, not HTTPS (loopback is)")
    args = parser.parse_args(argv)
    try:
        if args.command == "push":
            print(push(args.directory, args.reference, plain_http=args.plain_http))
        else:
            print(fetch(args.uri, args.cache, plain_http=args.plain_http))
    except (ValueError, ModelStoreError, registry.RegistryError, registry.RegistryUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
