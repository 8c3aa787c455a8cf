"""Retries: the policy's arithmetic, ``call`` under trio's autojump clock, the
resuming fetcher against a scripted flaky fetcher, and both over real HTTP
against the fake server's fault switches."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trio
import trio.testing

from immichfs import errors
from immichfs.client.connector import ImmichConnector
from immichfs.client.retry import RetryPolicy, resuming
from immichfs.logs import register_secret
from immichfs_fake import FakeImmich

FAST = RetryPolicy(attempts=8, base_delay=0.01, max_delay=0.05, budget=5.0)
#: from the fourth try on, retries are logged as warnings
RETRIES_WARN = pytest.mark.expect_log(r"; try \d+ of at most", logger="immichfs.client.retry")


class Recorder:
    """An injected sleep that records its delays (and really sleeps, on trio's clock)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await trio.sleep(seconds)


def failing(*outcomes: BaseException | str) -> tuple[list[float], Any]:
    """An async function raising ``outcomes`` in turn, then returning "ok"; and its call times."""
    calls: list[float] = []
    todo = list(outcomes)

    async def fn() -> str:
        calls.append(trio.current_time())
        if todo:
            outcome = todo.pop(0)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        return "ok"

    return calls, fn


# -- the policy -------------------------------------------------------------------


def test_policy_is_a_value_and_checks_its_fields() -> None:
    assert RetryPolicy() == RetryPolicy()
    assert RetryPolicy(budget=3) != RetryPolicy()
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(budget=-1)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=True)
    assert not RetryPolicy(attempts=1).enabled
    assert not RetryPolicy(budget=0).enabled


def test_policy_from_settings() -> None:
    from immichfs.options import Settings, retry_policy

    assert retry_policy(Settings(retry_budget=7.5)).budget == 7.5
    assert not retry_policy(Settings(retry_budget=0)).enabled
    assert retry_policy(Settings()).budget == Settings().retry_budget


def test_full_jitter_backoff() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    assert [policy.backoff(n, 1.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.backoff(3, 0.0) == 0.0  # full jitter reaches down to no pause at all
    assert policy.backoff(3, 0.25) == 0.5
    assert policy.backoff(1000, 1.0) == 4.0  # no overflow for absurd attempt numbers


def test_what_is_retried() -> None:
    policy = RetryPolicy()
    for status in (502, 503, 504):
        assert policy.retryable(errors.ServerError("x", status=status))
    # Immich's own unhandled errors repeat for the same request: not retried
    assert not policy.retryable(errors.ServerError("x", status=500))
    assert not policy.retryable(errors.ServerError("x", status=501))
    for transient in (
        errors.ConnectError("x"),
        errors.RequestTimeout("x"),
        errors.TruncatedBody("x"),
        errors.RateLimited("x", retry_after=3),
    ):
        assert policy.retryable(transient)
    for final in (
        errors.AuthenticationError("x", status=401),
        errors.PermissionDenied("x", permission="asset.download"),
        errors.NotFound("x"),
        errors.BadRequest("x"),
        errors.ProtocolError("x"),
        errors.StaleAsset("x"),
        ValueError("x"),
    ):
        assert not policy.retryable(final)
    assert RetryPolicy(retry_statuses=frozenset({500})).retryable(
        errors.ServerError("x", status=500)
    )


# -- call() under the autojump clock ------------------------------------------------


@RETRIES_WARN
async def test_call_retries_transient_failures_with_growing_pauses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls, fn = failing(
        errors.ServerError("bad gateway", status=502),
        errors.ConnectError("refused"),
        errors.ServerError("unavailable", status=503),
    )
    sleep = Recorder()
    policy = RetryPolicy(attempts=5, base_delay=1.0, max_delay=10.0, budget=60)
    assert await policy.call(fn, sleep=sleep, random=lambda: 1.0) == "ok"
    assert len(calls) == 4
    assert sleep.delays == [1.0, 2.0, 4.0]
    assert calls[-1] - calls[0] == pytest.approx(7.0)


@RETRIES_WARN
async def test_jitter_is_a_fraction_of_the_ceiling(autojump_clock: trio.testing.MockClock) -> None:
    _, fn = failing(*[errors.ConnectError("refused")] * 3)
    sleep = Recorder()
    fractions = iter([0.5, 0.1, 0.9])
    policy = RetryPolicy(attempts=5, base_delay=1.0, max_delay=10.0)
    await policy.call(fn, sleep=sleep, random=lambda: next(fractions))
    assert sleep.delays == pytest.approx([0.5, 0.2, 3.6])


async def test_attempts_cap_raises_the_last_error(autojump_clock: trio.testing.MockClock) -> None:
    last = errors.ServerError("third", status=504)
    calls, fn = failing(errors.ServerError("a", status=503), errors.ConnectError("b"), last)
    with pytest.raises(errors.ServerError) as info:
        await RetryPolicy(attempts=3, base_delay=0.1).call(fn)
    assert info.value is last
    assert len(calls) == 3


@pytest.mark.parametrize(
    "error",
    [
        errors.AuthenticationError("revoked", status=401),
        errors.PermissionDenied("no", permission="asset.download"),
        errors.NotFound("gone"),
        errors.ServerError("internal", status=500),
        errors.ProtocolError("not json"),
    ],
)
async def test_final_errors_are_raised_at_once(
    error: errors.ImmichError, autojump_clock: trio.testing.MockClock
) -> None:
    calls, fn = failing(error)
    started = trio.current_time()
    with pytest.raises(type(error)):
        await RetryPolicy().call(fn)
    assert len(calls) == 1
    assert trio.current_time() == started  # not even a pause


async def test_retry_after_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    calls, fn = failing(errors.RateLimited("slow down", retry_after=7))
    sleep = Recorder()
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0, budget=30)
    assert await policy.call(fn, sleep=sleep, random=lambda: 0.5) == "ok"
    assert sleep.delays == [7.0]  # longer than any backoff: the server's word wins
    assert calls[1] - calls[0] == pytest.approx(7.0)


async def test_retry_after_is_capped_by_the_remaining_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls, fn = failing(
        errors.RateLimited("slow down", retry_after=100),
        errors.RateLimited("slow down", retry_after=100),
    )
    sleep = Recorder()
    with pytest.raises(errors.RateLimited):
        await RetryPolicy(budget=3).call(fn, sleep=sleep)
    assert sleep.delays == [3.0]  # waited out the budget once, then gave up
    assert len(calls) == 2
    assert trio.current_time() - calls[0] == pytest.approx(3.0)


@RETRIES_WARN
async def test_budget_bounds_the_total_time(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[float] = []

    async def down() -> None:
        calls.append(trio.current_time())
        await trio.sleep(2.0)  # each try takes a while (a timeout) before failing
        raise errors.RequestTimeout("no answer within 2 s")

    started = trio.current_time()
    policy = RetryPolicy(attempts=1000, base_delay=0.5, max_delay=4, budget=20)
    with pytest.raises(errors.RequestTimeout):
        await policy.call(down)
    elapsed = trio.current_time() - started
    # every retry started within the budget, counted from the start; so the whole
    # operation took at most the budget plus one try's timeout
    assert all(when - started <= 20.0 for when in calls)
    assert 20.0 <= elapsed <= 20.0 + 2.0
    assert len(calls) < 20


async def test_disabled_policy_tries_once(autojump_clock: trio.testing.MockClock) -> None:
    calls, fn = failing(errors.ConnectError("refused"))
    with pytest.raises(errors.ConnectError):
        await RetryPolicy(attempts=1).call(fn)
    assert len(calls) == 1


@RETRIES_WARN
async def test_cancellation_is_never_swallowed(autojump_clock: trio.testing.MockClock) -> None:
    calls, fn = failing(*[errors.ConnectError("refused")] * 100)
    with trio.move_on_after(5) as scope:
        await RetryPolicy(attempts=100, base_delay=1, max_delay=1, budget=1000).call(fn)
    assert scope.cancelled_caught
    assert 1 < len(calls) < 100


@RETRIES_WARN
async def test_log_level_rises_and_the_key_never_shows(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    key = "retry-test-secret-key-0123456789"
    register_secret(key)
    _, fn = failing(
        errors.ConnectError(f"refused (key {key})"),  # even an error that quotes it
        errors.ServerError("unavailable", status=503),
        errors.RateLimited("slow", retry_after=1),
        errors.RequestTimeout("late"),
    )
    caplog.set_level(logging.DEBUG, logger="immichfs.client.retry")
    await RetryPolicy(attempts=10, base_delay=0.01).call(fn, what="statistics")
    retries = [r for r in caplog.records if r.name == "immichfs.client.retry"]
    assert [r.levelno for r in retries] == [
        logging.DEBUG,
        logging.INFO,
        logging.WARNING,
        logging.WARNING,
    ]
    assert all(r.getMessage().startswith("statistics failed") for r in retries)
    assert key not in caplog.text
    assert "try 2 of at most 10" in retries[0].getMessage()


def test_call_works_under_asyncio() -> None:
    attempts: list[int] = []

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise errors.ServerError("unavailable", status=503)
        return "ok"

    async def main() -> str:
        return await RetryPolicy(base_delay=0.001, max_delay=0.002).call(flaky)

    assert anyio.run(main, backend="asyncio") == "ok"
    assert len(attempts) == 3


# -- the resuming fetcher against a scripted fake -----------------------------------


def ramp(size: int) -> bytes:
    """Bytes that depend on their position, so a shifted or repeated byte shows."""
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


class Flaky:
    """A RangeFetcher over ``data`` that misbehaves as scripted, one step per request.

    Steps: ``None`` serve normally; ``("cut", n)`` send n bytes then TruncatedBody;
    ``("fail", exc)`` raise at open; ``("short", n)`` send n bytes and end quietly;
    ``("more", n)`` send n bytes beyond the end asked for; ``("break", n, exc)``
    send n bytes then raise ``exc``.
    """

    def __init__(self, data: bytes, *steps: Any, chunk: int = 100) -> None:
        self.data = data
        self.steps = list(steps)
        self.chunk = chunk
        self.requests: list[tuple[int, int]] = []

    def __call__(self, asset_id: str, start: int, end: int) -> Any:
        return self._open(asset_id, start, end)

    @asynccontextmanager
    async def _open(self, asset_id: str, start: int, end: int) -> AsyncIterator[Any]:
        self.requests.append((start, end))
        step = self.steps.pop(0) if self.steps else None
        if step is not None and step[0] == "fail":
            raise step[1]
        yield self._body(start, end, step)

    async def _body(self, start: int, end: int, step: Any) -> AsyncGenerator[bytes, None]:
        body = self.data[start : end + 1]
        limit = len(body)
        if step is not None and step[0] in ("cut", "short", "break"):
            limit = step[1]
        elif step is not None and step[0] == "more":
            body = self.data[start : end + 1 + step[1]]
            limit = len(body)
        for pos in range(0, limit, self.chunk):
            await trio.sleep(0)
            yield body[pos : min(pos + self.chunk, limit)]
        if step is not None and step[0] == "cut":
            raise errors.TruncatedBody(f"cut after {limit} bytes")
        if step is not None and step[0] == "break":
            raise step[2]


async def collect(fetch: Any, start: int, end: int, asset_id: str = "a1") -> bytes:
    parts = []
    async with fetch(asset_id, start, end) as chunks:
        async for chunk in chunks:
            parts.append(chunk)
    return b"".join(parts)


DATA = ramp(10_000)


async def test_resumes_at_the_exact_offset_after_cuts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(DATA, ("cut", 1234), ("cut", 1), ("cut", 500))
    assert await collect(resuming(flaky, FAST), 100, 8999) == DATA[100:9000]
    assert flaky.requests == [(100, 8999), (1334, 8999), (1335, 8999), (1835, 8999)]


async def test_retries_failures_at_open(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(
        DATA,
        ("fail", errors.ServerError("unavailable", status=503)),
        ("fail", errors.ServerError("unavailable", status=503)),
        ("cut", 10),
        ("fail", errors.RateLimited("slow", retry_after=2)),
    )
    started = trio.current_time()
    assert await collect(resuming(flaky, FAST), 0, 9999) == DATA
    assert [r[0] for r in flaky.requests] == [0, 0, 0, 10, 10]
    assert trio.current_time() - started >= 2.0  # the Retry-After was waited out


async def test_a_quietly_short_body_is_resumed(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(DATA, ("short", 300))
    assert await collect(resuming(flaky, FAST), 50, 999) == DATA[50:1000]
    assert flaky.requests == [(50, 999), (350, 999)]


async def test_one_byte_and_whole_ranges(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(DATA, ("fail", errors.ConnectError("refused")))
    assert await collect(resuming(flaky, FAST), 9999, 9999) == DATA[9999:]
    assert await collect(resuming(Flaky(DATA), FAST), 0, 9999) == DATA


async def test_never_a_byte_past_the_end(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(DATA, ("more", 5), chunk=1000)
    got: list[bytes] = []
    with pytest.raises(errors.ProtocolError):
        async with resuming(flaky, FAST)("a1", 0, 2499) as chunks:
            async for chunk in chunks:
                got.append(chunk)
    assert b"".join(got) == DATA[:2000]  # the chunk that overran was withheld
    assert len(flaky.requests) == 1  # a protocol error is not retried


async def test_final_errors_mid_stream_are_raised_with_the_bytes_so_far_right(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(DATA, ("cut", 200), ("break", 300, errors.StaleAsset("changed")))
    got: list[bytes] = []
    with pytest.raises(errors.StaleAsset):
        async with resuming(flaky, FAST)("a1", 0, 9999) as chunks:
            async for chunk in chunks:
                got.append(chunk)
    assert b"".join(got) == DATA[:500]
    assert len(flaky.requests) == 2


@RETRIES_WARN
async def test_gives_up_when_no_progress_is_made(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(DATA, *[("cut", 0)] * 50)
    policy = RetryPolicy(attempts=4, base_delay=0.5, max_delay=1, budget=30)
    with pytest.raises(errors.TruncatedBody):
        await collect(resuming(flaky, policy), 0, 9999)
    assert len(flaky.requests) == 4


async def test_progress_renews_the_tries(autojump_clock: trio.testing.MockClock) -> None:
    # 2 tries per stretch without progress, but each cut delivered bytes: it finishes
    flaky = Flaky(DATA, *[("cut", 1000)] * 9)
    policy = RetryPolicy(attempts=2, base_delay=0.5, max_delay=1, budget=30)
    assert await collect(resuming(flaky, policy), 0, 9999) == DATA
    assert [r[0] for r in flaky.requests] == list(range(0, 10_000, 1000))


@RETRIES_WARN
async def test_budget_bounds_a_stream_without_progress(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(DATA, *[("fail", errors.ConnectError("refused"))] * 1000)
    policy = RetryPolicy(attempts=1000, base_delay=1, max_delay=2, budget=12)
    started = trio.current_time()
    with pytest.raises(errors.ConnectError):
        await collect(resuming(flaky, policy), 0, 9999)
    assert 12 <= trio.current_time() - started <= 12.001


async def test_bad_ranges_are_refused() -> None:
    with pytest.raises(ValueError):
        await collect(resuming(Flaky(DATA), FAST), 10, 9)


async def test_closing_early_closes_the_stream(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(DATA, chunk=10)
    async with resuming(flaky, FAST)("a1", 0, 9999) as chunks:
        async for chunk in chunks:
            assert chunk == DATA[:10]
            break
    assert len(flaky.requests) == 1


# -- over real HTTP against the fake server --------------------------------------------


def asset(fake_immich: FakeImmich) -> tuple[str, bytes]:
    photo = fake_immich.library.find("Kinkaku-ji.jpg")
    return photo.id, fake_immich.library.content(photo.id)


def original_ranges(fake_immich: FakeImmich) -> list[str | None]:
    return [
        r.range for r in fake_immich.requests.select("GET", "/api/assets/") if "original" in r.path
    ]


async def test_resuming_over_http_survives_cuts_and_truncation(fake_immich: FakeImmich) -> None:
    asset_id, content = asset(fake_immich)
    path = f"/api/assets/{asset_id}/original"
    async with ImmichConnector(fake_immich.url, fake_immich.api_key, retry_policy=None) as immich:
        await immich.connect()
        fetch = resuming(immich.stream_full_resolution_file, FAST)
        fake_immich.faults.cut_after(5000, times=2, path=path)
        fake_immich.faults.truncate(3000, times=1, path=path)
        fake_immich.requests.clear()
        assert await collect(fetch, 1000, len(content) - 1, asset_id) == content[1000:]
        ranges = original_ranges(fake_immich)
        assert len(ranges) == 4
        assert ranges[0] == f"bytes=1000-{len(content) - 1}"
        starts = [int(r.split("=")[1].split("-")[0]) for r in ranges if r]
        # each retry resumed further on, never from the start, never past what was sent
        assert starts == sorted(starts) and len(set(starts)) == 4
        assert all(later - earlier <= 5000 for earlier, later in itertools.pairwise(starts))
        # the retries asked only for the bytes still missing
        sent = sum(r.bytes_sent for r in fake_immich.requests.select("GET", path))
        assert sent <= len(content) - 1000 + 2 * 5000 + 3000


@RETRIES_WARN
async def test_resuming_over_http_rides_out_5xx_and_429(fake_immich: FakeImmich) -> None:
    asset_id, content = asset(fake_immich)
    path = f"/api/assets/{asset_id}/original"
    async with ImmichConnector(fake_immich.url, fake_immich.api_key, retry_policy=None) as immich:
        await immich.connect()
        fetch = resuming(immich.stream_full_resolution_file, FAST)
        fake_immich.faults.fail(503, times=2, path=path)
        fake_immich.faults.fail(429, times=1, retry_after=1, path=path)
        fake_immich.requests.clear()
        started = trio.current_time()
        assert await collect(fetch, 0, 9999, asset_id) == content[:10000]
        assert trio.current_time() - started >= 0.9  # Retry-After: 1 was honoured
        statuses = [r.status for r in fake_immich.requests.select("GET", path)]
        assert statuses == [503, 503, 429, 206]


async def test_resuming_over_http_gives_up_on_500_and_on_200_for_a_range(
    fake_immich: FakeImmich,
) -> None:
    asset_id, _ = asset(fake_immich)
    path = f"/api/assets/{asset_id}/original"
    async with ImmichConnector(fake_immich.url, fake_immich.api_key, retry_policy=None) as immich:
        await immich.connect()
        fetch = resuming(immich.stream_full_resolution_file, FAST)
        fake_immich.faults.fail(500, times=5, path=path)
        fake_immich.requests.clear()
        with pytest.raises(errors.ServerError):
            await collect(fetch, 0, 999, asset_id)
        assert len(fake_immich.requests.select("GET", path)) == 1
        fake_immich.faults.clear()
        fake_immich.faults.ignore_range(path=path)
        with pytest.raises(errors.ProtocolError, match="ignored the range"):
            await collect(fetch, 100, 999, asset_id)


@RETRIES_WARN
async def test_resuming_over_http_fails_within_the_budget_when_the_server_is_gone(
    fake_immich: FakeImmich,
) -> None:
    asset_id, _ = asset(fake_immich)
    async with ImmichConnector(fake_immich.url, fake_immich.api_key, retry_policy=None) as immich:
        await immich.connect()
        policy = RetryPolicy(attempts=100, base_delay=0.05, max_delay=0.2, budget=1.0)
        fetch = resuming(immich.stream_full_resolution_file, policy)
        fake_immich.faults.refuse_connections()
        started = trio.current_time()
        with pytest.raises(errors.ConnectError):
            await collect(fetch, 0, 999, asset_id)
        assert trio.current_time() - started < 1.0 + 1.0  # budget + slack (refusal is quick)
        fake_immich.faults.resume_connections()
        assert len(await collect(fetch, 0, 999, asset_id)) == 1000


# -- the connector's own retries over real HTTP --------------------------------------


@RETRIES_WARN
async def test_connector_retries_idempotent_calls(fake_immich: FakeImmich) -> None:
    async with ImmichConnector(fake_immich.url, fake_immich.api_key, retry_policy=FAST) as immich:
        fake_immich.faults.fail(502, times=1, path="/api/server/version")
        await immich.connect()
        fake_immich.faults.fail(503, times=2, path="/api/assets/statistics")
        fake_immich.faults.fail(429, times=1, retry_after=1, path="/api/assets/statistics")
        fake_immich.requests.clear()
        assert (await immich.get_asset_statistics())["total"] > 0
        assert [r.status for r in fake_immich.requests.select("GET", "/api/assets/statistics")] == [
            503,
            503,
            429,
            200,
        ]
        # read-only POSTs: search
        fake_immich.faults.fail(504, times=1, path="/api/search/metadata")
        fake_immich.faults.truncate(times=1, path="/api/search/metadata")
        assert len(await immich.get_assets(size=5)) == 5
        # thumbnails and HEAD
        asset_id, content = asset(fake_immich)
        fake_immich.faults.cut_after(10, times=1, path=f"/api/assets/{asset_id}/thumbnail")
        data, content_type = await immich.get_thumbnail_response(asset_id, "preview")
        assert content_type == "image/jpeg" and data[:2] == b"\xff\xd8"
        fake_immich.faults.fail(503, times=1, path=f"/api/assets/{asset_id}/original")
        assert await immich.head_original(asset_id) == len(content)


async def test_connector_does_not_retry_final_errors(fake_immich: FakeImmich) -> None:
    async with ImmichConnector(fake_immich.url, fake_immich.api_key, retry_policy=FAST) as immich:
        await immich.connect()
        fake_immich.faults.fail(500, times=3, path="/api/tags")
        fake_immich.requests.clear()
        with pytest.raises(errors.ServerError):
            await immich.get_tags()
        assert len(fake_immich.requests.select("GET", "/api/tags")) == 1
        fake_immich.faults.clear()
        fake_immich.faults.revoke_key()
        with pytest.raises(errors.AuthenticationError):
            await immich.get_tags()
        assert len(fake_immich.requests.select("GET", "/api/tags")) == 2


@pytest.mark.expect_log(r"; try \d+ of at most", logger="immichfs.client.retry", optional=True)
async def test_connector_retries_are_bounded_by_the_budget(fake_immich: FakeImmich) -> None:
    policy = RetryPolicy(attempts=100, base_delay=0.1, max_delay=0.3, budget=1.5)
    async with ImmichConnector(
        fake_immich.url, fake_immich.api_key, retry_policy=policy, timeout=0.5
    ) as immich:
        await immich.connect()
        fake_immich.faults.delay(3, path="/api/assets/statistics")
        started = trio.current_time()
        with pytest.raises(errors.RequestTimeout):
            await immich.get_asset_statistics()
        # timeout + budget + slack
        assert trio.current_time() - started < 0.5 + 1.5 + 1.0
        fake_immich.faults.clear()


async def test_connector_without_retries_fails_at_once(fake_immich: FakeImmich) -> None:
    for disabled in (None, RetryPolicy(attempts=1)):
        async with ImmichConnector(
            fake_immich.url, fake_immich.api_key, retry_policy=disabled
        ) as immich:
            await immich.connect()
            assert immich.retry_policy is None
            fake_immich.faults.fail(503, times=1, path="/api/assets/statistics")
            with pytest.raises(errors.ServerError):
                await immich.get_asset_statistics()
    with pytest.raises(errors.ConfigError):
        ImmichConnector(fake_immich.url, fake_immich.api_key, retry_policy=3)  # type: ignore[arg-type]
