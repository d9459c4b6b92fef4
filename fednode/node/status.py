"""Compatibility import: the signed-status codec moved to :mod:`fednode.gossip.status` (issue 13)."""

from fednode.gossip.status import OBSERVER_ID, StatusVerifier, seal_status

__all__ = ["OBSERVER_ID", "StatusVerifier", "seal_status"]
