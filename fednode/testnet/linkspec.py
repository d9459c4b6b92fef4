"""Parsing of the testnet's network specs: ``--link``, ``--partition``, ``--sites``, ``--kill-router``.

Pure functions from strings to frozen dataclasses; every malformed spec raises
:class:`SpecError` with one line that names the bad part, so the CLI can print it as
``fednode: error: ...`` before anything is created.

Grammar (keys in any order, separated by spaces):

``--link "delay=50ms jitter=10ms loss=2% rate=20mbit"``
    egress impairment of a node (``--link`` once: every node; ``--link "3:delay=..."`` or
    ``--link "site1:delay=..."``: one node or every node of one site, overriding the default).
    delay/jitter in ``us``/``ms``/``s``; loss in percent (0-100); rate in ``kbit``/``mbit``/``gbit``.
``--partition "at=20s for=30s groups=0-3|4-7"``
    from ``at`` after the start for ``for``, packets between the groups are dropped. Groups are
    node-index ranges and lists (``0-3,5|4,6-7``); nodes not listed form one more group.
``--kill-router "site=1 at=20s for=20s"``
    SIGKILL site 1's router at ``at`` and restart it ``for`` later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SpecError", "LinkSpec", "PartitionSpec", "RouterKillSpec", "parse_link", "parse_links",
           "parse_partition", "parse_kill_router", "check_sites", "site_of"]


class SpecError(ValueError):
    """A malformed network spec (one line for the user)."""


_TIME = re.compile(r"(?P<v>\d+(?:\.\d+)?)(?P<u>us|ms|s)")
_RATE = re.compile(r"(?P<v>\d+(?:\.\d+)?)(?P<u>kbit|mbit|gbit)")
_LOSS = re.compile(r"(?P<v>\d+(?:\.\d+)?)%")
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE_UNITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


@dataclass(frozen=True)
class LinkSpec:
    """Egress impairment of one node: each packet waits delay +- jitter, is lost with prob. loss."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0  # probability 0..1
    rate_bps: float | None = None

    @property
    def impaired(self) -> bool:
        return self.delay_s > 0 or self.jitter_s > 0 or self.loss > 0

    def describe(self) -> str:
        parts = [f"delay={self.delay_s * 1e3:g}ms", f"jitter={self.jitter_s * 1e3:g}ms", f"loss={self.loss * 100:g}%"]
        if self.rate_bps:
            parts.append(f"rate={self.rate_bps / 1e6:g}mbit")
        return " ".join(parts)


@dataclass(frozen=True)
class PartitionSpec:
    at_s: float
    for_s: float
    groups: tuple[frozenset[int], ...]

    def group_of(self, index: int) -> int:
        for g, members in enumerate(self.groups):
            if index in members:
                return g
        return len(self.groups)  # the unlisted nodes: one more group


@dataclass(frozen=True)
class RouterKillSpec:
    site: int
    at_s: float
    for_s: float


def _pairs(spec: str, what: str, allowed: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"empty {what} spec")
    out: dict[str, str] = {}
    for token in spec.split():
        key, sep, value = token.partition("=")
        if not sep or not value:
            raise SpecError(f"{what} spec {spec!r}: {token!r} is not key=value")
        if key not in allowed:
            raise SpecError(f"{what} spec {spec!r}: unknown key {key!r} (allowed: {', '.join(allowed)})")
        if key in out:
            raise SpecError(f"{what} spec {spec!r}: {key!r} given twice")
        out[key] = value
    return out


def _time(value: str, key: str, what: str) -> float:
    m = _TIME.fullmatch(value)
    if m is None:
        raise SpecError(f"{what} {key}={value!r}: expected a time such as 50ms, 1.5s or 200us")
    return float(m["v"]) * _TIME_UNITS[m["u"]]


def parse_link(spec: str) -> LinkSpec:
    """``"delay=50ms jitter=10ms loss=2% rate=20mbit"`` -> LinkSpec (every key optional, at least one)."""
    kv = _pairs(spec, "--link", ("delay", "jitter", "loss", "rate"))
    delay = _time(kv["delay"], "delay", "--link") if "delay" in kv else 0.0
    jitter = _time(kv["jitter"], "jitter", "--link") if "jitter" in kv else 0.0
    loss = 0.0
    if "loss" in kv:
        m = _LOSS.fullmatch(kv["loss"])
        if m is None or float(m["v"]) > 100:
            raise SpecError(f"--link loss={kv['loss']!r}: expected a percentage of 0-100, e.g. 2%")
        loss = float(m["v"]) / 100
    rate = None
    if "rate" in kv:
        m = _RATE.fullmatch(kv["rate"])
        if m is None or float(m["v"]) <= 0:
            raise SpecError(f"--link rate={kv['rate']!r}: expected a positive rate such as 20mbit or 500kbit")
        rate = float(m["v"]) * _RATE_UNITS[m["u"]]
    if delay > 10 or jitter > 10:
        raise SpecError("--link delay and jitter must be at most 10s")
    if jitter > delay:
        raise SpecError(f"--link jitter ({jitter * 1e3:g}ms) must not exceed delay ({delay * 1e3:g}ms)")
    return LinkSpec(delay, jitter, loss, rate)


def parse_links(specs: list[str], nodes: int, sites: int) -> list[LinkSpec]:
    """The link of every node from repeated ``--link`` values: a bare spec is the default, ``N:spec``
    sets node N and ``siteS:spec`` every node of site S (node overrides site overrides default)."""
    default = LinkSpec()
    by_site: dict[int, LinkSpec] = {}
    by_node: dict[int, LinkSpec] = {}
    for raw in specs:
        head, sep, rest = raw.partition(":")
        if sep and re.fullmatch(r"site\d+", head.strip()):
            s = int(head.strip()[4:])
            if s >= sites:
                raise SpecError(f"--link {raw!r}: site {s} does not exist (sites 0-{sites - 1})")
            by_site[s] = parse_link(rest)
        elif sep and head.strip().isdigit():
            n = int(head)
            if n >= nodes:
                raise SpecError(f"--link {raw!r}: node {n} does not exist (nodes 0-{nodes - 1})")
            by_node[n] = parse_link(rest)
        elif sep:
            raise SpecError(f"--link {raw!r}: prefix {head!r} must be a node index or siteN")
        else:
            default = parse_link(raw)
    return [by_node.get(i, by_site.get(site_of(i, nodes, sites), default)) for i in range(nodes)]


def _indices(text: str, nodes: int) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if m is None:
            raise SpecError(f"--partition group {text!r}: expected node indices such as 0-3 or 0,2,5-6")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if lo > hi or hi >= nodes:
            raise SpecError(f"--partition group {text!r}: range {part!r} is outside nodes 0-{nodes - 1}")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def parse_partition(spec: str, nodes: int) -> PartitionSpec:
    """``"at=20s for=30s groups=0-3|4-7"`` -> PartitionSpec (at least two groups, disjoint)."""
    kv = _pairs(spec, "--partition", ("at", "for", "groups"))
    for key in ("at", "for", "groups"):
        if key not in kv:
            raise SpecError(f"--partition spec {spec!r}: missing {key}=")
    at, dur = _time(kv["at"], "at", "--partition"), _time(kv["for"], "for", "--partition")
    if dur <= 0:
        raise SpecError("--partition for= must be > 0")
    groups = tuple(_indices(g, nodes) for g in kv["groups"].split("|"))
    seen: set[int] = set()
    for g in groups:
        if seen & g:
            raise SpecError(f"--partition groups {kv['groups']!r}: node {min(seen & g)} is in two groups")
        seen |= g
    if len(groups) + (1 if len(seen) < nodes else 0) < 2:
        raise SpecError(f"--partition groups {kv['groups']!r}: need at least two groups (separate them with |)")
    return PartitionSpec(at, dur, groups)


def parse_kill_router(spec: str, sites: int) -> RouterKillSpec:
    """``"site=1 at=20s for=20s"`` -> RouterKillSpec (needs --sites >= 2)."""
    kv = _pairs(spec, "--kill-router", ("site", "at", "for"))
    for key in ("site", "at", "for"):
        if key not in kv:
            raise SpecError(f"--kill-router spec {spec!r}: missing {key}=")
    if sites < 2:
        raise SpecError("--kill-router needs --sites 2 or more (routers exist only between sites)")
    if not kv["site"].isdigit() or int(kv["site"]) >= sites:
        raise SpecError(f"--kill-router site={kv['site']!r}: expected a site index of 0-{sites - 1}")
    dur = _time(kv["for"], "for", "--kill-router")
    if dur <= 0:
        raise SpecError("--kill-router for= must be > 0")
    return RouterKillSpec(int(kv["site"]), _time(kv["at"], "at", "--kill-router"), dur)


def check_sites(sites: int, nodes: int, netns: bool) -> None:
    if not isinstance(sites, int) or sites < 1:
        raise SpecError(f"--sites must be a positive integer, not {sites!r}")
    if sites > 1 and not netns:
        raise SpecError("--sites needs --netns (a site is a network of namespaces behind its router)")
    if sites > 50:
        raise SpecError("--sites must be at most 50")
    if nodes < sites:
        raise SpecError(f"--sites {sites} needs at least one node per site (--nodes is {nodes})")


def site_of(index: int, nodes: int, sites: int) -> int:
    """Nodes are dealt to sites in contiguous blocks: 9 nodes, 3 sites -> 0,0,0,1,1,1,2,2,2."""
    return min(sites - 1, index * sites // nodes)
