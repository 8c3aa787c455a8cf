"""A setting with a fixed set of values (``edits``): every source is checked against it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from immichfs.errors import ConfigError
from immichfs.options import add_arguments, load_settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_edits_default_flag_env_and_file(tmp_path: Path) -> None:
    missing = tmp_path / "empty.toml"
    missing.write_text("")
    assert load_settings(parse(), env={}, config_path=missing).edits == "original"
    assert load_settings(parse("--edits", "edited"), env={}, config_path=missing).edits == "edited"
    env = {"IMMICHFS_EDITS": "edited"}
    assert load_settings(parse(), env=env, config_path=missing).edits == "edited"
    file = tmp_path / "config.toml"
    file.write_text('edits = "edited"\nsidecars = true\n')
    settings = load_settings(parse(), env={}, config_path=file)
    assert settings.edits == "edited" and settings.sidecars is True


@pytest.mark.parametrize("source", ["flag", "env", "file"])
def test_edits_refuses_other_values_naming_the_choices(tmp_path: Path, source: str) -> None:
    file = tmp_path / "config.toml"
    file.write_text('edits = "both"\n' if source == "file" else "")
    args = parse("--edits", "both") if source == "flag" else parse()
    env = {"IMMICHFS_EDITS": "both"} if source == "env" else {}
    with pytest.raises(ConfigError, match="edits must be one of original, edited, not 'both'"):
        load_settings(args, env=env, config_path=file)


def test_the_flag_shows_its_choices() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "--edits original|edited" in parser.format_help()
