"""`fednode dashboard`: a read-only Textual view of a live federation.

The app never touches the network itself. A :class:`StatusFeed` (Zenoh observer + signature
verification, on Zenoh's threads) puts verified statuses, rejects and membership changes on a
thread-safe queue; the app drains that queue on a timer, so a slow network never blocks the UI and
a slow UI never blocks Zenoh. Everything shown comes from :class:`FederationView`.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, Input, RichLog, Static, TabbedContent, TabPane

from fednode.tui.model import FederationView, PeerView

SPARK = "▁▂▃▄▅▆▇█"
SHORT_STATE = {"training": "training", "aggregating": "aggregating", "committing": "committing",
               "syncing": "syncing", "idle": "idle", "done": "done", "budget_exhausted": "no budget", "gone": "gone"}
SORT_KEYS = ("peer", "state", "round", "accuracy", "epsilon", "last_seen")
HELP = ("q quit · p pause/resume · s screenshot (SVG) · / filter · o sort column · "
        "tab switch pane · arrows select a peer")


def sparkline(values: list[float], width: int, lo: float | None = None, hi: float | None = None) -> str:
    """The last ``width`` values as block characters scaled to [lo, hi] (auto when None)."""
    vals = values[-width:] if width > 0 else []
    if not vals:
        return ""
    lo = min(vals) if lo is None else lo
    hi = max(vals) if hi is None else hi
    span = (hi - lo) or 1.0
    return "".join(SPARK[max(0, min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5)))] for v in vals)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _bytes(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1000:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def _ago(t: float, now: float) -> str:
    if not t:
        return "-"
    d = max(0.0, now - t)
    return f"{d:.0f}s" if d < 100 else f"{d / 60:.0f}m"


class StatusFeed:
    """Zenoh observer + verification; hands results to a queue. Runs on Zenoh's threads."""

    def __init__(self, settings: Any, allow_list: Any, out: queue.SimpleQueue) -> None:
        from fednode.gossip.transports.zenoh_observer import ZenohObserver
        from fednode.gossip.status import StatusVerifier
        self._out = out
        self._verifier = StatusVerifier(settings.federation, allow_list)
        self._lock = threading.Lock()
        self._last_seen: dict[bytes, bytes] = {}
        self._admitted = set(allow_list.peer_ids)
        self._observer = ZenohObserver(settings, on_status=self._on_status, on_peer_joined=self._joined,
                                       on_peer_left=self._left)

    def _joined(self, peer: bytes) -> None:
        if peer in self._admitted:  # anyone can declare a liveliness token; only admitted peers get a row
            self._out.put(("joined", peer, time.time()))

    def _left(self, peer: bytes) -> None:
        if peer in self._admitted:
            self._out.put(("left", peer, time.time()))

    def start(self) -> None:
        self._observer.start()
        threading.Thread(target=self._initial_snapshot, name="dashboard-snapshot", daemon=True).start()

    def _initial_snapshot(self) -> None:
        """Ask every live peer for its last status at once: first data without waiting for a round."""
        try:
            for peer, data in self._observer.snapshot(timeout_s=1.5).items():
                self._on_status(peer, data)
        except Exception:  # noqa: BLE001 - the subscription still feeds us
            pass

    def _on_status(self, key_peer: bytes, data: bytes) -> None:
        digest = hashlib.sha256(data).digest()
        with self._lock:  # the replay guard is not thread-safe; callbacks can overlap
            if self._last_seen.get(key_peer) == digest:
                return  # the same status twice (subscription and start-up query): not a replay attack
            self._last_seen[key_peer] = digest
            result = self._verifier.verify(data)
        now = time.time()
        if hasattr(result, "reason"):
            self._out.put(("rejected", result.reason, now))
        elif result.sender != key_peer:
            self._out.put(("rejected", "status_under_another_key", now))
        else:
            self._out.put(("status", result.sender, result.meta, now))

    def live_peers(self) -> set[bytes]:
        return self._observer.live_peers()

    def close(self) -> None:
        self._observer.close()


class DashboardApp(App):
    """Peers table, charts, event log, neighbourhoods and a detail pane for one federation."""

    TITLE = "fednode dashboard"
    CSS = """
    #peers { height: 45%; min-height: 5; }
    #filter { height: 3; display: none; }
    #filter.visible { display: block; }
    TabbedContent { height: 1fr; }
    .pane-text { width: 100%; text-wrap: nowrap; text-overflow: ellipsis; }
    RichLog { height: 1fr; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("p", "pause", "Pause"),
        Binding("s", "screenshot", "Screenshot"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("o", "sort", "Sort"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("escape", "close_filter", "Close filter", show=False),
    ]

    def __init__(self, federation: str, *, feed_factory: Callable[[queue.SimpleQueue], Any] | None = None,
                 focus: bytes | None = None, screenshot_dir: Path | str = ".", poll_s: float = 0.1,
                 subtitle: str = "") -> None:
        super().__init__()
        self.view = FederationView(federation, focus=focus)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._feed_factory = feed_factory
        self.feed: Any = None
        self.paused = False
        self.sort_key = "peer"
        self.text_filter = ""
        self.screenshot_dir = Path(screenshot_dir)
        self._poll_s = poll_s
        self.started_at = time.time()
        self.sub_title = subtitle or f"federation {federation}"
        self._selected: bytes | None = focus
        self._wide = True
        self._logged = 0
        self._dirty = False
        self._min_render_s = 0.25
        self.render_ms_max = 0.0
        self.last_refresh_at = 0.0

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        yield Input(placeholder="filter by peer, state or round; Enter to apply, Esc to close", id="filter")
        yield DataTable(id="peers", cursor_type="row", zebra_stripes=True)
        with TabbedContent(initial="events"):
            with TabPane("Events", id="events"):
                yield RichLog(id="log", max_lines=1000, wrap=False, markup=False)
            with TabPane("Charts", id="charts"):
                with Vertical():
                    yield Static(id="chart-text", classes="pane-text")
            with TabPane("Neighbourhood", id="neigh"):
                yield Static(id="neigh-text", classes="pane-text")
            with TabPane("Peer", id="detail"):
                yield Static(id="detail-text", classes="pane-text")
        yield Footer()

    def on_mount(self) -> None:
        self._setup_columns()
        self.query_one("#filter", Input).disabled = True  # hidden until "/": never takes the keys
        self.query_one("#peers", DataTable).focus()
        if self._feed_factory is not None:
            self.feed = self._feed_factory(self.inbox)
            threading.Thread(target=self._start_feed, name="dashboard-feed", daemon=True).start()
        self.set_interval(self._poll_s, self._drain)
        self._refresh()

    def _start_feed(self) -> None:
        try:
            self.feed.start()
        except Exception as exc:  # noqa: BLE001 - show it, do not crash the UI
            self.inbox.put(("error", str(exc), time.time()))

    def on_unmount(self) -> None:
        if self.feed is not None:
            self.feed.close()

    def on_resize(self, event) -> None:
        wide = event.size.width >= 110
        if wide != self._wide:
            self._setup_columns(wide)
            self._refresh()

    def _setup_columns(self, wide: bool | None = None) -> None:
        self._wide = self.size.width >= 110 if wide is None else wide
        table = self.query_one("#peers", DataTable)
        table.clear(columns=True)
        cols = [("peer", 12), ("state", 11), ("round", 5), ("acc", 6), ("loss", 6), ("eps", 6), ("nbrs", 4)]
        if self._wide:
            cols += [("in", 7), ("out", 7)]
        cols += [("rej", 4), ("seen", 5)]
        for name, width in cols:
            table.add_column(name, width=width, key=name)

    # ------------------------------------------------------------------ data in

    def _drain(self) -> None:
        changed = False
        for _ in range(10_000):
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
            changed = True
            kind = item[0]
            if kind == "status":
                self.view.status(item[1], item[2], item[3])
            elif kind == "joined":
                self.view.peer_joined(item[1], item[2])
            elif kind == "left":
                self.view.peer_left(item[1], item[2])
            elif kind == "rejected":
                self.view.status_rejected(item[1], item[2])
            elif kind == "error":
                self.view._event("error", "-", item[1], item[2])
            elif kind == "note":
                self.view._event("note", "-", item[1], item[2])
        if changed:
            self._dirty = True
        # at most a few renders a second, however fast statuses arrive: key presses stay prompt
        if self._dirty and not self.paused and time.time() - self.last_refresh_at >= self._min_render_s:
            self._dirty = False
            self._refresh()

    # ------------------------------------------------------------------ rendering

    def _refresh(self) -> None:
        t0 = time.perf_counter()
        try:
            self._render_all()
        except NoMatches:  # the app is shutting down: its widgets are already gone
            pass
        self.render_ms_max = max(self.render_ms_max, (time.perf_counter() - t0) * 1000)

    def _render_all(self) -> None:
        now = time.time()
        self.last_refresh_at = now
        self._render_table(now)
        self._render_log()  # the log only appends what is new
        active = self.query_one(TabbedContent).active
        if active == "charts":
            self._render_charts()
        elif active == "neigh":
            self._render_neighbourhood()
        elif active == "detail":
            self._render_detail(now)
        rejected = self.view.rejected_statuses
        self.sub_title = (f"{self.view.federation} · {self.view.live_count()} live / {len(self.view.peers)} peers"
                          f" · round {self.view.current_round()} · rejected statuses {rejected}"
                          + (" · PAUSED" if self.paused else ""))

    def _render_table(self, now: float) -> None:
        table = self.query_one("#peers", DataTable)
        rows = self.view.rows(self.sort_key, self.text_filter)
        keep = table.cursor_row
        table.clear()
        for v in rows:
            cells = [Text(v.short, style="bold" if v.peer == self.view.focus else ""),
                     Text(SHORT_STATE.get(v.shown_state, v.shown_state[:11]),
                          style="red" if v.shown_state in ("gone", "budget_exhausted") else ""),
                     str(v.round), _fmt(v.accuracy), _fmt(v.loss), _fmt(v.epsilon, 2), str(len(v.neighbours))]
            if self._wide:
                cells += [_bytes(v.bytes_in), _bytes(v.bytes_out)]
            cells += [str(v.rejects), _ago(v.last_seen, now)]
            table.add_row(*cells, key=v.peer.hex())
        if rows:
            target = 0
            if self._selected is not None:
                for i, v in enumerate(rows):
                    if v.peer == self._selected:
                        target = i
            elif keep is not None and 0 <= keep < len(rows):
                target = keep
            table.move_cursor(row=target, animate=False)

    def _render_log(self) -> None:
        log = self.query_one("#log", RichLog)
        fresh = min(len(self.view.events), self.view.events_total - self._logged)
        for e in list(self.view.events)[len(self.view.events) - fresh:] if fresh > 0 else []:
            stamp = time.strftime("%H:%M:%S", time.localtime(e.time))
            style = {"reject": "red", "leave": "yellow", "abort": "yellow", "budget": "magenta",
                     "error": "bold red"}.get(e.kind, "")
            log.write(Text(f"{stamp} {e.peer:<12} {e.kind:<6} {e.text}", style=style))
        self._logged = self.view.events_total

    def _render_charts(self) -> None:
        width = max(8, self.size.width - 32)
        lines = [Text("accuracy per node (by round)", style="bold")]
        for short, vals in self.view.series("accuracy").items():
            lines.append(Text(f"{short:<12} {sparkline(vals, width, 0.0, 1.0):<{width}} {_fmt(vals[-1] if vals else None)}"))
        lines.append(Text("loss per node", style="bold"))
        for short, vals in self.view.series("loss").items():
            lines.append(Text(f"{short:<12} {sparkline(vals, width, 0.0):<{width}} {_fmt(vals[-1] if vals else None)}"))
        spread = self.view.spread_by_round()
        lines.append(Text("disagreement (accuracy spread max-min across nodes)", style="bold"))
        lines.append(Text(f"{'all':<12} {sparkline(spread, width, 0.0):<{width}} {_fmt(spread[-1] if spread else None)}"))
        lines.append(Text("round duration (s)", style="bold"))
        for short, vals in self.view.series("duration").items():
            lines.append(Text(f"{short:<12} {sparkline(vals, width, 0.0):<{width}} {_fmt(vals[-1] if vals else None, 2)}"))
        self.query_one("#chart-text", Static).update(Text("\n").join(lines))

    def _render_neighbourhood(self) -> None:
        lines = [Text(f"round {self.view.current_round()}: who averaged with whom (last completed round)",
                      style="bold")]
        for short, nbrs in self.view.neighbourhoods():
            lines.append(Text(f"{short} ↔ {', '.join(nbrs) if nbrs else '(alone)'}"))
        self.query_one("#neigh-text", Static).update(Text("\n").join(lines))

    def _render_detail(self, now: float) -> None:
        v: PeerView | None = self.view.peers.get(self._selected) if self._selected else None
        if v is None:
            rows = self.view.rows(self.sort_key, self.text_filter)
            v = rows[0] if rows else None
        if v is None:
            self.query_one("#detail-text", Static).update("no peer yet")
            return
        f = v.fields
        lines = [f"peer {v.peer.hex()}", f"state {v.shown_state} · round {v.round} · last seen {_ago(v.last_seen, now)}",
                 f"accuracy {_fmt(v.accuracy)} · loss {_fmt(v.loss)} · epsilon {_fmt(v.epsilon)}"
                 f" (delta {f.get('dp_delta')}, budget {f.get('dp_budget')})",
                 f"neighbours {', '.join(v.neighbours) or '-'}",
                 f"bytes in {_bytes(v.bytes_in)} · out {_bytes(v.bytes_out)} · secure aggregation {v.secure_aggregation}",
                 f"rejects {f.get('rejects', {})}", f"aborts {v.aborts} · retries {v.retries}",
                 "last round timings " + " · ".join(f"{k} {v:.3f}s" for k, v in (f.get("timings") or {}).items()
                                                   if isinstance(v, (int, float))),
                 f"task {f.get('task')} · restarts {f.get('restarts')}"]
        self.query_one("#detail-text", Static).update("\n".join(lines))

    # ------------------------------------------------------------------ interaction

    def on_tabbed_content_tab_activated(self, event) -> None:
        self._refresh()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value:
            self._selected = bytes.fromhex(event.row_key.value)
            try:
                self._render_detail(time.time())
            except NoMatches:
                pass

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        name = str(event.column_key.value)
        mapping = {"peer": "peer", "state": "state", "round": "round", "acc": "accuracy", "eps": "epsilon",
                   "seen": "last_seen"}
        if name in mapping:
            self.sort_key = mapping[name]
            self._refresh()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.notify("paused: data keeps arriving, display frozen" if self.paused else "resumed")
        self._refresh()

    def action_sort(self) -> None:
        self.last_action_at = time.perf_counter()
        self.sort_key = SORT_KEYS[(SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)]
        self.notify(f"sorted by {self.sort_key}")
        self._refresh()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.disabled = False
        box.add_class("visible")
        box.focus()

    def action_close_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.remove_class("visible")
        box.disabled = True
        self.query_one("#peers", DataTable).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.text_filter = event.value
        self._refresh()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_close_filter()

    def action_screenshot(self) -> None:
        self.screenshot_dir.mkdir(parents=True, exist_ok=True)
        path = self.save_screenshot(path=str(self.screenshot_dir))
        self.notify(f"screenshot saved: {path}")

    def action_help(self) -> None:
        self.notify(HELP, title="keys", timeout=8)


def run_dashboard(settings: Any, allow_list: Any, *, focus: bytes | None = None, subtitle: str = "",
                  screenshot_dir: Path | str = ".") -> None:
    """Open the dashboard over the federation ``settings`` describes (blocks until the user quits)."""
    app = DashboardApp(settings.federation, feed_factory=lambda q: StatusFeed(settings, allow_list, q),
                       focus=focus, subtitle=subtitle, screenshot_dir=screenshot_dir)
    app.run()
