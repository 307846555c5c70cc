"""A plain-text table of a registry: setup arguments, summary statistics and each field's state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .fields import BaseField

_NAME_WIDTH = 28


def format_registry(registry: dict[str, Any], fields: Sequence[BaseField], hide_states: bool = False) -> str:
    """The registry as readable text, one ``name  value`` line per entry (only sources with ``hide_states``)."""
    stats = registry["summary_stats"]
    lines = [
        f"Registry of {registry['model_name']} (pyrovi {registry['pyrovi_version']}): "
        f"{stats['n_cells']} cells x {stats['n_vars']} genes",
        "",
        "Setup arguments",
    ]
    lines += _rows([(name, repr(value)) for name, value in registry["setup_args"].items()] or [("(none)", "")])
    lines += ["", "Summary statistics"]
    lines += _rows([(name, str(value)) for name, value in stats.items()])
    lines += ["", "Fields"]
    for field in fields:
        state = registry["field_states"][field.registry_key]
        lines.append(f"  {field.registry_key} ({type(field).__name__})")
        rows = field.view_rows(state)
        if hide_states:
            rows = [row for row in rows if row[0] in ("source", "modality")]
        lines += _rows(rows, indent=4)
    return "\n".join(lines)


def _rows(rows: list[tuple[str, str]], indent: int = 2) -> list[str]:
    width = max([_NAME_WIDTH] + [len(name) + 2 for name, _ in rows])
    return [f"{' ' * indent}{name:<{width}}{value}".rstrip() for name, value in rows]
