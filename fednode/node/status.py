"""Status as the node writes it: the signed-status codec (moved to :mod:`fednode.gossip.status`, issue 13,
imported from here as before) and the JSON of status files."""

from __future__ import annotations

from typing import Any

import numpy as np

from fednode.gossip.status import OBSERVER_ID, StatusVerifier, seal_status

__all__ = ["OBSERVER_ID", "StatusVerifier", "json_default", "seal_status"]


def json_default(obj: Any) -> Any:
    """JSON for the numpy scalars and bytes a status may hold (status files, ``fednode status --json``)."""
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(type(obj).__name__)
