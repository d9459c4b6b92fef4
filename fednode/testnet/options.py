"""Options of ``fednode testnet`` (one dataclass; the CLI and the tests fill it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
    transport: str = "zenoh"
    """"zenoh" (scouting on lo) or "libp2p" (each node on a fixed 127.0.0.1 port chosen by the launcher,
    bootstrapping to nodes 0 and 1; peer exchange finds the rest)."""
