"""The dashboard: its data model, its layout at two terminal sizes, and a pilot over a real federation."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from fednode.gossip.transports.zenoh_transport import ZenohSettings, ZenohTransport
from fednode.node.status import seal_status
from fednode.security.identity import Identity
from fednode.tui.app import DashboardApp, StatusFeed, sparkline
from fednode.tui.model import FederationView


def _fields(r: int, **kw) -> dict:
    base = {"state": "training", "round": r, "rounds_completed": r, "accuracy": 0.5 + 0.04 * r, "loss": 1.0 / (r + 1),
            "neighbours": ["a" * 12, "b" * 12], "bytes_in": 1000 * r, "bytes_out": 2000 * r, "rejects": {},
            "aborts": {}, "retries": 0, "timings": {"total": 0.3}, "epsilon": None, "secure_aggregation": "off"}
    base.update(kw)
    return base


# ---------------------------------------------------------------------------- model


def test_view_derives_events_from_counter_changes_and_marks_gone_peers():
    v = FederationView("f")
    p = b"\x01" * 32
    v.peer_joined(p, 1.0)
    v.status(p, _fields(1), 2.0)
    v.status(p, _fields(2, aborts={"too_few_contributions": 1}, retries=2, rejects={"replay_nonce": 3}), 3.0)
    v.status(p, _fields(3, state="budget_exhausted", epsilon=1.5), 4.0)
    kinds = [e.kind for e in v.events]
    assert kinds == ["join", "abort", "retry", "reject", "budget"]
    assert v.peers[p].accuracy_by_round == {0: 0.54, 1: 0.58, 2: 0.62}
    v.peer_left(p, 5.0)
    assert v.peers[p].shown_state == "gone" and v.events[-1].kind == "leave" and v.live_count() == 0
    v.status_rejected("bad_signature")
    assert v.rejected_statuses == 1 and v.reject_reasons == {"bad_signature": 1}


def test_view_sorts_filters_and_measures_spread():
    v = FederationView("f")
    for i, acc in enumerate([0.9, 0.7, 0.8]):
        v.status(bytes([i]) * 32, _fields(4, accuracy=acc), 1.0)
    assert [r.accuracy for r in v.rows("accuracy")] == [0.9, 0.8, 0.7]
    assert [r.short for r in v.rows("peer", "0101")] == ["010101010101"]
    assert v.spread_by_round()[-1] == pytest.approx(0.2)
    assert sparkline([0.0, 0.5, 1.0], 10, 0.0, 1.0) == "▁▅█"


# ---------------------------------------------------------------------------- layout


def _regions_ok(app: DashboardApp) -> None:
    """Top-level widgets lie inside the screen and do not overlap; the table is never cut sideways."""
    screen = app.screen.region
    tops = [w for w in app.screen.children if w.display and w.region.area > 0]
    for w in tops:
        assert screen.contains_region(w.region), (w, w.region, screen)
    for i, a in enumerate(tops):
        for b in tops[i + 1:]:
            assert not a.region.overlaps(b.region), (a, a.region, b, b.region)
    table = app.query_one("#peers")
    assert table.virtual_size.width <= table.scrollable_content_region.width, \
        (table.virtual_size, table.scrollable_content_region)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_layout_fits_80x24_and_160x48(tmp_path, size):
    async def scenario():
        app = DashboardApp("layout")
        async with app.run_test(size=size) as pilot:
            for i in range(8):
                peer = bytes([i + 1]) * 32
                app.inbox.put(("joined", peer, time.time()))
                for r in range(1, 12):
                    app.inbox.put(("status", peer, _fields(r, state="budget_exhausted" if i == 7 else "aggregating",
                                                           epsilon=0.25 * r, bytes_in=10**9, bytes_out=10**9),
                                   time.time()))
            app.inbox.put(("rejected", "bad_signature", time.time()))
            await pilot.pause(0.3)
            _regions_ok(app)
            for tab in ("charts", "neigh", "detail", "events"):
                app.query_one("TabbedContent").active = tab
                await pilot.pause(0.05)
                _regions_ok(app)
            app.save_screenshot(filename=f"dash-{size[0]}x{size[1]}.svg", path=str(tmp_path))
            assert app.view.rejected_statuses == 1 and len(app.view.peers) == 8
            assert "rejected statuses 1" in app.sub_title
    asyncio.run(scenario())
    svg = (tmp_path / f"dash-{size[0]}x{size[1]}.svg").read_text()
    assert len(svg) > 1000
    if size[0] == 80:  # the header's text is longer than 80 columns: cut with an ellipsis, not silently
        assert "…" in svg


def test_keys_pause_sort_filter_and_screenshot(tmp_path):
    async def scenario():
        app = DashboardApp("keys", screenshot_dir=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            for i in range(3):
                app.inbox.put(("status", bytes([i + 1]) * 32, _fields(i + 1), time.time()))
            await pilot.pause(0.3)
            await pilot.press("o")
            assert app.sort_key == "state"
            await pilot.press("p")
            assert app.paused
            app.inbox.put(("status", b"\x09" * 32, _fields(9), time.time()))
            await pilot.pause(0.3)
            assert app.query_one("#peers").row_count == 3  # frozen display
            await pilot.press("p")
            await pilot.pause(0.3)
            assert app.query_one("#peers").row_count == 4
            await pilot.press("slash")
            await pilot.press(*"0303")
            await pilot.pause(0.2)
            assert app.query_one("#peers").row_count == 1
            await pilot.press("escape")
            await pilot.press("s")
            await pilot.pause(0.2)
    asyncio.run(scenario())
    assert list(tmp_path.glob("*.svg"))


# ---------------------------------------------------------------------------- a real federation


@pytest.mark.zenoh
def test_pilot_over_a_real_three_node_federation(tmp_path):
    from tests.test_integration_zenoh import Federation
    name = "tui-live"
    fed = Federation(tmp_path, name, 3, rounds=400, t_hello=1.0, t_agg=1.0, t_commit=0.5, lease_ms=1000)
    name = fed.federation  # with the suffix that keeps concurrent runs apart
    forger = None
    try:
        for k in range(3):
            fed.start(k)
        assert fed.wait(lambda: all(fed.status(k).get("round", 0) >= 1 for k in range(3)), 90), fed.log(0)
        settings = ZenohSettings.loopback(name, os.urandom(32))

        async def scenario():
            app = DashboardApp(name, feed_factory=lambda q: StatusFeed(settings, fed.allow, q))
            assert app.view.first_data_at is None
            async with app.run_test(size=(120, 40)) as pilot:
                t0 = app.started_at  # the app object exists: from here on everything is the dashboard's start

                async def until(pred, timeout):
                    end = time.time() + timeout
                    while time.time() < end:
                        if pred():
                            return True
                        await pilot.pause(0.05)
                    return pred()

                assert await until(lambda: app.view.first_data_at is not None, 2.0), "no data within 2 s"
                first_data = app.view.first_data_at - t0
                assert await until(lambda: app.query_one("#peers").row_count == 3
                                   and all(v.round > 0 for v in app.view.peers.values()), 5.0)
                listed_after = time.time() - t0
                start_rounds = {p: v.round for p, v in app.view.peers.items()}
                assert await until(lambda: all(app.view.peers[p].round > r for p, r in start_rounds.items()), 20)
                # a forged status (signature broken) is counted, never shown
                ident = Identity.load(fed.dirs[0] / "identity.pem")
                forged = bytearray(seal_status(ident, name, 10**6, {"state": "forged", "round": 10**6}))
                forged[-5] ^= 0x01
                nonlocal forger
                forger = ZenohTransport(ZenohSettings.loopback(name, os.urandom(32)), on_message=lambda b: None,
                                        on_peer_joined=lambda p: None, on_peer_left=lambda p: None)
                forger.start()
                await pilot.pause(0.5)
                forger.publish_status(bytes(forged))
                assert await until(lambda: app.view.rejected_statuses >= 1, 5)
                assert all(v.state != "forged" and v.round < 10**6 for v in app.view.peers.values())
                assert app.query_one("#peers").row_count == 3
                # SIGKILL a node: its row turns "gone" within the liveliness lease
                victim = Identity.load(fed.dirs[2] / "identity.pem").peer_id
                fed.procs[2].send_signal(signal.SIGKILL)
                killed = time.time()
                assert await until(lambda: app.view.peers[victim].shown_state == "gone", 1.0 + 2.0)
                gone_after = time.time() - killed
                return first_data, listed_after, gone_after

        first_data, listed_after, gone_after = asyncio.run(scenario())
        print(f"first data {first_data:.2f} s, 3 peers listed {listed_after:.2f} s, gone after {gone_after:.2f} s")
    finally:
        if forger is not None:
            forger.close()
        fed.stop_all()


@pytest.mark.slow
@pytest.mark.zenoh
def test_testnet_with_dashboard_runs_to_the_end(tmp_path):
    """`fednode testnet --tui`: the dashboard (headless here) sees every node of the testnet it runs."""
    from fednode.testnet.launcher import TestnetOptions, run_testnet_with_dashboard
    report = run_testnet_with_dashboard(TestnetOptions(nodes=3, rounds=4, workdir=tmp_path / "tn", t_hello=2.0,
                                                       t_agg=2.0, t_commit=1.0), headless=True,
                                        quit_when_done=True)
    assert report["ok"], report.get("errors")
    assert report["dashboard"]["peers"] == 3 and report["dashboard"]["statuses_seen"] >= 3
    assert report["dashboard"]["rejected_statuses"] == 0
