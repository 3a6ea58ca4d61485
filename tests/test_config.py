"""Settings precedence: flags over environment over config file over defaults."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from cloudcontainer.config import RuntimeName, Settings, load_settings
from cloudcontainer.runtimes import RUNTIMES, load_runtime
from cloudcontainer.runtimes.base import RuntimeOptions


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CLOUDCONTAINER_"):
            monkeypatch.delenv(key)


def test_defaults_are_embedded_sqlite_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert (settings.host, settings.port, settings.runtime) == ("127.0.0.1", 8080, "local")
    assert settings.data_dir == tmp_path / ".cloudcontainer"
    assert (
        settings.database_url
        == f"sqlite+aiosqlite:///{tmp_path / '.cloudcontainer' / 'cloudcontainer.db'}"
    )
    assert settings.public_url == "http://127.0.0.1:8080"


def test_flag_beats_env_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cc.toml"
    config.write_text(
        'port = 9001\nhost = "0.0.0.0"\nlog_level = "debug"\npreview_ports = "50000-50010"\n'
    )
    monkeypatch.setenv("CLOUDCONTAINER_PORT", "9002")
    monkeypatch.setenv("CLOUDCONTAINER_HOST", "10.1.2.3")
    settings = load_settings(config, host="127.0.0.2")
    assert settings.host == "127.0.0.2"  # flag
    assert settings.port == 9002  # env
    assert settings.log_level == "debug"  # file
    assert settings.preview_port_range == range(50000, 50011)


def test_config_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cc.toml"
    config.write_text('runtime = "docker"\n')
    monkeypatch.setenv("CLOUDCONTAINER_CONFIG", str(config))
    assert load_settings().runtime == "docker"


def test_unknown_keys_in_the_config_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "cc.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="prot"):
        load_settings(config)


@pytest.mark.parametrize("ports", ["40000", "2-1", "0-5", "a-b", "1-70000"])
def test_bad_preview_port_ranges_are_refused(ports: str) -> None:
    with pytest.raises(ValueError, match="preview_ports"):
        Settings(preview_ports=ports)


def test_signing_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = settings.signing_key()
    assert len(first) >= 32
    assert Settings(data_dir=tmp_path).signing_key() == first
    assert (
        Settings(data_dir=tmp_path, secret_key="configured-key").signing_key() == "configured-key"
    )


def test_command_deny_patterns_must_be_regular_expressions(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path, command_deny_patterns=[r"\brm\s+-rf\b"])
    with pytest.raises(ValueError, match="not a regular expression"):
        Settings(data_dir=tmp_path, command_deny_patterns=["(unclosed"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("egress_allow", ["10.0.0.1:0"]),
        ("egress_allow", ["10.0.0.1:99999"]),
        ("egress_allow", ["not-an-address"]),
        ("egress_allow", ["[fd00::1]443"]),
        ("local_sandbox_uids", "5-4"),
        ("local_sandbox_uids", "0-100"),
        ("local_sandbox_uids", "1000000000"),
    ],
)
def test_security_settings_refuse_what_they_cannot_mean(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})


def test_egress_allow_entries_parse_to_networks_and_ports() -> None:
    from cloudcontainer.config import parse_allow

    assert str(parse_allow("10.1.2.3").network) == "10.1.2.3/32"
    rule = parse_allow("10.5.0.0/16:4873")
    assert (str(rule.network), rule.port) == ("10.5.0.0/16", 4873)
    rule = parse_allow("[fd00::/8]:443")
    assert (str(rule.network), rule.port) == ("fd00::/8", 443)
    assert parse_allow("fd00::1").port is None


def test_an_unknown_runtime_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValidationError, match=r"runtime\n.*'local' or 'docker'"):
        Settings(runtime="kubernetes")


@pytest.mark.parametrize("name", get_args(RuntimeName))
def test_every_runtime_name_loads_its_runtime(name: RuntimeName, tmp_path: Path) -> None:
    options = RuntimeOptions(data_dir=tmp_path, agent_zipapp=tmp_path / "a.pyz", ca_bundle=None)
    assert load_runtime(name, options).name == name
    assert set(RUNTIMES) == set(get_args(RuntimeName))
