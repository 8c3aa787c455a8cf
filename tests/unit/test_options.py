"""The settings table: precedence flags > env > file > defaults, the TOML file, the key file."""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from immichfs import options
from immichfs.errors import ConfigError
from immichfs.options import OPTIONS, load_settings

REPO = Path(__file__).resolve().parents[2]
KEY = "k3y-" + "x" * 36


@pytest.fixture(autouse=True)
def no_default_config_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the machine's own ~/.config or /etc files must not leak into these tests
    monkeypatch.setattr(
        options,
        "DEFAULT_CONFIG_PATHS",
        (tmp_path / "home" / "config.toml", tmp_path / "etc" / "config.toml"),
    )


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    return parser.parse_args(argv)


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_defaults_when_nothing_is_given() -> None:
    settings = load_settings(parse(), env={})
    for option in OPTIONS:
        assert getattr(settings, option.name) == option.default, option.name
        assert settings.sources[option.name] == "default"


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    file = write(
        tmp_path / "c.toml",
        'url = "http://from-file:2283"\n'
        "listing_ttl = 11\n"
        "allow_other = true\n"
        "uid = 1001\n"
        "readahead_mb = 4\n",
    )
    env = {
        "IMMICH_URL": "http://from-env:2283",
        "IMMICHFS_LISTING_TTL": "22",
        "IMMICHFS_ALLOW_OTHER": "yes",
    }
    args = parse("--config", str(file), "--url", "http://from-flag:2283", "--no-allow-other")
    settings = load_settings(args, env=env)
    assert settings.url == "http://from-flag:2283"  # flag beats env and file
    assert settings.allow_other is False  # --no-... beats env and file
    assert settings.listing_ttl == 22.0  # env beats file
    assert settings.uid == 1001  # file beats default
    assert settings.readahead_mb == 4
    assert settings.asset_ttl == 60.0  # default
    assert {k: settings.sources[k] for k in ("url", "listing_ttl", "uid", "asset_ttl")} == {
        "url": "flag",
        "listing_ttl": "env",
        "uid": "file",
        "asset_ttl": "default",
    }


def test_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", "timeout = 5\n")
    settings = load_settings(parse("--config", str(file)), env={"IMMICHFS_TIMEOUT": ""})
    assert settings.timeout == 5.0


def test_default_file_locations_user_first(tmp_path: Path) -> None:
    user, system = options.DEFAULT_CONFIG_PATHS
    write(system, "search_limit = 7\ngid = 9\n")
    assert load_settings(parse(), env={}).search_limit == 7
    write(user, "search_limit = 8\n")
    settings = load_settings(parse(), env={})
    assert settings.search_limit == 8
    assert settings.gid is None  # only the first file found is read


def test_immichfs_table_in_the_file(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", '[immichfs]\nurl = "http://t:1"\ndebug = true\n')
    settings = load_settings({"config": file}, env={})
    assert (settings.url, settings.debug) == ("http://t:1", True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('url = "http://x"\nlisting_ttl = \n', "is not valid TOML"),
        ("listing_tll = 3\nfoo = 1\n", "unknown setting(s) foo, listing_tll"),
        ('listing_ttl = "soon"\n', "'soon' is not a valid float for listing_ttl"),
        ("readahead_mb = -1\n", "readahead_mb must not be negative"),
        ('allow_other = "perhaps"\n', "is not a valid bool for allow_other"),
        ("max_connections = true\n", "is not a valid int for max_connections"),
    ],
)
def test_bad_config_file(tmp_path: Path, text: str, message: str) -> None:
    file = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(parse("--config", str(file)), env={})
    assert message in str(info.value)
    assert str(file) in str(info.value)


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(parse("--config", str(tmp_path / "nope.toml")), env={})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMMICHFS_LISTING_TTL": "ten"}, "$IMMICHFS_LISTING_TTL: 'ten' is not a valid float"),
        ({"IMMICH_INSECURE": "sometimes"}, "$IMMICH_INSECURE: 'sometimes' is not a valid bool"),
    ],
)
def test_bad_environment_value_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(parse(), env=env)
    assert message in str(info.value)


def test_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--uid: 'me' is not a valid int"):
        load_settings(parse("--uid", "me"), env={})


def test_booleans_from_environment() -> None:
    assert load_settings(parse(), env={"IMMICHFS_DEBUG": "on"}).debug is True
    assert load_settings(parse(), env={"IMMICHFS_DEBUG": "0"}).debug is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--api-key", KEY], "is not accepted: command lines are visible in `ps`"),
        ([f"--api-key={KEY}"], "is not accepted: command lines are visible in `ps`"),
        (["--api-k", KEY], "ambiguous option"),
    ],
)
def test_api_key_is_never_a_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # not even as an abbreviation of --api-key-file, which would echo the key as a path
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert KEY not in err


def test_key_file_is_read_and_stripped(tmp_path: Path) -> None:
    key_file = write(tmp_path / "key", f"  {KEY}\n")
    settings = load_settings(parse(), env={"IMMICH_API_KEY_FILE": str(key_file)})
    assert settings.api_key == KEY
    assert settings.api_key_file == key_file
    assert KEY not in repr(settings)


def test_key_given_directly_wins_over_key_file(tmp_path: Path) -> None:
    key_file = write(tmp_path / "key", "from-file-key\n")
    settings = load_settings(parse("--api-key-file", str(key_file)), env={"IMMICH_API_KEY": KEY})
    assert settings.api_key == KEY


@pytest.mark.parametrize(("content", "message"), [("\n  \n", "is empty"), (None, "does not exist")])
def test_bad_key_file(tmp_path: Path, content: str | None, message: str) -> None:
    key_file = tmp_path / "key"
    if content is not None:
        write(key_file, content)
    with pytest.raises(ConfigError, match=message):
        load_settings(parse("--api-key-file", str(key_file)), env={})


@pytest.mark.expect_log("is readable by group or others", logger="immichfs.client.http")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_readable_key_file_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    key_file = write(tmp_path / "key", KEY, mode)
    with caplog.at_level(logging.WARNING, logger="immichfs.client.http"):
        settings = load_settings(parse("--api-key-file", str(key_file)), env={})
    assert settings.api_key == KEY  # a warning, not a refusal (container secrets are 0644)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"run: chmod 600 {key_file}" in warnings[0].getMessage()
    assert KEY not in caplog.text


def test_private_key_file_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file = write(tmp_path / "key", KEY, 0o600)
    with caplog.at_level(logging.DEBUG, logger="immichfs.client.http"):
        load_settings(parse("--api-key-file", str(key_file)), env={})
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.expect_log("is readable by group or others", logger="immichfs.client.http")
def test_key_in_readable_config_file_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = write(tmp_path / "c.toml", f'api_key = "{KEY}"\n', 0o644)
    with caplog.at_level(logging.WARNING, logger="immichfs.client.http"):
        settings = load_settings(parse("--config", str(file)), env={})
    assert settings.api_key == KEY
    assert "readable by group or others" in caplog.text
    assert KEY not in caplog.text


def test_verify_follows_ca_cert_and_insecure(tmp_path: Path) -> None:
    assert load_settings(parse(), env={}).verify is True
    ca = tmp_path / "ca.pem"
    assert load_settings(parse("--ca-cert", str(ca)), env={}).verify == str(ca)
    assert load_settings(parse("--ca-cert", str(ca), "--insecure"), env={}).verify is False


def test_every_flag_option_has_a_flag_and_env() -> None:
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    flags = {
        s
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for s in action.option_strings
    }
    for option in OPTIONS:
        assert (option.flag_name in flags) == option.flag, option.name
        assert option.env is not None, option.name
    assert len({o.env for o in OPTIONS}) == len(OPTIONS)


def test_options_table_has_one_row_per_option() -> None:
    rows = options.options_markdown().splitlines()[2:]
    assert [re.match(r"\| `(\w+)`", row).group(1) for row in rows] == [  # type: ignore[union-attr]
        o.name for o in OPTIONS
    ]


def documented_table() -> str:
    text = (REPO / "docs" / "CONFIGURATION.md").read_text()
    start, end = "<!-- options:start -->", "<!-- options:end -->"
    assert start in text and end in text, "docs/CONFIGURATION.md lacks the table markers"
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_configuration_doc_table_is_generated_from_the_options() -> None:
    assert documented_table() == options.options_markdown(), "run scripts/gen-options-doc"


def test_gen_options_doc_check_mode(tmp_path: Path) -> None:
    script = REPO / "scripts" / "gen-options-doc"
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- options:start -->\n| old |\n<!-- options:end -->\noutro\n")
    stale = subprocess.run(
        [sys.executable, str(script), "--check", str(readme)], capture_output=True, text=True
    )
    assert stale.returncode == 1
    assert "out of date" in stale.stderr
    fixed = subprocess.run([sys.executable, str(script), str(readme)], capture_output=True)
    assert fixed.returncode == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- options:start -->\n")
    assert text.endswith("<!-- options:end -->\noutro\n")
    assert options.options_markdown() in text
    again = subprocess.run([sys.executable, str(script), "--check", str(readme)])
    assert again.returncode == 0


def test_source_name_says_where_a_value_came_from(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("fake-key-0123456789")
    key_file.chmod(0o600)
    from_flag = options.load_settings({"url": "http://h"}, env={"IMMICH_API_KEY": "k" * 20})
    assert options.source_name(from_flag, "url") == "--url"
    assert options.source_name(from_flag, "api_key") == "IMMICH_API_KEY"
    from_env = options.load_settings(
        {}, env={"IMMICH_URL": "http://h", "IMMICH_API_KEY_FILE": str(key_file)}
    )
    assert options.source_name(from_env, "url") == "IMMICH_URL"
    assert options.source_name(from_env, "api_key") == f"the key in {key_file}"
    toml = tmp_path / "c.toml"
    toml.write_text('url = "http://h"\napi_key = "abc"\n')
    toml.chmod(0o600)
    from_file = options.load_settings({}, env={}, config_path=toml)
    assert options.source_name(from_file, "url") == "url in the config file"
    assert options.source_name(from_file, "api_key") == "api_key in the config file"
