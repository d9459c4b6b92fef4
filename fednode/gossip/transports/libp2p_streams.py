"""libp2p plumbing shared by the transport and the one-shot observer: hosts, frame I/O, queries.

Every host is created with Noise only (py-libp2p's defaults also offer plaintext and secio) and
yamux. Writes go out in 64 KiB chunks under a deadline (a single multi-megabyte write stalls
py-libp2p's yamux); reads run under a per-read deadline, so a silent peer ends the stream.
"""

from __future__ import annotations

import logging
import secrets

import multiaddr
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.network.config import ConnectionConfig
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID, Transport as NoiseTransport

from fednode.gossip.transports import binding, framing
from fednode.gossip.transports.framing import FrameError, Kind
from fednode.gossip.transports.libp2p_settings import MULTIADDR, check_multiaddr

logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # dial failures while peers restart are expected

MEMBER_PROTOCOL = "/fednode/member/1.0.0"
QUERY_PROTOCOL = "/fednode/query/1.0.0"
WRITE_CHUNK = 1 << 16
MIN_WRITE_RATE = 1 << 20
"""A frame write times out after lease + size / 1 MiB/s: only a hung peer is that slow on TCP."""


def new_host_for(key_pair, listen: list[str]):
    noise = NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)
    # the auto-connector re-dials peerstore entries to keep 100+ connections: membership dials itself
    quiet = ConnectionConfig(auto_connect_interval=3600.0)
    return new_host(key_pair=key_pair, sec_opt={NOISE_ID: noise}, muxer_opt=create_yamux_muxer_option(),
                    listen_addrs=[multiaddr.Multiaddr(a) for a in listen], connection_config=quiet)


async def write_frame(stream, kind: Kind, payload: bytes, max_bytes: int, timeout_s: float) -> None:
    data = framing.encode(kind, payload, framing.limit_for(kind, max_bytes))
    with trio.fail_after(timeout_s + len(data) / MIN_WRITE_RATE):
        for i in range(0, len(data), WRITE_CHUNK):  # one huge write stalls py-libp2p's yamux
            await stream.write(data[i:i + WRITE_CHUNK])


def reader(stream, timeout_s: float):
    async def read(n: int) -> bytes:
        with trio.fail_after(timeout_s):
            return await stream.read(n)
    return read


async def discard(stream, *, reset: bool) -> None:
    with trio.move_on_after(1.0) as scope:
        scope.shield = True
        try:
            await (stream.reset() if reset else stream.close())
        except Exception:  # noqa: BLE001 - already closed or broken
            pass


async def query(host, peer: ID, addrs: list[str], what: str, max_bytes: int, timeout_s: float) -> bytes:
    """One request on the query protocol; the reply payload (b"" when the peer has nothing)."""
    await host.connect(PeerInfo(peer, [multiaddr.Multiaddr(a) for a in addrs]))
    stream = await host.new_stream(peer, [QUERY_PROTOCOL])
    try:
        await write_frame(stream, Kind.QUERY, framing.pack_control({"q": what}), max_bytes, timeout_s)
        frame = await framing.read_frame(reader(stream, timeout_s), max_bytes)
        if frame is None or frame.kind != Kind.REPLY:
            raise FrameError("malformed", "no REPLY on the query stream")
        return frame.payload
    finally:
        await discard(stream, reset=False)




async def query_all(host, targets: list[tuple[str, list[str]]], what: str, max_bytes: int,
                    timeout_s: float) -> list[bytes]:
    """The non-empty replies of every (libp2p id, addresses) target to ``what`` within ``timeout_s``."""
    out: list[bytes] = []

    async def one(lp: str, addrs: list[str]) -> None:
        try:
            data = await query(host, ID.from_base58(lp), addrs, what, max_bytes, timeout_s)
        except Exception as exc:  # noqa: BLE001 - an unreachable peer answers nothing
            logging.getLogger("fednode.transport").debug("%s query to %s failed: %s", what, lp, exc)
            return
        if data:
            out.append(data)

    with trio.move_on_after(max(0.05, timeout_s)):
        async with trio.open_nursery() as nursery:
            for lp, addrs in targets:
                nursery.start_soon(one, lp, addrs)
    return out


def split_peer_addr(addr: str) -> tuple[str, str]:
    """(transport address, libp2p id) of ``/ip4/H/tcp/P/p2p/ID``."""
    base, _, lp = addr.rpartition("/p2p/")
    return base, lp


async def _list_status(bootstrap: list[str], timeout_s: float, max_bytes: int) -> dict[bytes, bytes]:
    sk = Ed25519PrivateKey.new(secrets.token_bytes(32))  # an observer: no member, not on any allow-list
    host = new_host_for(KeyPair(sk, sk.get_public_key()), ["/ip4/127.0.0.1/tcp/0"])
    got: dict[bytes, bytes] = {}
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        todo = {lp: [base] for base, lp in map(split_peer_addr, bootstrap)}
        seen: set[str] = set()
        with trio.move_on_after(timeout_s):
            while todo:
                lp, addrs = todo.popitem()
                seen.add(lp)
                fid = binding.fednode_id_of(lp)
                try:
                    listing = framing.unpack_control(await query(host, ID.from_base58(lp), addrs, "peers",
                                                                 max_bytes, 2.0)).get("p", [])
                    for item in listing if isinstance(listing, list) else []:
                        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) \
                                and item[0] not in seen:
                            todo[item[0]] = [a for a in framing.str_list(item[1], 8) if MULTIADDR.fullmatch(a)]
                    status = await query(host, ID.from_base58(lp), addrs, "status", max_bytes, 2.0)
                except Exception as exc:  # noqa: BLE001 - an unreachable peer is simply not listed
                    logging.getLogger("fednode.transport").debug("status query to %s failed: %s", lp, exc)
                    continue
                if fid is not None and status:
                    got[fid] = status
    return got


def list_status(bootstrap: list[str], timeout_s: float = 3.0,
                max_bytes: int = 64 * 1024 * 1024) -> dict[bytes, bytes]:
    """One-shot ``fednode status`` over libp2p: every reachable member's last signed status (unverified).

    Asks each bootstrap peer for its member list (peer exchange), then every member for its status.
    Runs its own trio loop on the calling thread; the observer host is closed before it returns.
    """
    for a in bootstrap:
        check_multiaddr(a, "bootstrap", need_peer=True)
    return trio.run(_list_status, list(bootstrap), max(0.1, timeout_s), max_bytes)
