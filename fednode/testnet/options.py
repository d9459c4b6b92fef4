"""Options of ``fednode testnet`` (one dataclass; the CLI and the tests fill it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fednode.gossip.config import AGGREGATORS
from fednode.node.config import ConfigError


@dataclass
class TestnetOptions:
    __test__ = False  # not a pytest class

    nodes: int = 4
    rounds: int = 10
    seed: int = 0
    task: str = "digits"
    split: str = "iid"
    alpha: float = 0.5
    federation: str | None = None
    kill_every: float | None = None
    restart_delay: float = 5.0
    report: Path | None = None
    workdir: Path | None = None
    data_dir: str | None = None
    local_epochs: float = 1.0
    timeout: float = 1800.0
    quiet: bool = False
    keep: bool = False
    extra_args: list[str] = field(default_factory=list)
    t_hello: float = 5.0
    t_agg: float = 5.0
    t_commit: float = 2.0
    secure_aggregation: str = "off"
    dp: str = "off"
    dp_noise_multiplier: float | None = None
    dp_clip: float = 1.0
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    node_nice: int = 0
    """Run the node processes at this niceness (the dashboard's --tui mode uses 5 so that, on a small
    machine shared with N training processes, the terminal UI still gets the CPU when a key is pressed)."""
    # real networks (docs: README "Real networks"; fednode/testnet/netrun.py)
    netns: bool = False
    """Each node in a network namespace of its own (root only)."""
    link: list[str] = field(default_factory=list)
    """--link specs: "delay=50ms jitter=10ms loss=2% rate=20mbit", "3:..." (node 3) or "site1:..."."""
    partition: str | None = None
    """--partition "at=20s for=30s groups=0-3|4-7"."""
    sites: int = 1
    """Sites joined only through Zenoh routers (one router per site; needs netns)."""
    kill_router: str | None = None
    """--kill-router "site=1 at=20s for=20s"."""
    # Byzantine fault injection (fednode/testnet/adversary.py)
    byzantine: int = 0
    """This many node processes poison their contributions with ``attack`` (marked in the report)."""
    attack: str = "signflip"
    clip: float | None = None
    """L2 bound on each round's local update (``fednode start --clip``)."""
    validation_filter: bool = False
    """Each node scores its neighbours' models on a held-out slice of its data (plaintext only)."""
    # passed through to every node's config (README "Configuration reference")
    degree: int = 8
    aggregator: str = "gossip"
    max_retries: int = 2
    lease_ms: int = 2000
    wait_peers_s: float | None = None
    """How long a fresh node waits for all its peers before round 0 (default 60 s + 2 s per node:
    N JAX start-ups share the machine's cores)."""
    stagger_s: float = 0.0
    """Pause between two node launches (spreads the JAX start-ups of a large testnet)."""

    transport: str = "zenoh"
    """"zenoh" (scouting on lo) or "libp2p" (each node on a fixed 127.0.0.1 port chosen by the launcher,
    bootstrapping to nodes 0 and 1; peer exchange finds the rest)."""

    def check(self) -> "TestnetOptions":
        """Raise ConfigError (one line for the user) on values no node could run with."""
        if self.nodes < 1 or self.rounds < 1:
            raise ConfigError("--nodes and --rounds must be >= 1")
        if self.degree < 1:
            raise ConfigError(f"--degree must be >= 1, not {self.degree}")
        if self.aggregator not in AGGREGATORS:
            raise ConfigError(f"--aggregator must be one of {', '.join(AGGREGATORS)}, not {self.aggregator!r}")
        for name in ("t_hello", "t_agg", "t_commit"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, not {getattr(self, name)}")
        if self.max_retries < 0:
            raise ConfigError(f"--max-retries must be >= 0, not {self.max_retries}")
        if self.lease_ms < 100:
            raise ConfigError(f"--lease-ms must be >= 100 (ms), not {self.lease_ms}")
        if self.stagger_s < 0 or (self.wait_peers_s is not None and self.wait_peers_s < 0):
            raise ConfigError("--stagger and --wait-peers must be >= 0")
        if self.transport not in ("zenoh", "libp2p"):
            raise ConfigError(f"--transport must be zenoh or libp2p, not {self.transport!r}")
        return self
