"""Byzantine testnets: which nodes attack, their node configs, and the honest-only report fields.

``fednode testnet --byzantine K --attack A`` turns K of the N node processes into attackers
(fednode/node/byzantine.py): real nodes with admitted keys and valid signatures whose
contributions lie. The attackers are a seeded random sample of the node indices, marked
``byzantine: true`` in the report; accuracy is then judged on the honest nodes alone.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from fednode.node.attacks import ATTACKS
from fednode.node.config import NodeConfig


def byzantine_indices(nodes: int, byzantine: int, seed: int) -> frozenset[int]:
    """The attacking node indices: ``byzantine`` of ``range(nodes)``, a fixed sample per seed."""
    if not 0 <= byzantine < max(1, nodes):
        raise ValueError(f"--byzantine must be in 0..{max(0, nodes - 1)} (at least one node stays honest)")
    return frozenset(random.Random(f"fednode-byzantine-{seed}").sample(range(nodes), byzantine))


def check_options(opts: Any) -> None:
    """One-line errors for bad adversary options (raised as ValueError, shown as ``fednode: error:``)."""
    if getattr(opts, "byzantine", 0) and opts.attack not in ATTACKS:
        raise ValueError(f"--attack must be one of {', '.join(ATTACKS)}")
    byzantine_indices(opts.nodes, getattr(opts, "byzantine", 0), opts.seed)


def node_config(opts: Any, cfg: NodeConfig, index: int, attackers: frozenset[int]) -> NodeConfig:
    """``cfg`` with the testnet's clip and filter options and, for an attacker, its attack (validated)."""
    changes: dict[str, Any] = {}
    if getattr(opts, "clip", None):
        changes["clip"] = opts.clip
    if getattr(opts, "validation_filter", False):
        changes["validation_filter"] = True
    if index in attackers:
        changes["attack"] = opts.attack
    return dataclasses.replace(cfg, **changes).validate() if changes else cfg


def honest_summary(nodes: list[dict], attackers: frozenset[int], attack: str | None) -> dict[str, Any]:
    """Report fields judged on honest nodes only (attackers' own accuracy says nothing)."""
    for n in nodes:
        n["byzantine"] = n["index"] in attackers
    honest = [n["test_accuracy"] for n in nodes if not n["byzantine"]]
    known = [a for a in honest if isinstance(a, (int, float))]
    complete = len(known) == len(honest)
    return {
        "byzantine": sorted(attackers), "attack": attack if attackers else None,
        "honest_accuracy_min": (min(known) if known and complete else None),
        "honest_accuracy_mean": (sum(known) / len(known) if known else None),
        "honest_rejects": _sum_counters(n.get("rejects") for n in nodes if not n["byzantine"]),
    }


def _sum_counters(items) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in items:
        for k, v in (c or {}).items():
            total[k] = total.get(k, 0) + int(v)
    return total


def register_flags(p) -> None:
    """The adversary flags of ``fednode testnet``."""
    p.add_argument("--byzantine", type=int, default=0, metavar="K",
                   help="K node processes poison their contributions with --attack (fault injection)")
    p.add_argument("--attack", default="signflip", choices=list(ATTACKS), help="what the Byzantine nodes send")
    p.add_argument("--clip", type=float, default=None, help="L2 bound on each round's local update")
    p.add_argument("--validation-filter", action="store_true",
                   help="score each neighbour's model on a held-out slice of the node's data; drop harmful ones")


def apply_cli(opts: Any, args: Any) -> None:
    """Copy the adversary flags into ``opts``; bad combinations are one-line user errors (ConfigError: the
    CLI prints it as ``fednode: error: ...``; testnet/ sits below the CLI and does not import it)."""
    from fednode.node.config import ConfigError
    opts.byzantine, opts.attack = args.byzantine, args.attack
    opts.clip = args.clip
    opts.validation_filter = args.validation_filter
    try:
        check_options(opts)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if opts.validation_filter and opts.secure_aggregation != "off":
        raise ConfigError("--validation-filter reads each neighbour's model: it needs --secure-aggregation off")
