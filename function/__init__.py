"""The Knative Functions (`func`) entry point: `new()` returns the function instance.

`func build` / `func run` serve it with the func-python middleware (`func_python.http.serve`);
`python -m function` does the same without the CLI.
"""

from function.func import Function, new

__all__ = ["Function", "new"]
