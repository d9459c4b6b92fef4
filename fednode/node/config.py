"""Node configuration: one dataclass, loadable from TOML and overridable by command-line flags.

Every field is documented in README.md ("Configuration reference"); the TOML keys are the
field names. Precedence: defaults < TOML file (``--config``) < explicit flags.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fednode.gossip.config import AGGREGATORS, RoundConfig

_FEDERATION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MULTIADDR_RE = re.compile(r"/(?:ip4|ip6|dns|dns4|dns6)/[^/\s]+/tcp/\d{1,5}(/p2p/[1-9A-HJ-NP-Za-km-z]+)?")


class ConfigError(Exception):
    """A configuration value is missing or invalid (one-line message for the user)."""


@dataclass
class NodeConfig:
    # identity and admission
    federation: str = "default"
    state_dir: Path = Path("fednode-state")
    identity: Path | None = None
    """Ed25519 key file (default: <state_dir>/identity.pem)."""
    allow_list: Path | None = None
    """Admitted public keys (default: <state_dir>/allow_list.txt)."""
    # network
    listen: list[str] = field(default_factory=lambda: ["tcp/0.0.0.0:0"])
    connect: list[str] = field(default_factory=list)
    interface: str = "auto"
    """Multicast scouting interface ("lo" keeps discovery on this machine)."""
    multicast: bool = True
    multicast_address: str = "224.0.0.224:7446"
    """Scouting group and port: Zenoh's default; separate groups never discover each other."""
    mode: str = "peer"
    """"peer" (LAN, scouting) or "client" (join through a Zenoh router given in ``connect``)."""
    lease_ms: int = 3000
    transport: str = "zenoh"
    """"zenoh" (scouting, routers) or "libp2p" (bootstrap multiaddrs, Noise; the optional extra)."""
    bootstrap: list[str] = field(default_factory=list)
    """libp2p: peers to join through, /ip4/HOST/tcp/PORT/p2p/PEERID (peer exchange finds the rest)."""
    libp2p_listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    libp2p_announce: list[str] = field(default_factory=list)
    """libp2p: addresses told to peers (default: the listen addresses)."""
    # learning
    task: str = "digits"
    data_dir: Path | None = None
    split: str = "iid"
    alpha: float = 0.5
    node_index: int = 0
    node_count: int = 1
    seed: int = 0
    """Federation seed: the common initial model and the data split."""
    local_epochs: float = 1.0
    batch_size: int | None = None
    learning_rate: float | None = None
    rounds: int | None = None
    """Stop after this many rounds (None: run forever)."""
    clip: float | None = None
    """L2 bound on each round's local update (None: off)."""
    # gossip round
    degree: int = 8
    t_hello: float = 5.0
    t_agg: float = 5.0
    t_commit: float = 2.0
    max_retries: int = 2
    aggregator: str = "gossip"
    validation_filter: bool = False
    """Score each neighbour's model on a held-out slice of this node's shard; drop or down-weight harmful ones."""
    secure_aggregation: str = "off"
    """"off", "retry" (mode A) or "secagg+" (mode B): neighbours see only masked sums (docs/security.md)."""
    # differential privacy (docs/privacy.md)
    dp: str = "off"
    """"off", "local" (node-level: clip each round's update to dp_clip, add N(0, z^2 C^2)), "dpsgd"
    (example-level DP-SGD in the trainer) or "distributed" (noise shares inside secure aggregation)."""
    dp_noise_multiplier: float | None = None
    """z; omitted with dp_epsilon and rounds set, the smallest z that spends dp_epsilon over the run."""
    dp_clip: float = 1.0
    """C: L2 bound of a round's update (local, distributed) or of one example's gradient (dpsgd)."""
    dp_epsilon: float | None = None
    """Privacy budget at dp_delta: the node stops releasing before it would exceed it."""
    dp_delta: float = 1e-5
    dp_colluders: int = 0
    """distributed: contributors assumed to collude with the aggregator (their noise does not count)."""
    # runtime
    min_peers: int = 0
    """A fresh node (no checkpoint) waits for this many live peers before round 0 ..."""
    wait_peers_s: float = 60.0
    """... but at most this long; then it starts alone (nothing can halt a node)."""
    linger_s: float | None = None
    """After the last round keep answering peers this long (default t_agg + t_commit)."""
    log_level: str = "info"
    record_trajectory: bool = False
    """Append the model after every round to <state_dir>/trajectory.bin (fednode/node/trajectory.py);
    the testnet turns it on to report consensus disagreement per round."""
    # fault injection (set only by `fednode testnet --byzantine`; fednode/node/byzantine.py)
    attack: str = "off"
    """"off", or the attack this node's contributions carry (signflip, gaussian, alie, ipm, stale, nan, inf,
    oversize): a Byzantine member for robustness measurements, never for production."""

    # ------------------------------------------------------------------ derived paths

    @property
    def identity_path(self) -> Path:
        return Path(self.identity) if self.identity else Path(self.state_dir) / "identity.pem"

    @property
    def allow_list_path(self) -> Path:
        return Path(self.allow_list) if self.allow_list else Path(self.state_dir) / "allow_list.txt"

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.state_dir) / "checkpoint.fnck"

    @property
    def ledger_path(self) -> Path:
        return Path(self.state_dir) / "privacy_ledger.jsonl"

    @property
    def status_path(self) -> Path:
        return Path(self.state_dir) / "status.json"

    @property
    def trajectory_path(self) -> Path:
        return Path(self.state_dir) / "trajectory.bin"

    def round_config(self) -> RoundConfig:
        return RoundConfig(federation=self.federation, t_hello=self.t_hello, t_agg=self.t_agg,
                           t_commit=self.t_commit, max_retries=self.max_retries, degree=self.degree,
                           update_clip=self.dp_clip if self.dp == "distributed" else self.clip,
                           aggregator=self.aggregator, max_rounds=self.rounds,
                           validation_filter=self.validation_filter,
                           secure_aggregation=self.secure_aggregation,
                           dp_distributed=(self.dp_noise_multiplier, self.dp_clip, self.dp_colluders)
                           if self.dp == "distributed" and self.dp_noise_multiplier else None)

    # ------------------------------------------------------------------ validation and loading

    def validate(self) -> "NodeConfig":
        if not _FEDERATION_RE.match(self.federation):
            raise ConfigError(f"federation id {self.federation!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if self.split not in ("iid", "dirichlet"):
            raise ConfigError(f"split must be 'iid' or 'dirichlet', not {self.split!r}")
        if not self.alpha > 0:
            raise ConfigError("alpha must be > 0")
        if self.node_count < 1 or not 0 <= self.node_index < self.node_count:
            raise ConfigError(f"node index {self.node_index} is outside 0..{self.node_count - 1}")
        if self.rounds is not None and self.rounds < 1:
            raise ConfigError("rounds must be >= 1 (omit it to run forever)")
        if self.clip is not None and not self.clip > 0:
            raise ConfigError("clip must be > 0")
        if self.mode not in ("peer", "client"):
            raise ConfigError("mode must be 'peer' or 'client'")
        if self.mode == "client" and not self.connect:
            raise ConfigError("client mode needs --connect with the router's endpoint")
        if self.aggregator not in AGGREGATORS:
            raise ConfigError(f"aggregator must be one of {', '.join(AGGREGATORS)}")
        if self.dp not in ("off", "local", "dpsgd", "distributed"):
            raise ConfigError("dp must be one of off, local, dpsgd, distributed")
        if self.dp != "off":
            if not self.dp_clip > 0 or not 0 < self.dp_delta < 1:
                raise ConfigError("dp_clip must be > 0 and dp_delta in (0, 1)")
            if self.dp_noise_multiplier is None and (self.dp_epsilon is None or self.rounds is None):
                raise ConfigError("differential privacy needs --dp-noise-multiplier, or --dp-epsilon with --rounds "
                                  "(to calibrate the noise for the whole run)")
            if self.dp_noise_multiplier is not None and not self.dp_noise_multiplier > 0:
                raise ConfigError("dp_noise_multiplier must be > 0")
            if self.dp_epsilon is not None and not self.dp_epsilon > 0:
                raise ConfigError("dp_epsilon must be > 0")
        if self.dp == "distributed" and self.secure_aggregation == "off":
            raise ConfigError("distributed DP adds noise shares inside secure aggregation: set --secure-aggregation")
        if self.dp == "local" and self.clip is not None:
            raise ConfigError("with dp = local the update is clipped to dp_clip; leave clip unset")
        from fednode.node.attacks import ATTACKS
        if self.attack not in ("off", *ATTACKS):
            raise ConfigError(f"attack must be off or one of {', '.join(ATTACKS)}")
        for ep in [*self.listen, *self.connect]:
            if not re.match(r"^(tcp|udp|tls|quic|ws)/[^\s/]+:\d{1,5}$", ep) and not ep.startswith("tcp/["):
                raise ConfigError(f"endpoint {ep!r} is not of the form tcp/HOST:PORT")
        if self.transport not in ("zenoh", "libp2p"):
            raise ConfigError(f"transport must be 'zenoh' or 'libp2p', not {self.transport!r}")
        for key in ("bootstrap", "libp2p_listen", "libp2p_announce"):
            for addr in getattr(self, key):
                m = _MULTIADDR_RE.fullmatch(addr) if isinstance(addr, str) else None
                if m is None or (key == "bootstrap" and not m[1]):
                    raise ConfigError(f"{key} address {addr!r} is not of the form /ip4/HOST/tcp/PORT"
                                      + ("/p2p/PEERID" if key == "bootstrap" else ""))
        try:
            self.round_config()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return self

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_sources(cls, toml_path: Path | None, overrides: dict[str, Any]) -> "NodeConfig":
        values: dict[str, Any] = {}
        if toml_path is not None:
            try:
                with open(toml_path, "rb") as fh:
                    data = tomllib.load(fh)
            except OSError as exc:
                raise ConfigError(f"cannot read config file {toml_path}: {exc.strerror}") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {toml_path} is not valid TOML: {exc}") from None
            unknown = set(data) - cls.field_names()
            if unknown:
                raise ConfigError(f"unknown key(s) in {toml_path}: {', '.join(sorted(unknown))}")
            values.update(data)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("state_dir", "identity", "allow_list", "data_dir"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        for key in ("listen", "connect", "bootstrap", "libp2p_listen", "libp2p_announce"):
            if isinstance(values.get(key), str):
                values[key] = [values[key]]
        try:
            cfg = cls(**values)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None
        return cfg.validate()

    def to_toml(self) -> str:
        """TOML text for this config (the testnet writes one per node)."""
        lines = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if isinstance(v, Path):
                v = str(v)
            if isinstance(v, bool):
                lines.append(f"{f.name} = {'true' if v else 'false'}")
            elif isinstance(v, (int, float)):
                lines.append(f"{f.name} = {v!r}")
            elif isinstance(v, str):
                lines.append(f"{f.name} = {_toml_str(v)}")
            elif isinstance(v, list):
                lines.append(f"{f.name} = [{', '.join(_toml_str(x) for x in v)}]")
        return "\n".join(lines) + "\n"


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
