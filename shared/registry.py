"""A small OCI distribution client for model artifacts, on oras-py: push files as layers, read a
manifest's exact bytes, stream a blob.

oras is imported by `client()` only, so a function serving its baked model never loads it (nor
its jsonschema). Two of oras's defaults are changed on each client, because start-up depends on
them: its request wrapper retries a failed request five times, sleeping 3 + 5 + 11 + 29 + 83 s
without telling anyone, and requests has no timeout. Here a request fails at once with
`RegistryUnavailable` (the function's start-up retries it with its own backoff and says so in
readiness), and every request has a connect and a read timeout.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

TIMEOUT_S = (5.0, 60.0)  # (connect, between two reads), per request
CHUNK = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
TITLE = "org.opencontainers.image.title"  # a layer's file name (what `oras push` writes)


class RegistryError(RuntimeError):
    """The registry answered, but not with what was asked (not found, refused, malformed)."""


class RegistryUnavailable(RuntimeError):
    """The registry did not answer (connection refused, timeout, 5xx); worth retrying."""


def is_loopback(host: str) -> bool:
    """True for a registry on this machine (`127.0.0.1:5000`, `localhost`), reached over HTTP."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in {"localhost", "::1", "[::1]"} or name.startswith("127.")


def client(host: str, *, plain_http: bool = False) -> Any:
    """An oras `Registry` for `host` (HTTPS unless `plain_http`) without hidden retries."""
    import oras.provider

    registry = oras.provider.Registry(hostname=host, insecure=plain_http)
    # The undecorated method: one attempt per call (see the module docstring).
    registry.do_request = functools.partial(oras.provider.Registry.do_request.__wrapped__, registry)
    registry.session.request = functools.partial(registry.session.request, timeout=TIMEOUT_S)
    return registry


def container(registry: Any, host: str, repository: str, reference: str) -> Any:
    """The oras container for `host/repository` at a tag or `sha256:` digest; the fields are set
    from our own parse, since oras's would read a repository whose first part holds a dot as a
    registry host."""
    import oras.container

    sep = "@" if reference.startswith("sha256:") else ":"
    c = oras.container.Container(f"{host}/{repository}{sep}{reference}")
    namespace, _, name = repository.rpartition("/")
    c.registry, c.namespace, c.repository = host, namespace or None, name
    c.tag, c.digest = (reference, None) if sep == ":" else ("latest", reference)
    registry.auth.load_configs(c)  # credentials of a Docker config file, if there is one
    return c


def _request(call: Any, what: str) -> Any:
    """Run one oras request; map the ways it fails to our two errors."""
    import requests

    try:
        response = call()
    except (requests.ConnectionError, requests.Timeout) as e:
        raise RegistryUnavailable(f"{what}: registry unreachable ({type(e).__name__})") from e
    except ValueError as e:  # oras: an authentication challenge it cannot answer
        raise RegistryError(f"{what}: {e}") from e
    if response.status_code >= 500 or response.status_code == 429:
        raise RegistryUnavailable(f"{what}: registry answered {response.status_code}")
    if response.status_code >= 400:
        raise RegistryError(f"{what}: registry answered {_reason(response)}")
    return response


def _reason(response: Any) -> str:
    """`404 MANIFEST_UNKNOWN manifest unknown`: the status and the spec's first error."""
    try:
        error = response.json()["errors"][0]
        return f"{response.status_code} {error['code']} {error['message']}"[:200]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"{response.status_code} {response.reason}"


def push(
    registry: Any,
    target: Any,
    files: Sequence[Path],
    *,
    layer_type: str,
    config: Path,
    config_type: str,
) -> str:
    """Upload `files` as one layer each (titled with the file's name) and `config` as the config
    blob, then the manifest under `target`'s tag; returns the manifest's digest."""
    response = _request(
        lambda: registry.push(
            target,
            files=[f"{path}:{layer_type}" for path in files],
            manifest_config=f"{config}:{config_type}",
            disable_path_validation=True,
            quiet=True,
        ),
        f"push to {target}",
    )
    sent = "sha256:" + hashlib.sha256(response.request.body).hexdigest()
    answered = response.headers.get("Docker-Content-Digest", sent)
    if answered != sent:
        raise RegistryError(f"push to {target}: registry stored {answered}, we sent {sent}")
    return sent


def manifest(registry: Any, target: Any) -> bytes:
    """The manifest at `target` as the registry's exact bytes (what its digest covers)."""
    url = f"{registry.prefix}://{target.manifest_url()}"
    headers = {"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"}
    response = _request(lambda: registry.do_request(url, "GET", headers=headers), "manifest")
    return bytes(response.content)


def blob(registry: Any, target: Any, digest: str) -> Iterator[bytes]:
    """The bytes of one blob, streamed in chunks (the caller hashes and writes them)."""
    import requests

    response = _request(
        lambda: registry.get_blob(target, digest, stream=True), f"blob {digest[:19]}"
    )
    with response:
        try:
            yield from response.iter_content(CHUNK)
        except requests.RequestException as e:  # the connection broke mid-blob
            raise RegistryUnavailable(f"blob {digest[:19]}: {type(e).__name__}") from e
