"""Forged traffic for the flood benchmark: every kind of bad message, and the reject reasons it must get.

:class:`Forger` builds one message of a kind at a time from what a passive listener on the
federation's Zenoh keys sees (captured envelopes: rounds, layouts, real signatures) plus two keys of
its own: ``mallory`` (admitted: the benchmark adds it to the allow-list, so it stands for a
compromised member) and ``eve`` (not admitted). :data:`KINDS` maps each kind to the reject reasons a
receiver may give it (``open_envelope``'s order decides which one; ``banned`` appears once mallory
has sent 20 provably bad messages). A kind's messages must all be rejected: the benchmark compares
the receivers' reject counters, by reason group, with the number it sent.
"""

from __future__ import annotations

import collections
import hashlib
import os
import time

import msgpack
import numpy as np

from fednode.gossip.transports import keyexpr
from fednode.security.arrays import ModelSpec
from fednode.security.envelope import MAX_HEADER_BYTES, MsgType, seal
from fednode.security.identity import Identity

_MALLORY = frozenset({"layout", "non_finite", "magnitude", "unexpected_payload", "banned"})
_REPLAY = frozenset({"replay_nonce", "duplicate", "stale_round", "timestamp", "wrong_recipient", "future_round"})

KINDS: dict[str, frozenset[str]] = {
    "random_bytes": frozenset({"malformed"}),
    "truncated": frozenset({"malformed"}),
    "bomb_nesting": frozenset({"malformed"}),
    "bomb_length": frozenset({"malformed"}),
    "bitflip_signature": frozenset({"bad_signature"}),
    "bitflip_payload": frozenset({"payload_hash"}),
    "replay": _REPLAY,
    "replay_other_recipient": _REPLAY,
    "unknown_key": frozenset({"unknown_sender"}),
    "oversize_header": frozenset({"oversize"}),
    "oversize_message": frozenset({"oversize"}),
    "stale_round": frozenset({"stale_round", "banned"}),
    "future_round": frozenset({"future_round", "banned"}),
    "wrong_shape": _MALLORY,
    "nan": _MALLORY,
    "huge_norm": _MALLORY,
    "unexpected_payload": _MALLORY,
}
"""Kind -> the reject reasons it may get. Round kinds are signed by mallory and sent first (they are
not held against the signer); the attributable ones after (they get mallory banned)."""

REASON_GROUPS: dict[str, frozenset[str]] = {
    "malformed": frozenset({"malformed"}),
    "bad_signature": frozenset({"bad_signature"}),
    "payload_hash": frozenset({"payload_hash"}),
    "unknown_sender": frozenset({"unknown_sender"}),
    "oversize": frozenset({"oversize"}),
    "rounds_and_replays": frozenset({"stale_round", "future_round", "replay_nonce", "duplicate", "timestamp",
                                     "wrong_recipient"}),
    "mallory": _MALLORY,
}
"""Disjoint groups of reasons the counters are matched in: every kind's reasons fall in exactly one."""

MALLORY_SIGNED = frozenset({"stale_round", "future_round", "wrong_shape", "nan", "huge_norm", "unexpected_payload"})
"""Kinds signed by the admitted key ``mallory``. By reason, a few of its content kinds can land in
the round group (the node moved more than the window on while the message was in flight); by
signer (the status's ``rejects_by_peer``) every one of them must be counted exactly."""

OVERSIZE_BYTES = 64 * 1024 * 1024 + 1


class Forger:
    """Builds forged messages aimed at ``nodes`` (peer ids) of ``federation``."""

    def __init__(self, federation: str, nodes: list[bytes], mallory: Identity, eve: Identity, seed: int = 0) -> None:
        self.federation = federation
        self.nodes = list(nodes)
        self.mallory, self.eve = mallory, eve
        self.rng = np.random.default_rng(seed)
        self.captured: collections.deque = collections.deque(maxlen=2000)   # (t, recipient, raw)
        self.contributions: collections.deque = collections.deque(maxlen=64)
        self.round = 0
        self.node_round: dict[bytes, int] = {}
        """Per node, the highest round it was seen sending in: its own clock, which a lagging node's
        differs from the federation's highest."""
        self.spec: ModelSpec | None = None
        self._oversize: bytes | None = None
        self._forged: set[bytes] = set()
        """Digests of forgeries built from captures: the tap sees them on the wire too and must not take
        a bit-flipped message for a real one (a payload flip of a signature flip is a bad signature)."""

    # ------------------------------------------------------------------ listening (a passive tap)

    def observe(self, key: str, raw: bytes) -> None:
        if "/msg/" not in key or hashlib.sha256(raw).digest() in self._forged:
            return
        try:
            outer = msgpack.unpackb(raw, raw=False, max_array_len=3, max_map_len=0, max_str_len=0, max_ext_len=0)
            h = msgpack.unpackb(outer[0], raw=False, max_ext_len=0)
            msg_type, sender, recipient, rnd, layout = h[1], h[2], h[3], h[5], h[10]
        except Exception:  # noqa: BLE001 - our own forgeries are on the wire too
            return
        if recipient not in self.nodes or sender not in self.nodes:  # only the nodes' own traffic
            return
        self.round = max(self.round, int(rnd))
        self.node_round[sender] = max(self.node_round.get(sender, 0), int(rnd))
        self.captured.append((time.monotonic(), recipient, raw))
        if msg_type == int(MsgType.CONTRIBUTE) and layout:
            self.contributions.append((recipient, raw))
            if self.spec is None:
                self.spec = ModelSpec.from_layout(layout)

    @property
    def ready(self) -> bool:
        return self.spec is not None and len(self.captured) >= 8

    # ------------------------------------------------------------------ building

    def _inbox(self, node: bytes) -> str:
        return keyexpr.inbox(self.federation, node)

    def _target(self) -> bytes:
        return self.nodes[int(self.rng.integers(len(self.nodes)))]

    def _old_capture(self, min_age_s: float = 1.0) -> tuple[bytes, bytes] | None:
        now = time.monotonic()
        for _ in range(8):
            t, recipient, raw = self.captured[int(self.rng.integers(len(self.captured)))]
            if now - t >= min_age_s:
                return recipient, raw
        return None

    def _seal(self, who: Identity, msg_type: MsgType, recipient: bytes, rnd: int, *, arrays=None, spec=None,
              attempt: int | None = None) -> bytes:
        return seal(who, msg_type=msg_type, recipient=recipient, federation=self.federation, round=max(0, rnd),
                    attempt=int(self.rng.integers(1 << 40)) if attempt is None else attempt, arrays=arrays,
                    spec=spec, meta={"d": 4, "u": []}, now_ms=int(time.time() * 1000))

    def _live_round(self, node: bytes) -> int:
        """The round for mallory's attributable kinds aimed at ``node``: two past the highest round
        ``node`` was seen sending in. A node at round ``cur`` checks the content of rounds cur - 1 ..
        cur + 2, and its round only grows, so the message is checked if ``node`` advanced by 0 to 3
        rounds between the tap's capture and the delivery. This narrows the race, it does not remove
        it: the federation runs several rounds a second and the tap lags under the flood, so a few
        of these still arrive outside the window and count as stale. Matching is therefore by signer
        (:data:`MALLORY_SIGNED`)."""
        return self.node_round.get(node, self.round) + 2

    def _model(self, fill: float | None = None) -> dict[str, np.ndarray]:
        assert self.spec is not None
        m = {}
        for name, dtype, shape in self.spec.entries:
            a = self.rng.normal(0, 0.1, size=shape) if fill is None else np.full(shape, fill)
            m[name] = a.astype(np.dtype(dtype).newbyteorder("="))
        return m

    def make(self, kind: str) -> tuple[str, bytes, list[bytes]] | None:
        """One forged message: (key, bytes, the nodes that receive it), or None when not possible yet."""
        made = self._make(kind)
        if made is not None and kind.startswith(("bitflip", "replay")):
            self._forged.add(hashlib.sha256(made[1]).digest())
        return made

    def _make(self, kind: str) -> tuple[str, bytes, list[bytes]] | None:
        rng = self.rng
        node = self._target()
        if kind == "random_bytes":
            return self._inbox(node), os.urandom(int(rng.integers(1, 2048))), [node]
        if kind == "bomb_nesting":
            depth = int(rng.integers(2000, 20_000))
            inner = b"\x91" * depth + b"\xc0"
            if rng.random() < 0.5:  # nested inside a well-formed envelope's header
                inner = msgpack.packb([inner[:MAX_HEADER_BYTES - 16], b"", os.urandom(64)], use_bin_type=True)
            return self._inbox(node), inner, [node]
        if kind == "bomb_length":
            head = [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xf0",
                    b"\x93\xc6\x7f\xff\xff\xff"][int(rng.integers(5))]
            return self._inbox(node), head + os.urandom(int(rng.integers(0, 64))), [node]
        if kind == "oversize_header":
            header = b"\x00" * (MAX_HEADER_BYTES + 1 + int(rng.integers(1024)))
            return self._inbox(node), msgpack.packb([header, b"", os.urandom(64)], use_bin_type=True), [node]
        if kind == "oversize_message":
            if self._oversize is None:
                self._oversize = msgpack.packb([b"", b"\x00" * OVERSIZE_BYTES, b""], use_bin_type=True)
            return self._inbox(node), self._oversize, [node]
        if kind == "unknown_key":
            arrays = self._model() if self.spec is not None and rng.random() < 0.3 else None
            t = MsgType.CONTRIBUTE if arrays is not None else MsgType.COMMIT
            return self._inbox(node), self._seal(self.eve, t, node, self.round, arrays=arrays, spec=self.spec
                                                 if arrays is not None else None), [node]
        if kind in ("stale_round", "future_round"):
            own = self.node_round.get(node, self.round)
            rnd = own - 5 - int(rng.integers(100)) if kind == "stale_round" else \
                self.round + 50 + int(rng.integers(10_000))
            if kind == "stale_round" and rnd < 0:
                return None
            return self._inbox(node), self._seal(self.mallory, MsgType.COMMIT, node, rnd), [node]
        if kind in ("wrong_shape", "nan", "huge_norm"):
            if self.spec is None:
                return None
            if kind == "wrong_shape":
                name, dtype, shape = self.spec.entries[int(rng.integers(len(self.spec.entries)))]
                entries = [(n, d, s) if n != name else (n, d, (s[0] + 1, *s[1:])) for n, d, s in self.spec.entries]
                spec = ModelSpec(tuple(entries))
                arrays = {n: np.zeros(s, dtype=np.dtype(d).newbyteorder("=")) for n, d, s in spec.entries}
            else:
                spec = self.spec
                arrays = self._model()
                first = spec.entries[0][0]
                arrays[first] = arrays[first].copy()
                arrays[first].reshape(-1)[int(rng.integers(arrays[first].size))] = np.nan if kind == "nan" else 1e9
            return self._inbox(node), self._seal(self.mallory, MsgType.CONTRIBUTE, node, self._live_round(node),
                                                 arrays=arrays, spec=spec), [node]
        if kind == "unexpected_payload":
            raw = self._seal(self.mallory, MsgType.COMMIT, node, self._live_round(node), arrays=self._model(0.0),
                             spec=self.spec) \
                if self.spec is not None else None
            return (self._inbox(node), raw, [node]) if raw is not None else None
        # kinds that start from a captured real message
        if not self.captured:
            return None
        if kind == "truncated":
            _, recipient, raw = self.captured[int(rng.integers(len(self.captured)))]
            return self._inbox(recipient), raw[:int(rng.integers(1, len(raw)))], [recipient]
        if kind == "bitflip_signature":
            _, recipient, raw = self.captured[int(rng.integers(len(self.captured)))]
            b = bytearray(raw)
            pos = len(b) - 1 - int(rng.integers(64))
            b[pos] ^= 1 << int(rng.integers(8))
            return self._inbox(recipient), bytes(b), [recipient]
        if kind == "bitflip_payload":
            if not self.contributions:
                return None
            recipient, raw = self.contributions[int(rng.integers(len(self.contributions)))]
            h, p, s = msgpack.unpackb(raw, raw=False)
            p = bytearray(p)
            p[int(rng.integers(len(p)))] ^= 1 << int(rng.integers(8))
            return self._inbox(recipient), msgpack.packb([h, bytes(p), s], use_bin_type=True), [recipient]
        if kind in ("replay", "replay_other_recipient"):
            got = self._old_capture()
            if got is None:
                return None
            recipient, raw = got
            if kind == "replay_other_recipient":
                others = [n for n in self.nodes if n != recipient]
                recipient = others[int(rng.integers(len(others)))]
            return self._inbox(recipient), raw, [recipient]
        raise ValueError(f"unknown kind {kind!r}")


def group_of(kind: str) -> str:
    return next(g for g, reasons in REASON_GROUPS.items() if KINDS[kind] <= reasons | {"banned"}
                and KINDS[kind] & reasons)


def expected_by_group(sent: dict[str, dict[bytes, int]]) -> dict[bytes, dict[str, int]]:
    """Per node, per reason group, how many rejects the forged messages must have caused."""
    out: dict[bytes, dict[str, int]] = collections.defaultdict(lambda: collections.defaultdict(int))
    for kind, per_node in sent.items():
        for node, n in per_node.items():
            out[node][group_of(kind)] += n
    return out


def counted_by_group(rejects: dict[str, int]) -> dict[str, int]:
    """A node's reject counters folded into :data:`REASON_GROUPS`."""
    return {g: sum(int(rejects.get(r, 0)) for r in reasons) for g, reasons in REASON_GROUPS.items()}


__all__ = ["Forger", "KINDS", "MALLORY_SIGNED", "OVERSIZE_BYTES", "REASON_GROUPS", "counted_by_group", "expected_by_group"]
