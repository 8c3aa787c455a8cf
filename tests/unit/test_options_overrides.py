"""``load_settings(overrides=...)``: settings given in code (``immich://`` keyword arguments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from immichfs.errors import ConfigError
from immichfs.options import load_settings, source_name

KEY = "key-from-the-environment-0123456789"


def test_overrides_win_over_flags_environment_and_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('url = "http://file:2283"\nlisting_ttl = 3\nsearch_limit = 7\n')
    env = {"IMMICH_URL": "http://env:2283", "IMMICHFS_LISTING_TTL": "4"}
    settings = load_settings(
        {"url": "http://flag:2283"},
        env=env,
        config_path=config,
        overrides={"url": "http://argument:2283", "listing_ttl": "5", "show_trash": None},
    )
    assert settings.url == "http://argument:2283"
    assert settings.listing_ttl == 5.0  # converted as any other source
    assert settings.search_limit == 7  # not overridden: the file's
    assert settings.show_trash is False  # None means "not given"
    assert settings.sources["url"] == "argument"
    assert settings.sources["search_limit"] == "file"
    assert source_name(settings, "url") == "the argument url="


def test_a_secret_may_be_an_override_but_a_key_file_argument_beats_an_env_key(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("key-from-the-file-0123456789\n")
    key_file.chmod(0o600)
    env = {"IMMICH_API_KEY": KEY}
    assert load_settings(env=env, config_path=_empty(tmp_path)).api_key == KEY
    given = load_settings(
        env=env, config_path=_empty(tmp_path), overrides={"api_key_file": str(key_file)}
    )
    assert given.api_key == "key-from-the-file-0123456789"
    assert source_name(given, "api_key") == f"the key in {key_file}"
    direct = load_settings(
        env=env,
        config_path=_empty(tmp_path),
        overrides={"api_key": "key-given-directly-0123456789", "api_key_file": str(key_file)},
    )
    assert direct.api_key == "key-given-directly-0123456789"
    assert "key-given-directly" not in repr(direct)


def test_an_unknown_override_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) colour; known: "):
        load_settings(env={}, config_path=_empty(tmp_path), overrides={"colour": "red"})
    with pytest.raises(ConfigError, match="listing_ttl="):
        load_settings(env={}, config_path=_empty(tmp_path), overrides={"listing_ttl": "soon"})


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.toml"
    path.write_text("")
    return path
