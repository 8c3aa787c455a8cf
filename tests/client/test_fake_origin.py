"""The fake's Immich-like origin mode: latency before the first byte and a per-stream cap.

Only lower bounds on time are asserted (a loaded machine may always be slower):
each would fail if the latency or the cap were not applied.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from immichfs_fake import FakeImmich, FakeLibrary
from immichfs_fake.library import FILE_THRESHOLD
from immichfs_fake.server import REALISTIC_LATENCY_MS, REALISTIC_STREAM_MIB_S

MIB = 1 << 20


def client(srv: FakeImmich) -> httpx.Client:
    # identity: the JSON cap test counts the body bytes as sent
    return httpx.Client(
        base_url=srv.url + "/api",
        headers={"x-api-key": srv.api_key, "accept-encoding": "identity"},
    )


@pytest.fixture
def slow_origin(fake_library: FakeLibrary) -> Iterator[FakeImmich]:
    with FakeImmich(fake_library, latency_ms=80) as srv:
        yield srv


def test_latency_comes_before_the_first_byte_of_every_response(
    slow_origin: FakeImmich, fake_library: FakeLibrary
) -> None:
    small = next(a for a in fake_library.sorted_assets() if a.size < FILE_THRESHOLD)
    large = fake_library.find("large-video.mp4")
    requests = [
        ("GET", "/server/ping", None),  # public
        ("GET", "/users/me", None),
        ("POST", "/search/metadata", {"size": 5}),
        ("GET", f"/assets/{small.id}/original", None),  # from memory
        ("GET", f"/assets/{large.id}/original", None),  # sendfile
        ("HEAD", f"/assets/{large.id}/original", None),
        ("GET", "/assets/not-a-uuid", None),  # errors too
    ]
    with client(slow_origin) as api:
        for method, path, body in requests:
            start = time.monotonic()
            with api.stream(method, path, json=body) as r:
                elapsed = time.monotonic() - start  # headers in: the first byte came
                assert r.status_code in (200, 400), (path, r.status_code)
                r.read()
            assert elapsed >= 0.08, (method, path, elapsed)
    records = slow_origin.requests.snapshot()
    assert len(records) == len(requests)
    for record in records:
        assert record.first_byte - record.received >= 0.08, record


def test_latency_can_be_changed_while_running(fake_immich: FakeImmich) -> None:
    with client(fake_immich) as api:
        assert api.get("/server/ping").status_code == 200
        fake_immich.latency_ms = 60
        assert api.get("/server/ping").status_code == 200
    _first, second = fake_immich.requests.snapshot()
    assert second.first_byte - second.received >= 0.06


def timed_download(api: httpx.Client, path: str, headers: dict[str, str] | None = None) -> float:
    # from before the request: the server's pacing clock starts later than this,
    # and the last byte reaches us later than it leaves
    start = time.monotonic()
    with api.stream("GET", path, headers=headers) as r:
        assert r.status_code in (200, 206)
        total = sum(len(chunk) for chunk in r.iter_raw())
        assert total == int(r.headers["content-length"])
    return time.monotonic() - start


def test_the_stream_cap_bounds_a_large_download_without_spinning(
    fake_library: FakeLibrary,
) -> None:
    large = fake_library.find("large-video.mp4")
    assert large.size >= 8 * MIB
    rate = 24  # MiB/s
    with FakeImmich(fake_library, stream_mib_s=rate) as srv, client(srv) as api:
        cpu = time.process_time()
        wall = time.monotonic()
        elapsed = timed_download(api, f"/assets/{large.id}/original")
        cpu = time.process_time() - cpu
        wall = time.monotonic() - wall
        ranged = timed_download(
            api, f"/assets/{large.id}/original", {"range": f"bytes=0-{4 * MIB - 1}"}
        )
    assert elapsed >= large.size / (rate * MIB), elapsed
    assert ranged >= 4 / rate, ranged
    # pacing sleeps: this process (server and client) used far less CPU than a spin
    assert cpu < 0.6 * wall, (cpu, wall)


def test_the_stream_cap_applies_to_json_bodies(fake_library: FakeLibrary) -> None:
    rate = 0.25  # MiB/s
    with FakeImmich(fake_library, stream_mib_s=rate) as srv, client(srv) as api:
        start = time.monotonic()
        r = api.post("/search/metadata", json={"size": 100})
        elapsed = time.monotonic() - start
    assert r.status_code == 200
    assert "content-encoding" not in r.headers
    assert len(r.content) > 64 << 10  # enough to measure
    assert elapsed >= len(r.content) / (rate * MIB), (len(r.content), elapsed)


def test_the_cap_is_per_stream(fake_library: FakeLibrary) -> None:
    """Two downloads at once each get the whole cap (Node streams each response on its own)."""
    import threading

    large = fake_library.find("large-video.mp4")
    rate = 24
    times: list[float] = []
    with FakeImmich(fake_library, stream_mib_s=rate) as srv:

        def one() -> None:
            with client(srv) as api:
                times.append(timed_download(api, f"/assets/{large.id}/original"))

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent = srv.bytes_sent("/api/assets/")
    assert len(times) == 2 and sent == 2 * large.size
    for elapsed in times:
        assert elapsed >= large.size / (rate * MIB)


def test_realistic_preset(fake_library: FakeLibrary) -> None:
    srv = FakeImmich(fake_library, realistic=True)
    assert (srv.latency_ms, srv.stream_mib_s) == (REALISTIC_LATENCY_MS, REALISTIC_STREAM_MIB_S)
    assert (REALISTIC_LATENCY_MS, REALISTIC_STREAM_MIB_S) == (5.0, 350.0)
    tuned = FakeImmich(fake_library, realistic=True, latency_ms=1, stream_mib_s=0)
    assert (tuned.latency_ms, tuned.stream_mib_s) == (1, None)
    plain = FakeImmich(fake_library)
    assert (plain.latency_ms, plain.stream_mib_s) == (0, None)
    with pytest.raises(ValueError, match="latency must be >= 0 ms"):
        FakeImmich(fake_library, latency_ms=-1)
    with srv, client(srv) as api:
        assert api.get("/users/me").status_code == 200
    (record,) = srv.requests.snapshot()
    assert record.first_byte - record.received >= REALISTIC_LATENCY_MS / 1000


def run_cli(tmp_path: Path, *options: str) -> subprocess.Popen[str]:
    base = ["--port", "0", "--photos", "5", "--videos", "1", "--large-video-mb", "0"]
    ready = ["--ready-file", str(tmp_path / "ready")]
    return subprocess.Popen(
        [sys.executable, "-m", "immichfs_fake", *base, *ready, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_realistic_origin(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = run_cli(tmp_path, "--realistic", "--latency-ms", "70")
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        env = dict(line.split("=", 1) for line in ready.read_text().splitlines())
        with httpx.Client(
            base_url=env["IMMICH_URL"] + "/api", headers={"x-api-key": env["IMMICH_API_KEY"]}
        ) as api:
            start = time.monotonic()
            assert api.get("/users/me").status_code == 200
            assert time.monotonic() - start >= 0.07
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "70 ms before the first byte, 350 MiB/s per stream" in err


def test_cli_rejects_a_negative_latency(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--latency-ms", "-3")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "the latency must be >= 0 ms, not -3" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "ready")
