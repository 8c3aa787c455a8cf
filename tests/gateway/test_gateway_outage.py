"""``immichfs serve`` while its Immich is down: 502 at once, one warning per outage.

A real gateway process in front of the fake server, whose listener is closed
(connections refused) and opened again on the same port.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from immichfs_fake import FakeImmich

#: far beyond what a 502 "at once" takes, far below what waiting out the retries takes
#: (the gateway runs with a retry budget of an hour)
ANSWER_WITHIN = 20.0


@pytest.fixture
def gateway(fake_immich: FakeImmich, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``immichfs serve --port 0`` for ``fake_immich``: (its URL, its log)."""
    log_path = tmp_path / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMMICH")}
    env.update(
        HOME="/nonexistent",
        IMMICH_URL=fake_immich.url,
        IMMICH_API_KEY=fake_immich.api_key,
        IMMICHFS_RETRY_BUDGET="3600",
    )
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "immichfs", "serve", "--port", "0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, f"the gateway said {line!r}: {log_path.read_text()}"
        yield match[1], log_path
    finally:
        process.terminate()
        assert process.wait(30) == 0
        if process.stdout is not None:
            process.stdout.close()


def statistics(client: httpx.Client) -> httpx.Response:
    return client.get("/api/immich/statistics")


def wait_for_log(log_path: Path, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = log_path.read_text()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged within {timeout} s:\n{log_path.read_text()}")


def warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line]


def test_unreachable_immich_is_502_at_once_with_one_warning_per_outage(
    fake_immich: FakeImmich, gateway: tuple[str, Path]
) -> None:
    url, log_path = gateway
    with httpx.Client(base_url=url, timeout=ANSWER_WITHIN) as client:
        assert statistics(client).status_code == 200
        for outage in (1, 2):
            fake_immich.faults.refuse_connections()
            # the first request finds it down, the next ones are answered without trying
            for _ in range(5):
                answer = statistics(client)
                assert answer.status_code == 502
                body = answer.json()
                assert body["error"] == "upstream_unreachable"
                assert f"cannot reach {fake_immich.url}" in body["message"]
            # still the same shape on other endpoints
            assert client.post("/api/immich/search", json={"query": "x"}).status_code == 502
            log = wait_for_log(log_path, "answering 502 at once")
            assert len(warnings(log)) == outage, log

            fake_immich.faults.resume_connections()
            deadline = time.monotonic() + 60
            while statistics(client).status_code != 200:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            log = wait_for_log(log_path, "Immich answers again")
            assert log.count("Immich answers again") == outage
    log = log_path.read_text()
    assert len(warnings(log)) == 2, log  # one per outage, none per retry or request
    assert "immichfs.client.retry" not in log
    assert fake_immich.api_key not in log
