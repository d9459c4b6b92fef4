"""The testnet's live progress line: content, bars, ETA, refreshing on a terminal, plain lines otherwise."""

from __future__ import annotations

import io

from fednode.testnet.progress import Progress, format_eta


class _Tty(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def test_line_shows_rounds_bars_accuracy_and_eta():
    p = Progress(40, stream=_Tty())
    line = p.line(12.34, [10, 20, 40, 30], [True, True, True, False], [0.91, 0.95, 0.93], 2, 75.0)
    assert line.startswith("[  12.3s] rounds 10/25/40 of 40 ▂▄█x")
    assert "acc med 0.930 min 0.910" in line and "alive 3/4" in line and "restarts 2" in line
    assert line.endswith("ETA 1m15s")
    many = p.line(1.0, [1] * 17, [True] * 17, [], 0, None)  # more than 16 nodes: no per-node bar
    assert "of 40 |" in many and "acc -" in many and many.endswith("ETA -")
    ascii_p = Progress(10, stream=io.StringIO())
    assert "rounds 0/5/10 of 10 _=@" in ascii_p.line(0.0, [0, 5, 10], [True] * 3, [], 0, None)
    assert [format_eta(s) for s in (0, 59.4, 61, 3725)] == ["ETA 0s", "ETA 59s", "ETA 1m01s", "ETA 1h02m"]


def test_eta_from_the_slowest_nodes_rate():
    p = Progress(100, stream=io.StringIO())
    assert p.eta(0.0, 0) is None  # no rate yet
    assert p.eta(10.0, 10) == 90 * 10.0 / 10  # 1 round/s, 90 to go
    assert p.eta(20.0, 30) == 70 * 20.0 / 30
    assert p.eta(25.0, 100) == 0.0


def test_terminal_gets_one_refreshing_line_a_pipe_plain_lines():
    tty = _Tty()
    p = Progress(5, stream=tty)
    for t in range(4):
        p.update(float(t), float(t), [t, t], [True, True], [], 0)
    p.finish()
    out = tty.getvalue()
    assert out.count("\r") == 4 and out.count("\n") == 1 and out.endswith("\n")
    pipe = io.StringIO()
    p = Progress(5, stream=pipe)
    for t in range(0, 12):  # every second for 12 s: plain lines every 5 s
        p.update(float(t), float(t), [t // 3] * 2, [True, True], [0.5], 0)
    p.finish()
    lines = pipe.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in pipe.getvalue() and lines[1].startswith("[   5.0s] rounds 1/1/1 of 5")
    quiet = io.StringIO()
    p = Progress(5, stream=quiet, quiet=True)
    p.update(10.0, 10.0, [1], [True], [], 0)
    assert quiet.getvalue() == ""


def test_memory_of_a_live_process_and_of_none():
    import os
    import subprocess
    import sys

    from fednode.testnet.memory import rss_mb
    rss, peak = rss_mb(os.getpid())
    assert 10 < rss <= peak < 100_000
    child = subprocess.Popen([sys.executable, "-c", "import sys; b = b\"x\" * (200 << 20); sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        import time
        deadline = time.time() + 30
        while time.time() < deadline and (rss_mb(child.pid) or (0, 0))[1] < 200:
            time.sleep(0.1)
        assert rss_mb(child.pid)[1] >= 200  # the 200 MiB it touched
    finally:
        child.communicate(b"", timeout=30)
    assert rss_mb(child.pid) is None  # gone
