"""KServe Open Inference Protocol v2, driven by the real Triton HTTP client on a live server."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

TEXTS = ["What a wonderful, moving film.", "Dreadful acting and a boring plot.", "It is a film."]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("kserve") / "server.log"
    s = LiveServer({"ORT_INTRA_OP_THREADS": "1", "LOG_FORMAT": "text"}, log)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def model(server: LiveServer) -> dict[str, object]:
    info: dict[str, object] = httpx.get(f"{server.url}/model").json()
    return info


@pytest.fixture
def client(server: LiveServer) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield c
    c.close()


def text_input(
    texts: list[str], *, binary: bool, shape: list[int] | None = None
) -> triton.InferInput:
    data = np.array([t.encode() for t in texts], dtype=np.object_)
    if shape is not None:
        data = data.reshape(shape)
    tensor = triton.InferInput("text", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data, binary_data=binary)
    return tensor


def test_health_and_metadata(
    client: triton.InferenceServerClient, model: dict[str, object]
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata()["name"] == "kubesentiment"
    name = str(model["name"])
    assert client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert meta["name"] == name
    assert meta["versions"] == [model["version"]]
    assert meta["inputs"][0]["datatype"] == "BYTES"
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["probabilities"]["shape"] == [-1, len(model["labels"])]  # type: ignore[arg-type]
    assert outputs["label"]["datatype"] == "BYTES"


@pytest.mark.parametrize(
    ("binary", "shape"),
    [
        pytest.param(False, None, id="json-N"),
        pytest.param(False, [3, 1], id="json-Nx1"),
        pytest.param(True, None, id="binary-N"),
    ],
)
def test_infer_returns_label_score_and_probabilities(
    client: triton.InferenceServerClient,
    model: dict[str, object],
    binary: bool,
    shape: list[int] | None,
) -> None:
    labels = list(model["labels"])  # type: ignore[call-overload]
    result = client.infer(str(model["name"]), [text_input(TEXTS, binary=binary, shape=shape)])
    label = result.as_numpy("label")
    probs = result.as_numpy("probabilities")
    assert label is not None
    assert probs is not None
    assert label.shape == (3,)
    assert probs.shape == (3, len(labels))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    decoded = [x.decode() if isinstance(x, bytes) else str(x) for x in label]
    assert decoded == [labels[i] for i in probs.argmax(axis=1)]
    score = result.as_numpy("score")
    if {"positive", "negative"} <= set(labels):
        assert score is not None
        pos, neg = labels.index("positive"), labels.index("negative")
        np.testing.assert_allclose(score, probs[:, pos] - probs[:, neg], atol=1e-4)


def test_infer_matches_the_predict_route(
    client: triton.InferenceServerClient, server: LiveServer, model: dict[str, object]
) -> None:
    labels = list(model["labels"])  # type: ignore[call-overload]
    result = client.infer(str(model["name"]), [text_input(TEXTS, binary=False)])
    probs = result.as_numpy("probabilities")
    assert probs is not None
    predicted = httpx.post(f"{server.url}/predict", json={"texts": TEXTS}).json()["results"]
    expected = np.array([[p["probabilities"][lab] for lab in labels] for p in predicted])
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def _expired(server: LiveServer, priority: str) -> float:
    pattern = rf'kubesentiment_deadline_exceeded_total{{priority="{priority}",[^}}]*}} (\S+)'
    match = re.search(pattern, httpx.get(f"{server.url}/metrics").text)
    return float(match.group(1)) if match else 0.0


def test_tritonclient_priority_and_timeout_are_honoured(
    client: triton.InferenceServerClient, server: LiveServer, model: dict[str, object]
) -> None:
    name = str(model["name"])
    # A generous timeout (microseconds) and the highest priority: answered.
    ok = client.infer(name, [text_input(TEXTS, binary=True)], priority=1, timeout=10_000_000)
    assert ok.as_numpy("label") is not None
    # A timeout already over when the texts reach the queue: 504, never computed, counted in the
    # lane Triton's priority 3 maps to (low).
    before = _expired(server, "low")
    with pytest.raises(InferenceServerException) as e:
        client.infer(name, [text_input(TEXTS, binary=False)], priority=3, timeout=1)
    assert e.value.status() == "504"
    assert "deadline" in (e.value.message() or "")
    assert _expired(server, "low") == before + len(TEXTS)


def test_requested_outputs_are_the_only_ones_returned(
    client: triton.InferenceServerClient, model: dict[str, object]
) -> None:
    result = client.infer(
        str(model["name"]),
        [text_input(TEXTS[:2], binary=False)],
        outputs=[triton.InferRequestedOutput("label", binary_data=False)],
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None


def test_the_variant_name_is_accepted_as_model_name(client: triton.InferenceServerClient) -> None:
    result = client.infer("cpu-int8", [text_input(TEXTS[:1], binary=False)])
    assert result.as_numpy("label") is not None


def test_unknown_model_is_a_404_in_the_protocols_error_shape(
    client: triton.InferenceServerClient, server: LiveServer
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("no-such-model", [text_input(TEXTS[:1], binary=False)])
    assert "unknown model" in str(info.value)
    response = httpx.get(f"{server.url}/v2/models/no-such-model")
    assert response.status_code == 404
    assert isinstance(response.json()["error"], str)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        pytest.param(
            {"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
            "BYTES",
            id="datatype",
        ),
        pytest.param(
            {"inputs": [{"name": "t", "shape": [2], "datatype": "BYTES", "data": ["a"]}]},
            "shape",
            id="shape-mismatch",
        ),
        pytest.param(
            {"inputs": [{"name": "t", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]},
            "shape",
            id="shape-rank",
        ),
        pytest.param(
            {"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": [""]}]},
            "empty",
            id="empty-text",
        ),
        pytest.param({"inputs": []}, "exactly one", id="no-inputs"),
        pytest.param(
            {
                "inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                "outputs": [{"name": "logits"}],
            },
            "unknown output",
            id="unknown-output",
        ),
    ],
)
def test_bad_infer_requests_are_400_with_an_error_string(
    server: LiveServer, model: dict[str, object], body: dict[str, object], needle: str
) -> None:
    response = httpx.post(f"{server.url}/v2/models/{model['name']}/infer", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert isinstance(error, str)
    assert needle in error


def test_long_text_parameter_chunks(server: LiveServer, model: dict[str, object]) -> None:
    long = "a remarkably long and winding review of the film " * 60
    body: dict[str, object] = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [long]}]
    }
    url = f"{server.url}/v2/models/{model['name']}/infer"
    truncated = httpx.post(url, json=body).json()["parameters"]["truncated"]
    chunked = httpx.post(url, json={**body, "parameters": {"long_text": "chunk"}}).json()
    assert truncated == 1
    assert chunked["parameters"]["truncated"] == 0
