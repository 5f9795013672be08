"""Serve the function as `func run` does: `python -m function` (LISTEN_ADDRESS, default :8080)."""

from __future__ import annotations

from func_python.http import serve  # type: ignore[import-untyped]

from function import new

if __name__ == "__main__":
    serve(new)
