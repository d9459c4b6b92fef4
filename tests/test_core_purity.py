"""The protocol core stays pure: no Zenoh/JAX at import time, no pickle/marshal/eval, no msgpack hooks.

Why: the core (security, aggregation, gossip state machine) must be importable and testable
without the transport or the ML stack, and nothing that parses peer bytes may ever turn them
into code or arbitrary objects.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "fednode"
CORE_PACKAGES = ("fednode.security", "fednode.aggregation", "fednode.gossip")
EXCLUDED_PREFIXES = ("fednode.gossip.transports",)
FORBIDDEN_RUNTIME = ("zenoh", "jax", "jaxlib", "libp2p", "trio", "multiaddr")

_IMPORT_SCRIPT = textwrap.dedent("""
    import importlib, pkgutil, sys
    {prelude}
    core, excluded, forbidden = {core!r}, {excluded!r}, {forbidden!r}
    imported = []
    for pkg_name in core:
        pkg = importlib.import_module(pkg_name)
        imported.append(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
            if any(info.name == p or info.name.startswith(p + ".") for p in excluded):
                continue
            importlib.import_module(info.name)
            imported.append(info.name)
    loaded = sorted(m for m in forbidden if m in sys.modules)
    assert not loaded, "core modules pulled in " + ", ".join(loaded)
    print("\\n".join(imported))
""")


def _run_import_check(prelude: str = "", core: tuple[str, ...] = CORE_PACKAGES) -> subprocess.CompletedProcess[str]:
    code = _IMPORT_SCRIPT.format(prelude=prelude, core=core, excluded=EXCLUDED_PREFIXES,
                                 forbidden=FORBIDDEN_RUNTIME)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})


def test_core_imports_without_zenoh_or_jax() -> None:
    res = _run_import_check()
    assert res.returncode == 0, res.stderr[-3000:]
    imported = set(res.stdout.split())
    for must in ("fednode.security.envelope", "fednode.security.identity", "fednode.security.replay",
                 "fednode.security.arrays", "fednode.gossip"):
        assert must in imported, sorted(imported)
    assert not any(m.startswith("fednode.gossip.transports") for m in imported)


def test_import_check_can_fail() -> None:
    fake = "import types; sys.modules['jaxlib'] = types.ModuleType('jaxlib')"
    res = _run_import_check(prelude=fake, core=("fednode.security",))
    assert res.returncode != 0 and "core modules pulled in jaxlib" in res.stderr, res.stderr[-2000:]


NETWORK_STACKS = frozenset({"zenoh", "libp2p", "trio", "multiaddr"})
TRANSPORTS_DIR = PKG / "gossip" / "transports"


def network_imports(source: str) -> list[str]:
    """Top-level names of the network stacks that ``source`` imports (anywhere in the file)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name.split(".")[0] for a in node.names if a.name.split(".")[0] in NETWORK_STACKS]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in NETWORK_STACKS:
            out.append(node.module.split(".")[0])
    return out


def test_only_the_transports_import_zenoh_or_libp2p() -> None:
    offenders = {str(f.relative_to(ROOT)): network_imports(f.read_text(encoding="utf-8"))
                 for f in sorted(PKG.rglob("*.py")) if TRANSPORTS_DIR not in f.parents}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert network_imports("import trio\nfrom libp2p.peer.id import ID\nimport zenoh as z") == ["trio", "libp2p", "zenoh"]


def test_libp2p_settings_and_cli_import_without_the_libp2p_extra() -> None:
    """The CLI must say how to install the extra, so what it imports first cannot need it."""
    block = "import sys; sys.modules.update({m: None for m in ('libp2p', 'trio', 'multiaddr')})"
    mods = ["fednode.cli", "fednode.cli.transports", "fednode.cli.start", "fednode.cli.observe",
            *(f"fednode.gossip.transports.{m}" for m in ("libp2p_settings", "binding", "framing", "membership"))]
    code = f"{block}\n" + "\n".join(f"import {m}" for m in mods) + \
        "\nfrom fednode.gossip.transports.libp2p_settings import libp2p_available\nprint(libp2p_available())"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------------------------------ source scan

BANNED_MODULES = frozenset({"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"})
BANNED_CALLS = frozenset({"eval", "exec"})
MSGPACK_UNPACKERS = frozenset({"unpackb", "unpack", "Unpacker", "loads", "load"})
MSGPACK_HOOKS = frozenset({"ext_hook", "object_hook", "object_pairs_hook", "list_hook"})


def _literal_dict_keys(node: ast.expr) -> set[str] | None:
    """Keys of a literal ``dict(k=...)`` or ``{"k": ...}`` (None when not statically known)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        if all(kw.arg is not None for kw in node.keywords):
            return {kw.arg for kw in node.keywords}  # type: ignore[misc]
    if isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.keys):
        return {k.value for k in node.keys}  # type: ignore[union-attr]
    return None


def find_violations(source: str, filename: str = "<string>") -> list[str]:
    """Every banned import, eval/exec call and hooked msgpack unpack in ``source``."""
    tree = ast.parse(source, filename=filename)
    msgpack_names = {"msgpack"}  # names bound to the msgpack module or its unpack functions
    direct_unpackers: set[str] = set()
    literal_kwargs: dict[str, set[str]] = {}  # module-level NAME = dict(k=...) / {"k": ...}: NAME -> keys
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            keys = _literal_dict_keys(stmt.value)
            if keys is not None:
                literal_kwargs[stmt.targets[0].id] = keys
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "msgpack":
                    msgpack_names.add(alias.asname or "msgpack")
        elif isinstance(node, ast.ImportFrom) and node.module == "msgpack":
            for alias in node.names:
                if alias.name in MSGPACK_UNPACKERS:
                    direct_unpackers.add(alias.asname or alias.name)
    out: list[str] = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            out += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom):
            root = (node.module or "").split(".")[0]
            if root in BANNED_MODULES:
                out.append(f"{where}: from {node.module} import ...")
            out += [f"{where}: import {a.name}" for a in node.names if a.name in BANNED_MODULES]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else None
            if name in BANNED_CALLS or (isinstance(func, ast.Attribute) and func.attr in BANNED_CALLS
                                        and isinstance(func.value, ast.Name) and func.value.id == "builtins"):
                out.append(f"{where}: call to {name or func.attr}")  # type: ignore[union-attr]
            if name == "__import__" or (isinstance(func, ast.Attribute) and func.attr == "import_module"):
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) \
                        and arg.value.split(".")[0] in BANNED_MODULES:
                    out.append(f"{where}: dynamic import of {arg.value}")
            is_unpack = (name in direct_unpackers) or (
                isinstance(func, ast.Attribute) and func.attr in MSGPACK_UNPACKERS
                and isinstance(func.value, ast.Name) and func.value.id in msgpack_names)
            if is_unpack:
                for kw in node.keywords:
                    if kw.arg is None:
                        keys = literal_kwargs.get(kw.value.id) if isinstance(kw.value, ast.Name) else None
                        if keys is None:
                            out.append(f"{where}: msgpack unpack with **kwargs (hooks cannot be ruled out)")
                        else:
                            out += [f"{where}: msgpack unpack with {k}" for k in sorted(keys & MSGPACK_HOOKS)]
                    elif kw.arg in MSGPACK_HOOKS:
                        out.append(f"{where}: msgpack unpack with {kw.arg}")
    return out


def test_no_pickle_eval_or_msgpack_hooks_in_package() -> None:
    files = sorted(PKG.rglob("*.py"))
    assert len(files) >= 5 and (PKG / "security" / "envelope.py") in files
    violations = [v for f in files for v in find_violations(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert violations == []


def test_scanner_flags_bad_sources() -> None:
    bad = {
        "import pickle": 1, "import pickle as p, os": 1, "from pickle import loads": 1, "import cloudpickle": 1,
        "import dill.settings": 1, "import marshal": 1, "import shelve": 1, "from _pickle import Pickler": 1,
        "from multiprocessing import reduction, pickle": 1, "eval('1+1')": 1, "exec('x = 1')": 1,
        "import builtins\nbuiltins.eval('1')": 1, "__import__('pickle')": 1,
        "import importlib\nimportlib.import_module('marshal')": 1,
        "import msgpack\nmsgpack.unpackb(b, ext_hook=f)": 1,
        "import msgpack as mp\nmp.unpackb(b, raw=False, object_hook=f)": 1,
        "from msgpack import unpackb\nunpackb(b, object_pairs_hook=f)": 1,
        "from msgpack import Unpacker as U\nU(list_hook=f)": 1,
        "import msgpack\nmsgpack.unpackb(b, **opts)": 1,
        "import pickle\neval('x')": 2,
        "import msgpack\nL = dict(max_bin_len=1, ext_hook=f)\nmsgpack.unpackb(b, **L)": 1,
        "import msgpack\nL = {'object_hook': f}\nmsgpack.unpackb(b, **L)": 1,
        "import msgpack\ndef g(L):\n    return msgpack.unpackb(b, **L)": 1,
    }
    for src, n in bad.items():
        assert len(find_violations(src)) == n, (src, find_violations(src))
    good = [
        "import msgpack\nmsgpack.unpackb(b, raw=False, strict_map_key=True, max_ext_len=0)",
        "import msgpack\nmsgpack.packb(x, default=f)",  # hooks on the packing side are harmless
        "import msgpack\nL = dict(max_bin_len=1, max_str_len=2)\nmsgpack.unpackb(b, raw=False, **L)",
        "model.eval()", "x = 'import pickle'", "def evaluate(): pass\nevaluate()", "import pickletools_not",
    ]
    for src in good:
        assert find_violations(src) == [], src


# ------------------------------------------------------------------------------------------ layering (issue 13)

def fednode_imports(source: str, module: str) -> set[str]:
    """Every ``fednode...`` module ``source`` imports, at any depth (lazy imports in functions too)."""
    out: set[str] = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "fednode"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against the importing module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] == "fednode":
                out.add(base)
                out |= {f"{base}.{a.name}" for a in node.names}
    return out


def layering_violations(sources: dict[str, str]) -> list[str]:
    """Imports that run against the layering: ``sources`` maps module names to their source text.

    - ``tui/`` depends only on what it shows: the status codec, the transports, identities (no runtime,
      no testnet, no CLI);
    - nothing imports the CLI but the CLI itself and ``fednode/__main__``;
    - the protocol core (gossip, security, aggregation) imports nothing from node, testnet, tui or cli.
    """
    def under(name: str, *prefixes: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    tui_allowed = ("fednode.tui", "fednode.gossip.status", "fednode.gossip.transports", "fednode.security")
    upper = ("fednode.node", "fednode.testnet", "fednode.tui", "fednode.cli")
    out = []
    for module, source in sorted(sources.items()):
        for imp in sorted(fednode_imports(source, module)):
            if imp == "fednode":
                continue
            if under(module, "fednode.tui") and not under(imp, *tui_allowed):
                out.append(f"{module} imports {imp} (tui/ may use only status, transports, security)")
            if under(imp, "fednode.cli") and not under(module, "fednode.cli", "fednode.__main__"):
                out.append(f"{module} imports {imp} (only the entry point may import the CLI)")
            if under(module, "fednode.gossip", "fednode.security", "fednode.aggregation") and under(imp, *upper):
                out.append(f"{module} imports {imp} (the protocol core stays below node/testnet/tui/cli)")
    return out


def _package_sources() -> dict[str, str]:
    sources = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        sources[".".join(parts)] = path.read_text(encoding="utf-8")
    return sources


def test_layering_of_the_package() -> None:
    sources = _package_sources()
    assert "fednode.tui.app" in sources and "fednode.gossip.round" in sources
    assert layering_violations(sources) == []


def test_layering_check_flags_bad_imports() -> None:
    bad = {
        "fednode.tui.app": "def f():\n    from fednode.node.status import StatusVerifier\n",
        "fednode.tui.model": "from ..node import runtime\n",
        "fednode.testnet.launcher": "import fednode.cli.start\n",
        "fednode.gossip.round": "from fednode.testnet.simulator import Simulator\n",
        "fednode.security.envelope": "from fednode.tui import model\n",
        "fednode.aggregation.mixing": "from fednode.node.config import NodeConfig\n",
    }
    found = layering_violations(bad)
    assert {f.split()[0] for f in found} == set(bad), found
    good = {
        "fednode.tui.app": "from fednode.gossip.status import StatusVerifier\n"
                           "from fednode.gossip.transports.zenoh_transport import ZenohObserver\n",
        "fednode.__main__": "from fednode.cli import main\n",
        "fednode.cli.start": "from fednode.node.runtime import NodeRuntime\nfrom fednode.cli.common import die\n",
        "fednode.node.runtime": "from fednode.gossip.round import GossipNode\n",
    }
    assert layering_violations(good) == []
