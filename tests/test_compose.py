"""The local stack (compose.yaml): Compose accepts it and its parts agree with the project.

`docker-compose config` (Debian's docker-compose 1.29, installed by `make tools`) validates the
file; promtool checks the Prometheus configuration; the OpenBao init script runs against a real
OpenBao dev server, and the function then starts with the compose service's environment and
reads the API key that script wrote. No container engine or registry is needed for these.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
SERVICES = {
    "sentiment",
    "openbao",
    "openbao-init",
    "otel-collector",
    "prometheus",
    "alertmanager",
    "grafana",
}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make tools`")
    return found


def compose_config(*overrides: str) -> dict[str, Any]:
    files = [arg for f in (str(COMPOSE), *overrides) for arg in ("-f", f)]
    done = subprocess.run(
        [tool("docker-compose"), *files, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def test_compose_accepts_the_file_and_it_holds_the_whole_stack() -> None:
    services = compose_config()["services"]
    assert set(services) == SERVICES
    function = services["sentiment"]
    # The image `make image` builds (scripts/build_image.sh), never pulled from a registry.
    assert function["image"] == "kubesentiment/sentiment-cpu-int8:local"
    assert "IMAGE=${IMAGE:-kubesentiment/sentiment-${VARIANT}:local}" in (
        ROOT / "scripts" / "build_image.sh"
    ).read_text(encoding="utf-8")
    assert function["pull_policy"] == "never"
    assert function["read_only"] is True
    assert function["user"] == "65532:65532"
    assert function["depends_on"]["openbao-init"]["condition"] == "service_completed_successfully"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            assert Path(source).exists(), f"bind mount {source} does not exist"


def test_the_function_environment_is_valid_settings() -> None:
    env = {k: str(v) for k, v in compose_config()["services"]["sentiment"]["environment"].items()}
    settings = Settings.from_env(environ=env)
    assert (ROOT / settings.model_dir / "model.onnx").is_file()
    assert env["API_KEYS"] == "vault:kv/kubesentiment/api#keys"
    script = (ROOT / "compose" / "openbao-init.sh").read_text(encoding="utf-8")
    assert "bao kv put kv/kubesentiment/api keys=" in script
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    collector = yaml.safe_load((ROOT / "compose" / "otel-collector.yaml").read_text("utf-8"))
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")


def test_the_registry_free_override_leaves_the_function_self_contained() -> None:
    # scripts/build_image.sh starts `sentiment` alone with this override (`up --no-deps`).
    override = str(ROOT / "compose" / "function-only.yaml")
    env = compose_config(override)["services"]["sentiment"]["environment"]
    settings = Settings.from_env(environ={k: str(v) for k, v in env.items()})
    assert settings.api_keys is None
    assert not settings.vault_addr
    assert not settings.otel_endpoint
    script = (ROOT / "scripts" / "build_image.sh").read_text(encoding="utf-8")
    assert "-f compose.yaml -f compose/function-only.yaml" in script
    assert "up -d --no-deps sentiment" in script


def test_prometheus_config_passes_promtool_with_the_project_rules(tmp_path: Path) -> None:
    text = (ROOT / "compose" / "prometheus.yml").read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["sentiment:8080"]
    # Inside the container the rules are mounted at /etc/prometheus/rules; here, the repository.
    local = text.replace("/etc/prometheus/rules/", f"{ROOT}/observability/prometheus/")
    (tmp_path / "prometheus.yml").write_text(local, encoding="utf-8")
    done = subprocess.run(
        [tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 2 rule files found" in done.stdout
    counts = [int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", done.stdout)]
    assert len(counts) == 2, done.stdout
    assert min(counts) > 0, done.stdout


@pytest.mark.integration
def test_the_function_reads_the_key_the_openbao_init_script_writes(
    openbao: Any, live_server: Callable[..., Any]
) -> None:
    from tests.openbao import bao_binary

    env = {
        **os.environ,
        "BAO_ADDR": openbao.url,
        "BAO_TOKEN": "root",
        "PATH": f"{Path(bao_binary()).parent}:{os.environ.get('PATH', '')}",
        "HOME": str(openbao.home),
    }
    done = subprocess.run(
        ["sh", str(ROOT / "compose" / "openbao-init.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    key = openbao.admin.secrets.kv.v2.read_secret_version(
        path="kubesentiment/api", mount_point="kv", raise_on_deleted_version=True
    )["data"]["data"]["keys"]
    assert len(key) == 48

    compose_env = compose_config()["services"]["sentiment"]["environment"]
    server_env = {k: str(v) for k, v in compose_env.items() if not k.startswith("OTEL_")}
    server_env |= {"VAULT_ADDR": openbao.url, "ORT_INTRA_OP_THREADS": "1", "LOG_FORMAT": "text"}
    server = live_server(server_env)
    body = {"text": "I love it"}
    assert httpx.post(f"{server.url}/predict", json=body).status_code == 401
    ok = httpx.post(f"{server.url}/predict", json=body, headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["label"] == "positive"
