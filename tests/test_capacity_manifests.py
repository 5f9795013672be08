"""The capacity plan (benchmarks/capacity.py, docs/capacity.json) and the Knative manifests agree.

`make capacity` measures each CPU variant and derives `containerConcurrency` and the KPA target
by Little's law; the manifests in knative/base must carry exactly the committed plan's values for
their own CPU limit. The derivation itself is checked on synthetic levels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.capacity import costs, gib, plan, services, system_for

ROOT = Path(__file__).resolve().parent.parent
PLAN = json.loads((ROOT / "docs" / "capacity.json").read_text())
# CPU variants the committed plan has measured: their manifests must carry its values exactly.
# Every CPU Service is measured (`make capacity` measures cpu-accurate-int8 once `make accurate`
# has built its model; not built, it is skipped with a message and this test fails).
MEASURED = ["cpu-int8", "cpu-fp32", "cpu-accurate-int8"]


def _level(c: int, rps: float, mean_ms: float, p99_ms: float, **errors: int) -> dict[str, Any]:
    return {"concurrency": c, "rps": rps, "mean_ms": mean_ms, "p99_ms": p99_ms, "errors": errors}


def test_every_measured_cpu_service_has_a_plan_at_its_cpu_limit() -> None:
    svc = services()
    assert set(svc) == set(MEASURED)
    assert set(PLAN["manifests"]) == set(MEASURED)
    for variant in MEASURED:
        planned = PLAN["manifests"][variant]
        assert planned["cores"] == int(svc[variant]["cpu"])
        assert PLAN["plans"][f"{variant}@{planned['cores']}"]["plan"] is not None


def test_the_planner_measures_an_unlisted_variant_once_its_model_is_built(tmp_path: Path) -> None:
    from benchmarks.peers.systems import all_systems

    ours = {x.model.name: x for x in all_systems() if x.ours and not x.key.endswith("-aa")}
    int8 = ROOT / "models" / "minilm-sentiment-int8"
    assert system_for("cpu-int8", int8, ours) is ours[int8.name]
    built = tmp_path / "mpnet-sentiment-int8"
    assert system_for("cpu-accurate-int8", built, ours) is None  # not built: skipped
    built.mkdir()
    (built / "manifest.json").write_text("{}")
    system = system_for("cpu-accurate-int8", built, ours)
    assert system is not None
    assert system.model == built
    assert system.env["MODEL_DIR"] == str(built)
    assert system.env["VARIANT"] == "cpu-accurate-int8"
    assert system.module == "functions.sentiment"


def test_memory_quantities_in_gi_and_mi() -> None:
    assert gib("1Gi") == 1.0
    assert gib("1536Mi") == 1.5
    with pytest.raises(ValueError, match="Gi or Mi"):
        gib("1G")


@pytest.mark.parametrize("variant", MEASURED)
def test_manifest_concurrency_equals_the_plan(variant: str) -> None:
    planned = PLAN["manifests"][variant]
    doc = yaml.safe_load((ROOT / planned["file"]).read_text())
    template = doc["spec"]["template"]
    assert template["spec"]["containerConcurrency"] == planned["container_concurrency"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/target"] == str(planned["target"])
    entry = PLAN["plans"][f"{variant}@{planned['cores']}"]["plan"]
    assert (entry["container_concurrency"], entry["target"]) == (
        planned["container_concurrency"],
        planned["target"],
    )


def test_plan_applies_littles_law_within_the_slo() -> None:
    levels = [
        _level(1, 100.0, 10.0, 20.0),
        _level(4, 300.0, 13.3, 40.0),
        _level(16, 320.0, 50.0, 120.0),
        _level(64, 330.0, 194.0, 400.0),  # over the SLO: ignored
    ]
    p = plan(levels, slo_ms=250, utilization=0.7)
    assert p is not None
    assert p["at_concurrency"] == 16
    assert p["container_concurrency"] == 16  # ceil(320 req/s x 0.050 s)
    assert p["knee_concurrency"] == 4  # first level with >= 90 % of 320 req/s
    assert p["target"] == 4  # ceil(300 x 0.0133)
    assert p["rps_per_pod_at_target_utilization"] == 224.0


def test_plan_skips_levels_with_errors_and_none_when_nothing_fits() -> None:
    levels = [_level(1, 50.0, 20.0, 30.0), _level(8, 200.0, 40.0, 90.0, **{"429": 3})]
    p = plan(levels, slo_ms=250, utilization=0.7)
    assert p is not None
    assert p["at_concurrency"] == 1
    assert plan([_level(1, 50.0, 20.0, 300.0)], slo_ms=250, utilization=0.7) is None


def test_costs_from_the_price_file() -> None:
    settings = {
        "peak_rps": 1000,
        "target_utilization": 0.5,
        "prices": {"vcpu_hour": 0.04, "gib_hour": 0.01, "gpu_hour": 1.0},
    }
    c = costs({"rps": 100.0}, cores=2, memory_gib=1.0, s=settings)
    assert c["pods_for_peak"] == 20
    assert c["pod_usd_per_hour"] == pytest.approx(0.09)
    assert c["usd_per_million_full"] == pytest.approx(0.09 / 360000 * 1e6, abs=1e-4)
    assert c["usd_per_million_at_target"] == pytest.approx(2 * c["usd_per_million_full"], abs=1e-4)
