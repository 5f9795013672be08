"""Models as OCI artifacts (MODEL_URI): parsing and precedence, a fake registry that lies, and the
real thing end to end: Debian's `docker-registry` on loopback, pushed with our CLI (oras), served
by a uvicorn subprocess that pulls at start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtests.registry import LocalRegistry, RegistryMissing
from shared import modeldir, modelstore
from shared.config import ConfigError, Settings
from shared.registry import RegistryUnavailable
from tests.conftest import DEFAULT_MODEL, ROOT, LiveServer, free_port
from tests.test_faults import poll, retrying

DIGEST = "sha256:" + "ab" * 32
URI = re.compile(r"oci://127\.0\.0\.1:\d+/kubesentiment/minilm@sha256:[0-9a-f]{64}")
TEXTS = [
    "I love it",
    "This was the worst purchase I have ever made.",
    "The package arrived on Tuesday.",
    "Not bad at all, honestly better than I expected!",
    "Je suis très déçu 😞",
    "meh",
    " ".join(["a long review that goes on and on"] * 60),
]


# -- parsing and precedence -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            f"oci://registry.example:5000/models/minilm@{DIGEST}",
            modelstore.ModelUri("oci", "registry.example:5000", "models/minilm", DIGEST),
            id="oci",
        ),
        pytest.param(
            f"oci://127.0.0.1:5000/m:v1@{DIGEST}",
            modelstore.ModelUri("oci", "127.0.0.1:5000", "m", DIGEST),
            id="tag-and-digest",
        ),
        pytest.param(
            "file:///models/adapted%201",
            modelstore.ModelUri("file", path=Path("/models/adapted 1")),
        ),
    ],
)
def test_uris_are_parsed(raw: str, expected: modelstore.ModelUri) -> None:
    assert modelstore.parse(raw) == expected
    assert Settings.from_env({"MODEL_URI": raw}).model_uri == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        pytest.param(
            "oci://127.0.0.1:5000/kubesentiment/minilm:v1", "a tag does not pin", id="tag"
        ),
        pytest.param("oci://127.0.0.1:5000/kubesentiment/minilm", "a tag does not pin", id="bare"),
        pytest.param("oci://h:5000/m@sha256:abc", "not a sha256 digest", id="short-digest"),
        pytest.param(f"oci://h:5000/Models@{DIGEST}", "not a valid repository", id="upper"),
        pytest.param(f"oci://h:5000@{DIGEST}", "expected oci://HOST", id="no-repository"),
        pytest.param("file://models/x", "absolute path", id="relative-file"),
        pytest.param(f"https://h/m@{DIGEST}", "expected oci://", id="scheme"),
    ],
)
def test_bad_uris_fail_at_config_naming_the_variable_and_value(raw: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"MODEL_URI": raw})
    assert str(info.value).startswith(f"MODEL_URI={raw!r} is invalid: ")
    assert why in str(info.value)


def test_model_uri_wins_over_model_dir_when_set() -> None:
    baked = Path("models/minilm-sentiment-int8")
    assert modelstore.local_dir(None, baked) == baked
    mounted = modelstore.parse("file:///mnt/models/adapted-1")
    assert modelstore.local_dir(mounted, baked) == Path("/mnt/models/adapted-1")
    assert modelstore.local_dir(modelstore.parse(f"oci://h:1/m@{DIGEST}"), baked) is None


def test_file_uri_is_verified_like_a_baked_directory(tmp_path: Path) -> None:
    copy = shutil.copytree(DEFAULT_MODEL, tmp_path / "model")
    uri = f"file://{copy}"
    assert modelstore.fetch(uri, tmp_path / "cache") == copy
    (copy / "tokenizer.json").write_text("{}")
    with pytest.raises(modelstore.ModelStoreError, match=r"refused: .*tokenizer.json is corrupted"):
        modelstore.fetch(uri, tmp_path / "cache")


def test_the_baked_path_never_imports_oras() -> None:
    code = (
        "import sys, time\n"
        "from dataclasses import replace\n"
        "from starlette.testclient import TestClient\n"
        "from functions.sentiment.app import create_app\n"
        "from shared.config import Settings\n"
        "with TestClient(create_app(replace(Settings(), intra_op_threads=1))) as c:\n"
        "    while c.get('/health/readiness').status_code != 200: time.sleep(0.02)\n"
        "    assert c.post('/predict', json={'text': 'fine'}).status_code == 200\n"
        "print(sorted(m for m in ('oras', 'jsonschema') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# -- a fake registry that lies (beside the real one below) ----------------------------------------


class Lying(BaseHTTPRequestHandler):
    """Answers every manifest with `manifest` and every blob with `blob` (class attributes)."""

    manifest = b"{}"
    blob = b""

    def do_GET(self) -> None:
        body = self.manifest if "/manifests/" in self.path else self.blob
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def lying() -> Iterator[tuple[type[Lying], str]]:
    handler = type("Handler", (Lying,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _manifest(blob: bytes, digest: str | None = None) -> bytes:
    layer = {
        "mediaType": modelstore.LAYER_TYPE,
        "digest": digest or "sha256:" + hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
        "annotations": {"org.opencontainers.image.title": "model.onnx"},
    }
    return json.dumps({"schemaVersion": 2, "layers": [layer]}).encode()


def test_a_manifest_that_does_not_hash_to_the_pinned_digest_is_refused(
    lying: tuple[type[Lying], str], tmp_path: Path
) -> None:
    handler, host = lying
    handler.manifest = _manifest(b"weights")
    with pytest.raises(modelstore.ModelStoreError, match="not the pinned one"):
        modelstore.fetch(f"oci://{host}/m@{DIGEST}", tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written stays


@pytest.mark.parametrize(
    ("title", "match"),
    [
        pytest.param("model.onnx", "layer model.onnx does not match its digest", id="blob"),
        pytest.param("../escape", "not a file name", id="path"),
    ],
)
def test_a_layer_that_does_not_match_is_refused(
    lying: tuple[type[Lying], str], tmp_path: Path, title: str, match: str
) -> None:
    handler, host = lying
    handler.blob = b"other weights"
    handler.manifest = _manifest(b"weights").replace(b'"model.onnx"', json.dumps(title).encode())
    pinned = "sha256:" + hashlib.sha256(handler.manifest).hexdigest()
    with pytest.raises(modelstore.ModelStoreError, match=match):
        modelstore.fetch(f"oci://{host}/m@{pinned}", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_an_unreachable_registry_is_worth_retrying(tmp_path: Path) -> None:
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        modelstore.fetch(f"oci://127.0.0.1:{free_port()}/m@{DIGEST}", tmp_path)


# -- the real registry ----------------------------------------------------------------------------


def _registry(root: Path, port: int | None = None) -> LocalRegistry:
    try:
        return LocalRegistry.create(root, port)
    except RegistryMissing as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(e))
        pytest.skip(str(e))


def push_cli(directory: Path, reference: str) -> str:
    """`python -m shared.modelstore push` as a user runs it; its output is the pinned URI."""
    done = subprocess.run(
        [sys.executable, "-m", "shared.modelstore", "push", str(directory), reference],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRegistry, str]]:
    """A registry holding the committed default model, and the URI `push` printed for it."""
    registry = _registry(tmp_path_factory.mktemp("registry")).start()
    try:
        uri = push_cli(DEFAULT_MODEL, f"oci://{registry.host}/kubesentiment/minilm:v1")
        yield registry, uri
    finally:
        registry.stop()


@pytest.mark.integration
def test_push_prints_a_pinned_uri_and_pull_verifies_it(
    pushed: tuple[LocalRegistry, str], tmp_path: Path
) -> None:
    registry, uri = pushed
    assert URI.fullmatch(uri), uri
    # The same directory pushed again is the same artifact.
    assert push_cli(DEFAULT_MODEL, f"oci://{registry.host}/kubesentiment/minilm:again") == uri
    done = subprocess.run(
        [sys.executable, "-m", "shared.modelstore", "pull", uri, "--cache", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    entry = Path(done.stdout.strip())
    assert entry.parent == tmp_path
    assert entry.name == uri.rsplit("@", 1)[1].replace(":", "-")
    for name in modeldir.read_manifest(DEFAULT_MODEL).files:
        assert (entry / name).read_bytes() == (DEFAULT_MODEL / name).read_bytes()


@pytest.mark.integration
def test_concurrent_fetches_share_one_cache_entry(
    pushed: tuple[LocalRegistry, str], tmp_path: Path
) -> None:
    _, uri = pushed
    results: list[Path | BaseException] = []

    def one() -> None:
        try:
            results.append(modelstore.fetch(uri, tmp_path))
        except BaseException as e:  # reported below
            results.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(set(results)) == 1, results
    assert isinstance(results[0], Path), results
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]  # no partial left


@pytest.mark.integration
def test_a_wrong_digest_is_refused_and_nothing_is_cached(
    pushed: tuple[LocalRegistry, str], tmp_path: Path
) -> None:
    _, uri = pushed
    wrong = uri[:-8] + ("0" * 8 if not uri.endswith("0" * 8) else "1" * 8)
    with pytest.raises(modelstore.ModelStoreError, match=r"refused: .*404 MANIFEST_UNKNOWN"):
        modelstore.fetch(wrong, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_a_tampered_model_directory_is_refused_by_its_own_checksums(
    pushed: tuple[LocalRegistry, str], tmp_path: Path
) -> None:
    registry, _ = pushed
    tampered = shutil.copytree(DEFAULT_MODEL, tmp_path / "tampered")
    data = bytearray((tampered / "tokenizer.json").read_bytes())
    data[-2:-1] = b" "  # one byte changed; the OCI digests will be right, the model's sha256 not
    (tampered / "tokenizer.json").write_bytes(bytes(data))
    with pytest.raises(modelstore.ModelStoreError, match="refusing to push"):
        modelstore.push(tampered, f"oci://{registry.host}/kubesentiment/tampered:v1")
    uri = modelstore.push(tampered, f"oci://{registry.host}/kubesentiment/tampered:v1", check=False)
    cache = tmp_path / "cache"
    with pytest.raises(modelstore.ModelStoreError, match=r"refused: .*tokenizer.json is corrupted"):
        modelstore.fetch(uri, cache)
    assert list(cache.iterdir()) == []  # the half-written entry was removed


def _function(live_server: Callable[..., LiveServer], env: dict[str, str]) -> LiveServer:
    return live_server(
        {"ORT_INTRA_OP_THREADS": "1", "SHUTDOWN_TIMEOUT_SECONDS": "2", **env}, ready=False
    )


def _answers(url: str) -> tuple[list[bytes], bytes, dict[str, Any]]:
    with httpx.Client(base_url=url, timeout=30) as c:
        single = [c.post("/predict", json={"text": t}).content for t in TEXTS]
        batch = c.post("/predict", json={"texts": TEXTS}).content
        v2 = c.post(
            "/v2/models/minilm-sentiment/infer",
            json={"inputs": [{"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES",
                              "data": TEXTS}]},
        )  # fmt: skip
        assert v2.status_code == 200, v2.text
    return [*single, batch], v2.content, httpx.get(f"{url}/model").json()


@pytest.mark.integration
def test_the_model_from_the_registry_answers_bit_identically_to_the_baked_one(
    pushed: tuple[LocalRegistry, str], live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    _, uri = pushed
    baked = _function(live_server, {"MODEL_DIR": str(DEFAULT_MODEL)})
    pulled = _function(live_server, {"MODEL_URI": uri, "MODEL_CACHE_DIR": str(tmp_path / "c")})
    baked.wait_ready()
    pulled.wait_ready()
    assert "model fetched" in pulled.logs()
    predict_b, v2_b, model_b = _answers(baked.url)
    predict_p, v2_p, model_p = _answers(pulled.url)
    assert predict_p == predict_b  # the same JSON bytes, probabilities included
    assert v2_p == v2_b  # full-precision FP32 probabilities too
    assert model_p == model_b
    assert b'"probabilities"' in predict_b[-1]


@pytest.mark.integration
def test_a_refused_model_keeps_the_function_not_ready_with_a_clear_log(
    pushed: tuple[LocalRegistry, str], live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    _, uri = pushed
    wrong = uri[:-8] + ("0" * 8 if not uri.endswith("0" * 8) else "1" * 8)
    cache = tmp_path / "cache"
    server = _function(live_server, {"MODEL_URI": wrong, "MODEL_CACHE_DIR": str(cache)})
    with httpx.Client(base_url=server.url, timeout=5) as c:
        message = poll(
            lambda: "start-up failed" in (m := c.get("/health/readiness").text) and m,
            60,
            "readiness reporting the failed step",
        )
        assert c.post("/predict", json={"text": "x"}).status_code == 503
    assert json.loads(message)["error"]["message"] == (
        "not ready: start-up failed while fetching the model from the registry; "
        "see the function's logs"
    )
    assert f"{wrong} refused: manifest: registry answered 404 MANIFEST_UNKNOWN" in server.logs()
    assert list(cache.iterdir()) == []


@pytest.mark.integration
def test_registry_down_at_start_then_up_becomes_ready_without_restart(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    registry = _registry(tmp_path / "registry").start()
    uri = push_cli(DEFAULT_MODEL, f"oci://{registry.host}/kubesentiment/minilm:v1")
    registry.stop()  # down before the function starts; same port and storage later
    cache = tmp_path / "cache"
    server = _function(
        live_server,
        {"MODEL_URI": uri, "MODEL_CACHE_DIR": str(cache), "STARTUP_TIMEOUT_SECONDS": "60"},
    )
    pid = server.proc.pid
    try:
        with httpx.Client(base_url=server.url, timeout=5) as c:
            message = poll(lambda: retrying(c, 3), 30, "readiness naming a retried step")
            assert re.fullmatch(
                r"not ready: fetching the model from the registry \(attempt \d+, retrying\)",
                message,
            ), message
            assert c.get("/health/liveness").status_code == 200  # alive: Kubernetes waits
            assert c.post("/predict", json={"text": "x"}).status_code == 503
            registry.start()
            server.wait_ready(30)
            assert server.proc.pid == pid
            assert server.proc.poll() is None
            assert c.post("/predict", json={"text": "fine"}).status_code == 200
    finally:
        registry.stop()
    assert "registry unreachable" in server.logs()  # the cause is in the log, not in readiness
    assert [p.name for p in cache.iterdir()] == [uri.rsplit("@", 1)[1].replace(":", "-")]

    # The registry is stopped now: a new function with the same cache starts from the entry.
    again = _function(live_server, {"MODEL_URI": uri, "MODEL_CACHE_DIR": str(cache)})
    again.wait_ready(60)
    assert httpx.post(f"{again.url}/predict", json={"text": "fine"}).status_code == 200
    assert "registry unreachable" not in again.logs()


@pytest.mark.integration
def test_a_tag_without_digest_stops_the_function_at_config(tmp_path: Path) -> None:
    value = f"oci://127.0.0.1:{free_port()}/kubesentiment/minilm:v1"
    done = subprocess.run(
        [sys.executable, "-m", "functions.sentiment"],
        cwd=ROOT,
        env={**os.environ, "MODEL_URI": value, "PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"configuration error: MODEL_URI={value!r} is invalid: a tag does not pin" in (
        done.stderr
    )


def test_make_coldstart_keeps_the_model_uri_and_container_figures(tmp_path: Path) -> None:
    from benchmarks.coldstart import _write

    out = tmp_path / "coldstart.json"
    old = {"median_cold_start_s": 1.0, "model_uri": {"runs": 5}, "container": {"median_s": 1}}
    out.write_text(json.dumps(old))
    _write(out, {"median_cold_start_s": 0.5})
    assert json.loads(out.read_text()) == {**old, "median_cold_start_s": 0.5}


@pytest.mark.integration
def test_an_app_built_without_the_entry_point_fetches_in_its_start_step(
    pushed: tuple[LocalRegistry, str],
    settings: Settings,
    make_client: Callable[..., Any],
    tmp_path: Path,
) -> None:
    _, uri = pushed
    s = replace(settings, model_uri=modelstore.parse(uri), model_cache_dir=tmp_path)
    client = make_client(s)  # the func middleware's way: no preload thread
    r = client.post("/predict", json={"text": "I love it"})
    assert r.status_code == 200
    assert r.json()["label"] == "positive"
    assert [p.name for p in tmp_path.iterdir()] == [uri.rsplit("@", 1)[1].replace(":", "-")]


def test_verify_takes_the_sha256s_a_download_computed(tmp_path: Path) -> None:
    manifest = modeldir.read_manifest(DEFAULT_MODEL)
    known = dict(manifest.files)
    modeldir.verify(DEFAULT_MODEL, manifest, known=known)
    known["tokenizer.json"] = "0" * 64  # what a download of other bytes would have computed
    with pytest.raises(modeldir.ModelDirError, match=r"tokenizer\.json is corrupted"):
        modeldir.verify(DEFAULT_MODEL, manifest, known=known)
