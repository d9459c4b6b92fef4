"""The launcher's signals: node processes that die with it, and Ctrl-C held off while it cleans up.

A second Ctrl-C (or a SIGTERM) while the nodes stop and the namespaces are removed must not cut the
cleanup short: it would leave namespaces, routers and shims behind until the next ``--netns`` run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

_LIBC = None
if sys.platform.startswith("linux"):
    import ctypes
    _LIBC = ctypes.CDLL(None, use_errno=True)


def node_child_setup(nice: int) -> None:
    """In the forked node, before exec: its niceness, and SIGTERM when the launcher dies (even by
    SIGKILL: PR_SET_PDEATHSIG), so no node outlives a killed launcher or benchmark cell."""
    if nice:
        os.nice(nice)
    if _LIBC is not None:
        _LIBC.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def signals_deferred(say: Callable[[str], None]) -> Iterator[list[int]]:
    """SIGINT and SIGTERM only noted (a list of the signals received) while the block runs; the
    handlers before it are restored after. Signals reach the main thread only: elsewhere a no-op."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def note(signum, frame):
        received.append(signum)
        say("still stopping the nodes and removing what the run created; please wait")

    old = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
