"""Reading a node's status file (``<state_dir>/status.json``, written atomically by the runtime)."""

from __future__ import annotations

import json
from typing import Any


def read_status(node: Any) -> dict | None:
    """The node's last status, or None when it has none yet (or it is being replaced)."""
    try:
        return json.loads((node.state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
