"""Reading a rendered kernel script the way the kernel does: its SETTINGS literal."""

from __future__ import annotations

import ast
from typing import Any


def script_settings(text: str) -> dict[str, Any]:
    """The SETTINGS literal of a rendered script."""
    tree = ast.parse(text)
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "SETTINGS"]
    return ast.literal_eval(node.value)
