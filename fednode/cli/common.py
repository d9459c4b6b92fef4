"""What every ``fednode`` subcommand shares: the one-line user error and logging setup."""

from __future__ import annotations

import logging
import sys

from fednode.node.config import ConfigError


class UserError(Exception):
    """A one-line, user-facing error."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, not a bug (imported lazily: JAX and Zenoh are slow)."""
    from fednode.node.checkpoint import CheckpointError
    from fednode.security.identity import IdentityError
    types: list[type[BaseException]] = [UserError, ConfigError, IdentityError, CheckpointError]
    try:
        from fednode.node.trainer import DataError, TaskError
        types += [DataError, TaskError]
    except ImportError:
        pass
    from fednode.testnet.linkspec import SpecError
    from fednode.testnet.netns import NetnsError
    types += [SpecError, NetnsError]
    try:
        from fednode.gossip.transports.zenoh_transport import TransportError
        types.append(TransportError)
    except ImportError:
        pass
    from fednode.gossip.transports.libp2p_settings import TransportError as Libp2pTransportError
    types.append(Libp2pTransportError)
    return tuple(types)


def setup_logging(level: str, short: str = "") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format=f"%(asctime)s {short} %(levelname)s %(message)s".replace("  ", " "),
                        datefmt="%H:%M:%S", stream=sys.stderr)
