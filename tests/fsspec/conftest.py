"""``immich://`` against the fake server: a filesystem per test, its loop closed after."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from immichfs.fsspec import ImmichFileSystem
from immichfs.fsspec.loop import close_all


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No IMMICH*/IMMICHFS* variable of the machine and no user config file leaks in;
    every loop thread a test started is closed after it."""
    for name in list(os.environ):
        if name.startswith("IMMICH"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr("immichfs.options.DEFAULT_CONFIG_PATHS", ())
    yield
    ImmichFileSystem.clear_instance_cache()
    close_all()


@pytest.fixture
def key_file(fake_immich: Any, tmp_path: Path) -> Path:
    path = tmp_path / "immich.key"
    path.write_text(fake_immich.api_key + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def immich_fs(fake_immich: Any, key_file: Path) -> ImmichFileSystem:
    """``immich://`` on ``fake_immich``, the key read from a file (as a worker would)."""
    return ImmichFileSystem(url=fake_immich.url, api_key_file=str(key_file))
