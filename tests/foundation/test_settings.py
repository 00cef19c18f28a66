"""Settings: every way to get one wrong ends in one clear line and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from remixer import settings
from remixer.cli import main


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "remixer", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_defaults_run_with_nothing_installed() -> None:
    loaded = settings.load()
    assert loaded.server.grpc_address == "127.0.0.1:9191"
    assert loaded.server.admin_address == "127.0.0.1:8080"
    assert loaded.server.parts == ["policy", "telemetry", "admin"]
    assert loaded.server.workers == 1


def test_priority_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "r.yaml"
    config.write_text(
        "server:\n  grpc_address: 127.0.0.1:1001\n  admin_address: 127.0.0.1:1002\n  workers: 3\n"
    )
    monkeypatch.setenv("REMIXER_SERVER__ADMIN_ADDRESS", "127.0.0.1:2002")
    monkeypatch.setenv("REMIXER_SERVER__WORKERS", "4")
    loaded = settings.load(config, {"server": {"workers": 5}})
    assert loaded.server.grpc_address == "127.0.0.1:1001"  # file only
    assert loaded.server.admin_address == "127.0.0.1:2002"  # env beats file
    assert loaded.server.workers == 5  # flag beats env


def test_secret_token_survives_flag_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMIXER_SERVER__ADMIN_TOKEN", "s3cret-value")
    loaded = settings.load(None, {"server": {"workers": 2}})
    assert loaded.server.admin_token is not None
    assert loaded.server.admin_token.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(loaded)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ("server: [unclosed\n", "is not valid YAML at line"),
        ("server:\n  grpc_adress: 127.0.0.1:9191\n", "invalid setting server.grpc_adress"),
        ("surprise: 1\n", "invalid setting surprise"),
        ("server:\n  grpc_address: 127.0.0.1:99999\n", "invalid setting server.grpc_address"),
        ("server:\n  admin_address: nonsense\n", "invalid setting server.admin_address"),
        ("server:\n  workers: 0\n", "invalid setting server.workers"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_bad_config_is_one_clear_line_and_exit_2(tmp_path: Path, content: str | None, expected: str) -> None:
    config = tmp_path / "remixer.yaml"
    if content is not None:
        config.write_text(content)
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("remixer: error: ")
    assert expected in lines[0]


def test_bad_flag_value_names_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--grpc-address", "127.0.0.1:http"]) == 2
    err = capsys.readouterr().err
    assert "server.grpc_address" in err
    assert main(["serve", "--set", "policy.no_such_thing=1"]) == 2
    assert "policy.no_such_thing" in capsys.readouterr().err


def test_every_subcommand_explains_its_options() -> None:
    helps = {}
    for command in ("", "serve", "demo", "controller"):
        result = run_cli(*command.split(), "--help")
        assert result.returncode == 0, result.stderr
        assert "usage: remixer" in result.stdout
        helps[command] = result.stdout
    serve_help = helps["serve"]
    for flag in ("--config", "--grpc-address", "--admin-address", "--parts", "--workers", "--set"):
        assert flag in serve_help


def test_readme_configuration_reference_is_current() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- settings-reference:start -->")[1].split("<!-- settings-reference:end -->")[0]
    assert block.strip() == settings.reference_markdown().strip(), "run: python -m remixer.settings > table"
