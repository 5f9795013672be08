"""Write knative/kserve/crd-schemas.json: the KServe CRD schemas knative/kserve/ is checked on.

The official CRDs (ServingRuntime, ClusterServingRuntime, InferenceService; `../shared/kserve/crds`
beside the checkout) are 2.3 MB of YAML, mostly the same Kubernetes container and pod schemas
repeated under every predictor framework. The reduced file keeps every served version's
`openAPIV3Schema` whole except `status` (a manifest never carries one) and stores each repeated
subtree once under `$defs`, named by its content's sha256, with `{"$ref": "#/$defs/NAME"}` where
it stood: expanding the references gives the CRDs' schemas back exactly (tests/test_deploy_kserve.py
checks that, and that this file is what this script writes, whenever ../shared is present).

    python -m scripts.kserve_schema            # rewrite knative/kserve/crd-schemas.json
    python -m scripts.kserve_schema --check    # exit 1 if it differs from what would be written
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT.parent / "shared" / "kserve" / "crds"
OUT = ROOT / "knative" / "kserve" / "crd-schemas.json"
# Subtrees shorter than this (canonical JSON characters) stay inline: a reference would not pay.
MIN_SHARED_CHARS = 200
# libyaml parses the 2 MB InferenceService CRD in about a sixth of pure Python's time.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Where JSON Schema keywords hold schemas: maps of them, one, or lists of them.
SCHEMA_MAPS = ("properties", "patternProperties", "$defs")
SCHEMA_KEYS = ("items", "additionalProperties", "not")
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "items")


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@cache
def served_schemas(crds: Path) -> dict[str, dict[str, Any]]:
    """ "GROUP/VERSION KIND" -> the served version's openAPIV3Schema without `status`."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(crds.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(encoding="utf-8"), Loader=LOADER):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                schema = dict(version["schema"]["openAPIV3Schema"])
                props = {k: v for k, v in schema.get("properties", {}).items() if k != "status"}
                out[f"{group}/{version['name']} {kind}"] = {**schema, "properties": props}
    return out


def _subschemas(schema: dict[str, Any]) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """(where, subschema) for every schema directly inside `schema`. Only these positions hold
    schemas: a `properties` map, `enum` values or `x-kubernetes-*` entries are not schemas, and
    a `$ref` in their place would change their meaning."""
    out: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    for key, value in schema.items():
        if key in SCHEMA_MAPS and isinstance(value, dict):
            out += [((key, name), sub) for name, sub in value.items() if isinstance(sub, dict)]
        elif key in SCHEMA_KEYS and isinstance(value, dict):
            out.append(((key,), value))
        elif key in SCHEMA_LISTS and isinstance(value, list):
            out += [((key, str(i)), sub) for i, sub in enumerate(value) if isinstance(sub, dict)]
    return out


def _count(schema: dict[str, Any], counts: Counter[str]) -> None:
    counts[canonical(schema)] += 1
    for _, sub in _subschemas(schema):
        _count(sub, counts)


def _replace(schema: dict[str, Any], new: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    """A copy of `schema` with the subschemas at the given places replaced."""
    out = dict(schema)
    for where, value in new.items():
        if len(where) == 1:
            out[where[0]] = value
        elif isinstance(out[where[0]], dict):
            out[where[0]] = {**out[where[0]], where[1]: value}
        else:
            items = list(out[where[0]])
            items[int(where[1])] = value
            out[where[0]] = items
    return out


def reduce(schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`{"kinds": {...}, "$defs": {...}}`: every repeated subschema stored once."""
    counts: Counter[str] = Counter()
    for schema in schemas.values():
        _count(schema, counts)
    shared = {c for c, n in counts.items() if n > 1 and len(c) >= MIN_SHARED_CHARS}
    defs: dict[str, Any] = {}

    def walk(schema: dict[str, Any], *, root: bool = False) -> dict[str, Any]:
        text = canonical(schema)
        if not root and text in shared:
            name = hashlib.sha256(text.encode()).hexdigest()[:16]
            if name not in defs:
                defs[name] = walk(schema, root=True)
            return {"$ref": f"#/$defs/{name}"}
        return _replace(schema, {where: walk(sub) for where, sub in _subschemas(schema)})

    kinds = {key: walk(schema, root=True) for key, schema in sorted(schemas.items())}
    return {"kinds": kinds, "$defs": dict(sorted(defs.items()))}


def expand(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with every `$ref` into `defs` replaced by the subtree it names."""
    if isinstance(node, list):
        return [expand(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"$ref"} and str(node["$ref"]).startswith("#/$defs/"):
        # Only reduce() writes a lone `$ref` (the CRDs use none: tests/test_deploy_kserve.py).
        return expand(defs[node["$ref"].removeprefix("#/$defs/")], defs)
    return {k: expand(v, defs) for k, v in node.items()}


def document(crds: Path = CRDS) -> dict[str, Any]:
    """The whole file: where it comes from (each CRD file's sha256), the kinds and the defs."""
    sources = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(crds.glob("*.yaml"))
    }
    return {
        "generated_by": "python -m scripts.kserve_schema (KServe CRDs, config/crd/full)",
        "sources": sources,
        **reduce(served_schemas(crds)),
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crds", type=Path, default=CRDS, help="directory of the official CRDs")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    if not args.crds.is_dir():
        print(f"no CRDs at {args.crds}: the official KServe CRDs are needed", file=sys.stderr)
        return 2
    text = render(document(args.crds))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run python -m scripts.kserve_schema", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text)} characters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
