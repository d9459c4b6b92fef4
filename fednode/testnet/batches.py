"""What crosses between the simulator's worker processes (fednode/testnet/parallel.py), one batch per
window and direction: a msgpack table of the messages, then the raw bytes of their payloads.

A message crosses as its envelope header (the bytes and the fields their parse gives) and its raw
payload with the float bounds the sender took of it; the receiving worker rebuilds the
:class:`~fednode.security.codec.LocalEnvelope` a parse and decode would give (read-only views, as a
receiver of :data:`~fednode.security.codec.UNSIGNED` bytes would). Signed envelopes cross as bytes.

The batches go through memory shared by the worker pair: ``SLOTS`` slots per direction. The receiving
worker's nodes read a payload in place (read-only views into the slot, no copy: 40 MB per round and
worker at 1,000 nodes), so a slot is written again only once the receiver has reported it released:
no array made of it is referenced any more (the receiver checks the reference counts of the arrays it
made, which every view of them holds). A batch larger than a slot, or one sent while every slot is
still held, goes through a file in ``/dev/shm`` instead and is copied on arrival.
"""

from __future__ import annotations

import heapq
import itertools
import mmap
import sys
from pathlib import Path

import msgpack
import numpy as np

from fednode.security.arrays import ModelSpec, decode_arrays
from fednode.security.codec import LocalEnvelope, Payload
from fednode.security.envelope import Header, _tuple_new

SLOTS = 12
"""Batches in flight per direction: a contribution is held about two rounds (nine windows) after it arrives."""
SLOT_BYTES = 128 << 20
"""Shared memory per slot (virtual: only the pages written are ever allocated)."""


def shared_regions(pairs: list[tuple[int, int]]) -> dict[tuple[int, int], mmap.mmap]:
    """One anonymous ``MAP_SHARED`` region per (sender, receiver) pair, made before the fork: seen by both."""
    return {pair: mmap.mmap(-1, SLOTS * SLOT_BYTES) for pair in pairs}


class Batches:
    """One worker's side of the batches: what it writes for the others, what it reads of theirs."""

    def __init__(self, me: int, workers: int, shared: dict[tuple[int, int], mmap.mmap], workdir: Path) -> None:
        self.me, self.shared, self.workdir = me, shared, workdir
        self.layouts: dict[bytes, ModelSpec] = {}
        self.busy: list[dict[int, int]] = [{} for _ in range(workers)]
        """Per destination: the slots written (slot -> window) that its worker has not released yet."""
        self.held: list[dict[int, list]] = [{} for _ in range(workers)]
        """Per source: slot -> the arrays the payloads read in place are (views of)."""
        self.in_files = 0
        """Batches this worker sent through a file."""

    def send(self, dest: int, k: int, batch: list) -> tuple[int, int, int]:
        """Write window ``k``'s batch for ``dest``: (slot or -1 for a file, bytes of the table, bytes in all)."""
        payload_at: dict[int, tuple[int, int, dict]] = {}
        chunks: list = []
        offset = 0
        layouts: dict[int, int] = {}
        layout_table: list = []
        messages = []
        for at, target, data in batch:
            if type(data) is not LocalEnvelope:  # real envelope bytes (signed mode): opened by the receiver
                messages.append((at, target, bytes(data)))
                continue
            header = data.header
            spec = header.layout
            li = layouts.get(id(spec))
            if li is None:
                li = layouts[id(spec)] = len(layout_table)
                layout_table.append(spec.to_layout())
            where = None
            if data.payload is not None:  # each payload once, however many of the batch's messages carry it
                where = payload_at.get(id(data.payload))
                if where is None:
                    arrays = data.payload.arrays
                    parts = [memoryview(np.ascontiguousarray(arrays[name])).cast("B") for name in spec.names]
                    size = sum(p.nbytes for p in parts)
                    # the sender's float bounds go along: the receiving worker need not take them again
                    where = payload_at[id(data.payload)] = (offset, size, data.payload.bounds())
                    chunks.extend(parts)
                    offset += size
            messages.append((at, target, data.header_bytes, header[:10], li, header.meta, where))
        table = msgpack.packb((layout_table, messages), use_bin_type=True)
        total = len(table) + offset
        busy = self.busy[dest]
        free = [s for s in range(SLOTS) if s not in busy]
        if total > SLOT_BYTES or not free:  # a file instead (tmpfs where there is one), read by a copy
            with open(self.workdir / f"w{k}-{self.me}-{dest}", "wb") as f:
                f.write(table)
                for part in chunks:
                    f.write(part)
            self.in_files += 1
            return -1, len(table), total
        slot = free[0]
        busy[slot] = k
        region = self.shared[(self.me, dest)]
        pos = slot * SLOT_BYTES
        region[pos:pos + len(table)] = table
        pos += len(table)
        for part in chunks:
            region[pos:pos + part.nbytes] = part
            pos += part.nbytes
        return slot, len(table), total

    def released(self, src: int) -> int:
        """The bit mask of the slots of ``src`` this worker no longer reads (every array made of them is gone)."""
        held = self.held[src]
        for slot, arrays in list(held.items()):
            arrays[:] = [a for a in arrays if sys.getrefcount(a) > 3]  # the list, a, getrefcount's argument
            if not arrays:
                del held[slot]
        return sum(1 << s for s in range(SLOTS) if s not in held)

    def note_released(self, dest: int, mask: int, k: int) -> None:
        """``dest``'s mask of window ``k``: it was taken before it read window k's batch, so a slot written
        at k is not free yet whatever the mask says."""
        busy = self.busy[dest]
        for s in [s for s, written in busy.items() if mask >> s & 1 and written < k]:
            del busy[s]

    def receive(self, src: int, k: int, slot: int, table_len: int, total: int, queue: list,
                seq: itertools.count) -> None:
        """Queue ``src``'s batch of window ``k`` in ``queue`` (the simulator's message heap)."""
        if slot < 0:
            path = self.workdir / f"w{k}-{src}-{self.me}"
            self._unpack(memoryview(path.read_bytes()), table_len, None, queue, seq)
            path.unlink()
            return
        start = slot * SLOT_BYTES
        arrays: list = []
        self.held[src][slot] = arrays
        self._unpack(memoryview(self.shared[(src, self.me)]).toreadonly()[start:start + total], table_len, arrays,
                     queue, seq)

    def _unpack(self, view: memoryview, table_len: int, held: list | None, queue: list, seq: itertools.count
                ) -> None:
        """The batch's messages into the queue; payloads read in place when ``held`` collects the arrays made
        of them (a slot), else copied (a file's bytes)."""
        layout_table, messages = msgpack.unpackb(view[:table_len], raw=False, use_list=True)
        specs = []
        for layout in layout_table:
            key = msgpack.packb(layout)
            spec = self.layouts.get(key)
            if spec is None:
                spec = self.layouts[key] = ModelSpec.from_layout(layout)
            specs.append(spec)
        payloads: dict[int, Payload] = {}
        base = table_len
        push = heapq.heappush
        for item in messages:
            if len(item) == 3:
                at, target, data = item
            else:
                at, target, header_bytes, fields, li, meta, where = item
                spec = specs[li]
                payload = None
                if where is not None:
                    offset, size, bounds = where
                    payload = payloads.get(offset)
                    if payload is None:
                        raw = view[base + offset:base + offset + size]
                        arrays = decode_arrays(raw if held is not None else bytes(raw), spec)
                        if held is not None:  # numpy's own buffer arrays, which every view of them refers to
                            held.extend(a.base if isinstance(a.base, np.ndarray) else a for a in arrays.values())
                        payload = payloads[offset] = Payload(arrays, size,
                                                             {name: (hi, lo) for name, (hi, lo) in bounds.items()})
                data = LocalEnvelope(_tuple_new(Header, (*fields, spec, meta)), header_bytes, payload)
            push(queue, (at, next(seq), target, ("msg", data)))


__all__ = ["Batches", "SLOTS", "SLOT_BYTES", "shared_regions"]
