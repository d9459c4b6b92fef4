"""`fednode router`: a real Zenoh router (loopback only), its link log, TLS with a self-signed cert, busy ports."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import subprocess
import sys
import threading
import time

import pytest
import zenoh

from fednode.gossip.transports.zenoh_router import RouterSettings, ZenohRouter
from fednode.gossip.transports.zenoh_transport import TransportError

pytestmark = pytest.mark.zenoh


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _self_signed(tmp_path):
    """A throwaway CA and a leaf certificate for localhost signed by it (rustls refuses a CA as a leaf)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, issuer, pub, signer, ca: bool):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fednode test CA")])
    ca = build(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    leaf = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), ca_name, key.public_key(),
                 ca_key, False)
    ca_path, cert_path, key_path = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def _client(endpoint: str, ca=None) -> zenoh.Config:
    conf = zenoh.Config()
    conf.insert_json5("mode", '"client"')
    conf.insert_json5("connect/endpoints", json.dumps([endpoint]))
    conf.insert_json5("scouting/multicast/enabled", "false")
    if ca is not None:
        conf.insert_json5("transport/link/tls/root_ca_certificate", json.dumps(str(ca)))
    return conf


def _wait(cond, timeout=10.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_router_over_tls_relays_between_clients_and_logs_links(tmp_path, caplog):
    ca, cert, key = _self_signed(tmp_path)
    ep = f"tls/localhost:{_free_port()}"
    got = threading.Event()
    caplog.set_level("INFO", logger="fednode.router")
    with ZenohRouter(RouterSettings(listen=[ep], tls_certificate=cert, tls_private_key=key)) as router:
        with zenoh.open(_client(ep, ca)) as a, zenoh.open(_client(ep, ca)) as b:
            sub = a.declare_subscriber("fednode-test/x", lambda s: got.set())
            assert _wait(lambda: sum(1 for w in router.peers().values() if w == "client") == 2)
            for _ in range(50):
                b.put("fednode-test/x", b"hello")
                if got.wait(0.1):
                    break
            sub.undeclare()
        assert got.is_set()
        assert _wait(lambda: not router.peers())
    up = [r.message for r in caplog.records if "link up: client" in r.message]
    down = [r.message for r in caplog.records if "link down: client" in r.message]
    assert len(up) == 2 and len(down) == 2


def test_router_endpoint_in_use_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(TransportError, match="already in use"):
            RouterSettings(listen=[f"tcp/127.0.0.1:{port}"]).preflight()
        r = subprocess.run([sys.executable, "-m", "fednode", "router", "--listen", f"tcp/127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"fednode: error: router listen endpoint tcp/127.0.0.1:{port} is already in use"


@pytest.mark.parametrize("kw, words", [
    ({"listen": []}, "at least one"), ({"listen": ["tls/127.0.0.1:7999"]}, "--tls-cert"),
    ({"listen": ["tcp/127.0.0.1"]}, "malformed"), ({"tls_certificate": "/nonexistent.pem"}, "does not exist"),
])
def test_router_settings_errors(kw, words):
    with pytest.raises(TransportError, match=words):
        RouterSettings(**kw).check()
