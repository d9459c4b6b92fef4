"""Per-destination send lanes (fednode/gossip/transports/send_lanes.py), with a fake put: a blocked
destination holds only its own messages, order per destination, bounded queues, flush and close."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from fednode.gossip.transports.send_lanes import SendLanes


class FakePut:
    """Records (key, data, kw) in put order; keys in ``blocked`` wait until released."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: list[tuple[str, bytes, dict]] = []
        self.blocked: dict[str, threading.Event] = {}

    def __call__(self, key: str, data: bytes, **kw) -> None:
        gate = self.blocked.get(key)
        if gate is not None:
            gate.wait(10)
        with self.lock:
            self.done.append((key, data, kw))

    def of(self, key: str) -> list[bytes]:
        with self.lock:
            return [d for k, d, _ in self.done if k == key]


def wait_until(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return bool(pred())


@contextlib.contextmanager
def stuck_lane(**bounds):
    """Lanes whose destination "b" is stuck inside put with one message ("first"); released after."""
    put = FakePut()
    put.blocked["b"] = threading.Event()
    lanes = SendLanes(put, **bounds)
    try:
        lanes.submit("b", b"first")  # taken by the lane's thread at once, then blocked in put
        assert wait_until(lambda: lanes.pending() == 1 and not lanes._lanes["b"].items)
        yield put, lanes
    finally:
        put.blocked["b"].set()
        lanes.close()


def test_a_blocked_destination_holds_only_its_own_messages():
    put = FakePut()
    put.blocked["b"] = threading.Event()
    lanes = SendLanes(put)
    try:
        t0 = time.monotonic()
        for i in range(5):
            assert lanes.submit("b", b"to-b-%d" % i)
            assert lanes.submit("c", b"to-c-%d" % i, flag=i)
        assert time.monotonic() - t0 < 0.5  # submit never waits for a put
        assert wait_until(lambda: len(put.of("c")) == 5)
        assert put.of("c") == [b"to-c-%d" % i for i in range(5)]  # order kept per destination
        assert [kw for k, _, kw in put.done if k == "c"] == [{"flag": i} for i in range(5)]
        assert put.of("b") == [] and lanes.pending() == 5  # one inside put, four queued
        assert not lanes.flush(0.1)
        put.blocked["b"].set()
        assert lanes.flush(5.0)
        assert put.of("b") == [b"to-b-%d" % i for i in range(5)] and lanes.pending() == 0
    finally:
        put.blocked["b"].set()
        lanes.close()


def test_a_full_queue_drops_its_oldest_messages_and_counts_them():
    with stuck_lane(max_messages=3, max_bytes=1 << 20) as (put, lanes):
        for i in range(6):
            lanes.submit("b", b"m%d" % i)
        assert lanes.dropped == 3  # m0, m1, m2: the oldest of the waiting ones
        put.blocked["b"].set()
        assert lanes.flush(5.0)
        assert put.of("b") == [b"first", b"m3", b"m4", b"m5"]


def test_the_byte_bound_keeps_at_least_the_newest_message():
    with stuck_lane(max_messages=100, max_bytes=250) as (_, lanes):
        for size in (100, 100, 100, 1000):
            lanes.submit("b", bytes(size))
        assert lanes.dropped == 3 and [len(d) for d, _ in lanes._lanes["b"].items] == [1000]


def test_idle_lanes_end_their_threads_and_come_back_on_demand():
    put = FakePut()
    lanes = SendLanes(put, idle_s=0.05)
    try:
        lanes.submit("b", b"1")
        assert wait_until(lambda: "b" not in lanes._lanes)  # delivered, then retired after idle_s
        assert put.of("b") == [b"1"]
        lanes.submit("b", b"2")
        assert wait_until(lambda: put.of("b") == [b"1", b"2"])
    finally:
        lanes.close()


def test_a_failing_put_does_not_end_the_lane():
    calls: list[bytes] = []

    def put(key: str, data: bytes) -> None:
        calls.append(data)
        if data == b"bad":
            raise RuntimeError("link closed")

    lanes = SendLanes(put)
    try:
        for d in (b"bad", b"good"):
            lanes.submit("k", d)
        assert lanes.flush(5.0) and calls == [b"bad", b"good"]
    finally:
        lanes.close()


def test_close_discards_the_queue_refuses_new_messages_and_joins_the_threads():
    put = FakePut()
    put.blocked["b"] = threading.Event()
    lanes = SendLanes(put)
    for i in range(4):
        lanes.submit("b", b"%d" % i)
    lanes.submit("c", b"c")
    assert wait_until(lambda: put.of("c") == [b"c"])
    threads = [lane.thread for lane in lanes._lanes.values() if lane.thread is not None]
    closer = threading.Thread(target=lanes.close, kwargs={"timeout_s": 5.0})
    closer.start()
    assert wait_until(lambda: lanes._closed)
    put.blocked["b"].set()  # as the session's close does for a put stuck on a dead link
    closer.join(10)
    assert all(not t.is_alive() for t in threads)
    assert not lanes.submit("b", b"late") and lanes.pending() == 0
    assert put.of("b") == [b"0"]  # only the one already inside put when close came
    lanes.close()  # idempotent


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        SendLanes(lambda *a, **k: None, max_messages=0)
    with pytest.raises(ValueError):
        SendLanes(lambda *a, **k: None, idle_s=0)
