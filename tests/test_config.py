"""Node configuration: TOML + flags, validation with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fednode.node.config import ConfigError, NodeConfig


def test_toml_then_flags(tmp_path):
    p = tmp_path / "n.toml"
    p.write_text('federation = "lab"\nrounds = 5\nlisten = ["tcp/127.0.0.1:0"]\ninterface = "lo"\n')
    cfg = NodeConfig.from_sources(p, {"rounds": 9, "task": None})
    assert cfg.federation == "lab" and cfg.rounds == 9 and cfg.task == "digits" and cfg.interface == "lo"
    again = NodeConfig.from_sources(_write(tmp_path / "again.toml", cfg.to_toml()), {})
    assert again == cfg


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


@pytest.mark.parametrize("overrides, message", [
    ({"federation": "a/b"}, "federation id"),
    ({"split": "weird"}, "split"),
    ({"node_index": 3, "node_count": 2}, "outside"),
    ({"rounds": 0}, "rounds"),
    ({"listen": ["127.0.0.1:80"]}, "endpoint"),
    ({"mode": "client"}, "router"),
    ({"aggregator": "mean"}, "aggregator"),
])
def test_invalid_values_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        NodeConfig.from_sources(None, overrides)


def test_unknown_toml_key_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        NodeConfig.from_sources(_write(tmp_path / "a.toml", "colour = 1\n"), {})
    with pytest.raises(ConfigError, match="not valid TOML"):
        NodeConfig.from_sources(_write(tmp_path / "b.toml", "x = = 1\n"), {})
    with pytest.raises(ConfigError, match="cannot read"):
        NodeConfig.from_sources(tmp_path / "missing.toml", {})
