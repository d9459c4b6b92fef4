"""Which transport a ``fednode start`` runs on (config key ``transport``): Zenoh or libp2p.

:func:`transport_factory_for` checks the network settings at once (bad addresses, a port in use,
a missing optional extra: one line each) and returns the factory the node runtime calls with its
callbacks, so the slow trainer start never precedes a network error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fednode.cli.common import UserError
from fednode.node.config import NodeConfig
from fednode.security.identity import AllowList, Identity


def libp2p_settings_for(cfg: NodeConfig, identity: Identity, allow_list: AllowList):
    """The node's libp2p settings; UserError with the install line when the extra is missing."""
    from fednode.gossip.transports.libp2p_settings import INSTALL_HINT, Libp2pSettings, libp2p_available
    if not libp2p_available():
        raise UserError(INSTALL_HINT)
    return Libp2pSettings(federation=cfg.federation, identity=identity, allow_list=allow_list,
                          listen=list(cfg.libp2p_listen), bootstrap=list(cfg.bootstrap),
                          announce=list(cfg.libp2p_announce), lease_ms=cfg.lease_ms,
                          max_message_bytes=cfg.round_config().max_message_bytes)


def transport_factory_for(cfg: NodeConfig, identity: Identity, allow_list: AllowList) -> Callable[..., Any]:
    """A preflighted ``factory(**callbacks) -> transport`` for ``cfg.transport``."""
    if cfg.transport == "libp2p":
        settings = libp2p_settings_for(cfg, identity, allow_list)
        settings.preflight()

        def libp2p_factory(**callbacks):
            from fednode.gossip.transports.libp2p_transport import Libp2pTransport
            return Libp2pTransport(settings, **callbacks)
        return libp2p_factory
    from fednode.cli.start import zenoh_settings_for
    zsettings = zenoh_settings_for(cfg, identity.peer_id)
    zsettings.preflight()

    def zenoh_factory(**callbacks):
        from fednode.gossip.transports.zenoh_transport import ZenohTransport
        return ZenohTransport(zsettings, **callbacks)
    return zenoh_factory


def list_status_libp2p(bootstrap: list[str], timeout_s: float) -> dict[bytes, bytes]:
    """``fednode status --transport libp2p``: statuses of the members reachable from ``bootstrap``."""
    from fednode.gossip.transports.libp2p_settings import INSTALL_HINT, libp2p_available
    if not libp2p_available():
        raise UserError(INSTALL_HINT)
    if not bootstrap:
        raise UserError("status over libp2p needs --bootstrap /ip4/HOST/tcp/PORT/p2p/PEERID of a member")
    from fednode.gossip.transports.libp2p_streams import list_status
    return list_status(bootstrap, timeout_s=timeout_s)
