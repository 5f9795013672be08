"""A stand-in `kubectl` for the adapt rollout's process tests: no API server runs on our machines.

Installed as an executable named `kubectl` (see `install`), it appends its argv to
`$FAKE_KUBECTL_DIR/calls.jsonl` and keeps the Service and its revisions as JSON files there:

- `get ksvc NAME -o json` prints `ksvc-NAME.json`; `get revision NAME -o json` prints
  `revision-NAME.json`; a missing file answers like the API server's NotFound (exit 1).
- `patch ksvc NAME --type merge -p BODY` applies BODY as a JSON merge patch (RFC 7386). When the
  patch names a new template revision, the Service's status records it as the latest created
  revision and a revision file appears whose Ready condition is `$FAKE_REVISION_READY` (True,
  False or Unknown), as Knative's controller would report it.

It checks nothing a real API server would (schemas, RBAC, admission); tests/test_deploy_manifests.py
validates the manifests, and a real cluster is needed for the rest.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def not_found(kind: str, name: str) -> int:
    print(f'Error from server (NotFound): {kind} "{name}" not found', file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    state = Path(os.environ["FAKE_KUBECTL_DIR"])
    with (state / "calls.jsonl").open("a", encoding="utf-8") as calls:
        calls.write(json.dumps(argv) + "\n")
    verb, kind, name = argv[0], argv[1], argv[2]
    path = state / f"{kind}-{name}.json"
    if verb == "get":
        if not path.is_file():
            return not_found(kind, name)
        print(path.read_text(encoding="utf-8"))
        return 0
    if verb == "patch" and kind == "ksvc":
        if not path.is_file():
            return not_found(kind, name)
        body = json.loads(argv[argv.index("-p") + 1])
        service = merge(json.loads(path.read_text(encoding="utf-8")), body)
        revision = (body.get("spec", {}).get("template", {}).get("metadata") or {}).get("name")
        if revision:
            service["status"]["latestCreatedRevisionName"] = revision
            ready = os.environ.get("FAKE_REVISION_READY", "True")
            condition = {"type": "Ready", "status": ready}
            if ready == "False":
                condition.update(reason="ExitCode1", message="Container failed with: model missing")
            (state / f"revision-{revision}.json").write_text(
                json.dumps({"metadata": {"name": revision}, "status": {"conditions": [condition]}}),
                encoding="utf-8",
            )
        path.write_text(json.dumps(service), encoding="utf-8")
        print(f"service.serving.knative.dev/{name} patched")
        return 0
    print(f"fake kubectl: unsupported {argv}", file=sys.stderr)
    return 3


def install(bin_dir: Path) -> Path:
    """Write the executable `kubectl` into bin_dir (running this file with this Python)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "kubectl"
    exe.write_text(
        f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0] = {__file__!r}\n"
        f"runpy.run_path({__file__!r}, run_name='__main__')\n",
        encoding="utf-8",
    )
    exe.chmod(0o755)
    return exe


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
