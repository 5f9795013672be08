"""Every place that lists the model variants lists the same ones, and built models are built.

The variants (tests/test_deploy_consistency.py VARIANTS: name -> MODEL_DIR of its Knative
Service) appear in the image workflow's matrix, the release script, the local load-test launcher
and the Makefile's image targets; the Grafana dashboard takes them from the metrics. The accurate
model's directories are too large for git: the Makefile builds them from the committed
checkpoint (`make accurate`, `make accurate-fp16`), .gitignore keeps them out, and the image
workflow builds them before the image that bakes them in. Nothing is run here: `make -n` prints
the recipes.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from typing import Any

import pytest
import yaml

from tests.test_deploy_consistency import GENERATED, ROOT, VARIANTS, container, function_services

ACCURATE_FP32 = "models/mpnet-sentiment-fp32"  # intermediate: fp16 is derived from it


@cache
def dry_run(target: str) -> str:
    """`make -nB TARGET`: every command it and its prerequisites would run, one per line."""
    done = subprocess.run(
        ["make", "--no-print-directory", "-nB", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.replace("\\\n", " ").split())


def images_by_variant() -> dict[str, str]:
    """variant -> image name (no tag) of its Knative Service."""
    out = {}
    for service in function_services():
        variant = service["metadata"]["labels"]["kubesentiment.dev/variant"]
        out[variant] = container(service)["image"].rsplit(":", 1)[0]
    return out


def images_workflow() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / "images.yml").read_text())
    return dict(doc["jobs"]["image"])


def test_make_accurate_builds_the_accurate_variant_from_its_checkpoint() -> None:
    target, checkpoint = GENERATED["cpu-accurate-int8"]
    assert target == "accurate"
    commands = dry_run("accurate")
    expected = (
        f"-m training.accurate export --checkpoint {checkpoint} "
        f"--out {ACCURATE_FP32} --int8 {VARIANTS['cpu-accurate-int8']}"
    )
    assert expected in commands
    assert (ROOT / "training" / "accurate.py").is_file()


def test_make_accurate_fp16_derives_the_gpu_model_from_the_accurate_fp32() -> None:
    target, _ = GENERATED["gpu-fp16"]
    commands = dry_run(target)
    expected = f"-m training.export fp16 --src {ACCURATE_FP32} --out {VARIANTS['gpu-fp16']}"
    assert expected in commands
    # The fp32 directory comes from `make accurate`, which therefore runs first.
    assert commands.index("training.accurate export") < commands.index(expected)


@pytest.mark.parametrize("variant", sorted(GENERATED))
def test_built_model_directories_are_ignored_not_committed(variant: str) -> None:
    for directory in (VARIANTS[variant], ACCURATE_FP32):
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", "--no-index", f"{directory}/model.onnx"],
            cwd=ROOT,
            check=False,
        )
        assert ignored.returncode == 0, f"{directory}/ is not in .gitignore"
        tracked = subprocess.run(
            ["git", "ls-files", "--", directory],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        assert tracked.stdout == "", f"{directory} is committed: it is built by make"


def test_image_accurate_builds_the_cpu_target_with_the_services_image_name() -> None:
    commands = dry_run("image-accurate")
    variant = "cpu-accurate-int8"
    assert "-m training.accurate export" in commands  # depends on `make accurate`
    assert f"VARIANT={variant} MODEL_DIR={VARIANTS[variant]}" in commands
    assert f"IMAGE={images_by_variant()[variant]}:local" in commands
    assert "bash scripts/build_image.sh" in commands  # the cpu target (--target cpu)
    assert "--target cpu" in (ROOT / "scripts" / "build_image.sh").read_text()


def test_image_gpu_builds_the_gpu_target_with_the_accurate_fp16_model() -> None:
    commands = dry_run("image-gpu")
    assert "-m training.export fp16" in commands  # depends on `make accurate-fp16`
    build = commands[commands.index("docker build") :]
    assert "--target gpu" in build
    assert "--build-arg VARIANT=gpu-fp16" in build
    assert f"--build-arg MODEL_DIR={VARIANTS['gpu-fp16']}" in build
    assert f"-t {images_by_variant()['gpu-fp16']}:local" in build


def test_image_workflow_builds_every_variant_with_its_model() -> None:
    job = images_workflow()
    matrix = {m["variant"]: m for m in job["strategy"]["matrix"]["include"]}
    assert set(matrix) == set(VARIANTS)
    for variant, entry in matrix.items():
        assert entry["model_dir"] == VARIANTS[variant], variant
        assert entry["target"] == ("gpu" if variant.startswith("gpu-") else "cpu"), variant
        # The pushed image is <registry>/sentiment-<variant>; release.sh rewrites the manifests'
        # kubesentiment/sentiment-<variant> to it.
        assert images_by_variant()[variant] == f"kubesentiment/sentiment-{variant}"
    assert job["env"]["IMAGE"].endswith("/sentiment-${{ matrix.variant }}")


@pytest.mark.parametrize("variant", sorted(GENERATED))
def test_image_workflow_builds_the_model_before_the_image(variant: str) -> None:
    target, _ = GENERATED[variant]
    steps = images_workflow()["steps"]
    names = [s.get("run", "").strip() for s in steps]
    make = names.index(f"make {target}")
    assert f"'{variant}'" in steps[make]["if"], steps[make]
    build = next(i for i, s in enumerate(steps) if "build-push-action" in s.get("uses", ""))
    assert make < build
    python = next(s for s in steps[:make] if "setup-python" in s.get("uses", ""))
    assert f"'{variant}'" in python["if"]


def test_release_script_releases_every_variant() -> None:
    text = (ROOT / ".github" / "scripts" / "release.sh").read_text()
    found = re.search(r"^SERVICES=\(([^)]*)\)", text, flags=re.M)
    assert found
    assert found.group(1).split() == [s["metadata"]["name"] for s in ordered_services()]


def ordered_services() -> list[dict[str, Any]]:
    """Function Services in the base kustomization's order."""
    kustomization = yaml.safe_load((ROOT / "knative" / "base" / "kustomization.yaml").read_text())
    order = [r for r in kustomization["resources"] if r.startswith("service-")]
    by_file = {}
    for service in function_services():
        variant = service["metadata"]["labels"]["kubesentiment.dev/variant"]
        by_file[f"service-{variant}.yaml"] = service
    assert set(order) == set(by_file)
    return [by_file[name] for name in order]


def test_local_load_test_variants_serve_the_services_model_dirs() -> None:
    from loadtests.local import VARIANTS as LOCAL

    assert "cpu-accurate-int8" in LOCAL
    for variant, path in LOCAL.items():
        assert path == ROOT / VARIANTS[variant], variant


def test_the_dashboard_lists_every_variant_that_reports_metrics() -> None:
    # The variant picker is a label_values query, so a new variant needs no dashboard edit; a
    # panel that names a variant must name one that exists.
    dashboard = json.loads((ROOT / "observability" / "grafana" / "kubesentiment.json").read_text())
    picker = next(v for v in dashboard["templating"]["list"] if v["name"] == "variant")
    assert picker["type"] == "query"
    assert picker["definition"].startswith("label_values(")
    assert picker["definition"].endswith(", variant)")
    named = set(re.findall(r"\b(?:cpu|gpu)-[a-z0-9-]+\b", json.dumps(dashboard)))
    assert named <= set(VARIANTS)
