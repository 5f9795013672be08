"""Print the README's configuration table from shared.config.FIELDS (one row per variable)."""

from __future__ import annotations

from shared.config import FIELDS


def table() -> str:
    """The Markdown table of every setting: variable, default, meaning."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for var in FIELDS.values():
        default = f"`{var.default}`" if var.default else "(empty)"
        rows.append(f"| `{var.env}` | {default} | {var.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
