"""A raw Zenoh publisher for adversarial tests and benchmarks: arbitrary bytes on a federation's keys.

``benchmarks/bench_forgery.py`` floods live nodes with it from a separate process. It is what any
host on the same Zenoh network can do: nothing in fednode authenticates the transport, so every
defence is in the envelope verification the receivers run. It never declares a liveliness token
unless asked (``declare_token``, for fake-membership floods) and puts with blocking congestion
control, so every forged message is really delivered and the receivers' reject counters can be
matched to the number sent.
"""

from __future__ import annotations

import zenoh

from fednode.gossip.transports.zenoh_transport import _PassiveSession


class ZenohInjector(_PassiveSession):
    """Publishes raw bytes on any key under the federation's root."""

    def start(self) -> None:
        self._open(lambda session: [])
        self.sent = 0

    def put(self, key: str, data: bytes) -> None:
        session = self._session
        if session is None:
            raise RuntimeError("injector is not started")
        session.put(key, data, congestion_control=zenoh.CongestionControl.BLOCK)
        self.sent += 1

    def query(self, key: str, timeout_s: float = 0.5) -> int:
        """A get on ``key``; the number of replies (status queryables answer these)."""
        session = self._session
        if session is None:
            raise RuntimeError("injector is not started")
        return sum(1 for r in session.get(key, timeout=timeout_s) if r.ok is not None)

    def declare_token(self, key: str) -> None:
        """A liveliness token on ``key`` (undeclared on close)."""
        session = self._session
        if session is None:
            raise RuntimeError("injector is not started")
        self._declared.append(session.liveliness().declare_token(key))


__all__ = ["ZenohInjector"]
