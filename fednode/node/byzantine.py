"""The runtime side of Byzantine fault injection: an honest node whose contributions lie.

Set only by ``fednode testnet --byzantine K --attack A`` (config key ``attack``). The round
machine stays honest and untouched: this wrapper sits between it and the transport.

- Plaintext mode: every outgoing CONTRIBUTE is opened (it is our own envelope), its x^{r+1/2}
  replaced by :func:`fednode.node.attacks.apply_attack`, and re-signed with the same header fields
  (round, attempt, recipient, meta) and a fresh nonce. So NaN, Inf and oversize values really go
  out on the wire, with valid signatures, and the attacker's own model stays the honest one.
- Secure aggregation: contributions are masked ring values, so the lie has to be told before
  masking: the local step's result is poisoned, and the round machine then applies the node's
  own update clip (``--clip``) as for any node (docs/security.md: what that bound does and does not
  give).
- ALIE and IPM need the honest mean and spread: the wrapper keeps the contributions the
  neighbours sent this node in the previous round (signature-checked), what any admitted member
  legitimately sees.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import msgpack
import numpy as np

from fednode.node.attacks import ATTACKS, apply_attack
from fednode.security.arrays import Model, ModelSpec, decode_arrays
from fednode.security.envelope import SIG_DOMAIN, MsgType, seal
from fednode.security.identity import AllowList, Identity

log = logging.getLogger("fednode.node")

_KEEP_ROUNDS = 3


class ByzantineInterceptor:
    """Poisons this node's contributions with one attack (see the module docstring)."""

    def __init__(self, attack: str, identity: Identity, allow_list: AllowList, spec: ModelSpec, *,
                 seed: int = 0, scale: float | None = None) -> None:
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
        self.attack = attack
        self.identity = identity
        self.allow_list = allow_list
        self.spec = spec
        self.scale = scale
        self.rng = np.random.default_rng([seed, int.from_bytes(identity.peer_id[:8], "little"), 666])
        self._bases: dict[int, Model] = {}
        self._observed: dict[int, dict[bytes, Model]] = {}
        self._history: list[Model] = []
        self._poisoned: dict[int, Model] = {}
        self.contributions_poisoned = 0

    # ------------------------------------------------------------------ what the member sees

    def note_base(self, rnd: int, model: Mapping[str, np.ndarray]) -> None:
        """x^r of round ``rnd`` (from StartLocalStep)."""
        self._bases[rnd] = {k: np.array(v, copy=True) for k, v in model.items()}
        for old in [r for r in self._bases if r < rnd - _KEEP_ROUNDS]:
            del self._bases[old]

    def observe(self, data: bytes) -> None:
        """Keep a verified plaintext CONTRIBUTE addressed to us (honest statistics for ALIE/IPM)."""
        if self.attack not in ("alie", "ipm"):
            return
        parsed = _parse(data)
        if parsed is None:
            return
        header_bytes, payload, sig, h = parsed
        if h[1] != int(MsgType.CONTRIBUTE) or h[3] != self.identity.peer_id:
            return
        key = self.allow_list.public_key(h[2])
        try:
            if key is None or ModelSpec.from_layout(h[10]) != self.spec:
                return
            key.verify(sig, SIG_DOMAIN + header_bytes)
            arrays = decode_arrays(payload, self.spec)
        except Exception:  # noqa: BLE001 - anything odd is simply not observed
            return
        rnd = int(h[5])
        self._observed.setdefault(rnd, {})[h[2]] = {k: np.array(v) for k, v in arrays.items()}
        for old in [r for r in self._observed if r < rnd - _KEEP_ROUNDS]:
            del self._observed[old]

    def _observed_before(self, rnd: int) -> list[Model]:
        earlier = [r for r in self._observed if r < rnd]
        return list(self._observed[max(earlier)].values()) if earlier else []

    # ------------------------------------------------------------------ lying

    def _poison(self, rnd: int, half: Model) -> Model:
        if rnd not in self._poisoned:
            if not self._history:
                self._history.append({k: np.array(v, copy=True) for k, v in half.items()})
            base = self._bases.get(rnd)
            if base is None:
                base = self._bases[max(self._bases)] if self._bases else half
            self._poisoned = {rnd: apply_attack(self.attack, base=base, half=half,
                                                observed=self._observed_before(rnd), history=self._history,
                                                rng=self.rng, scale=self.scale)}
        return self._poisoned[rnd]

    def rewrite(self, data: bytes) -> bytes:
        """Our outgoing plaintext CONTRIBUTE with the poisoned model, re-signed; anything else unchanged."""
        parsed = _parse(data)
        if parsed is None:
            return data
        _header_bytes, payload, _sig, h = parsed
        if h[1] != int(MsgType.CONTRIBUTE) or h[2] != self.identity.peer_id:
            return data
        try:
            spec = ModelSpec.from_layout(h[10])
            if spec != self.spec:  # a masked ('<u8') contribution: poisoned at the local step instead
                return data
            half = {k: np.array(v) for k, v in decode_arrays(payload, spec).items()}
        except ValueError:
            return data
        poisoned = self._poison(int(h[5]), half)
        self.contributions_poisoned += 1
        return seal(self.identity, msg_type=h[1], recipient=h[3], federation=h[4], round=h[5], attempt=h[6],
                    arrays=poisoned, spec=spec, meta=h[11], now_ms=h[8])

    def poison_step(self, rnd: int, model: Model) -> Model:
        """Secure aggregation: the local step's x^{r+1/2} replaced before the machine clips and masks it."""
        self.contributions_poisoned += 1
        return self._poison(rnd, {k: np.asarray(v) for k, v in model.items()})


def _parse(data: bytes) -> tuple[bytes, bytes, bytes, list] | None:
    try:
        outer = msgpack.unpackb(data, raw=False, max_array_len=3, max_map_len=0, max_str_len=0, max_ext_len=0)
        header_bytes, payload, sig = outer
        h = msgpack.unpackb(header_bytes, raw=False, max_ext_len=0)
        if type(h) is not list or len(h) != 12:
            return None
        return header_bytes, payload, sig, h
    except Exception:  # noqa: BLE001
        return None


__all__ = ["ByzantineInterceptor"]
