"""Retrying transient failures: a policy, a ``call`` helper and a resuming byte fetcher.

Users run long jobs over flaky home networks and servers restart, so a request
that failed transiently (:class:`~immichfs.errors.TransientError`: a refused or
broken connection, a timeout, a truncated body, 502/503/504, 429) is tried
again after a pause. The pauses follow "full jitter" exponential backoff
(a random time between 0 and ``base_delay * 2**(attempt-1)``, at most
``max_delay``) so that many readers hit by the same outage do not come back in
step, and a server's ``Retry-After`` is honoured. Everything is bounded: at
most ``attempts`` tries, and no retry starts later than ``budget`` seconds
after the operation started, so no operation takes longer than the budget plus
one request's timeout (the last try).

What is retried, and why:

* ``ConnectError``, ``RequestTimeout``, ``TruncatedBody``, ``RateLimited``:
  always (the same request may well succeed).
* ``ServerError`` only for 502, 503 and 504 (``retry_statuses``): those come
  from a proxy or a restarting server. Immich answers 500 for its own unhandled
  exceptions, which repeat for the same request (v2.7.5 answers 500 to a range
  past the end and to a malformed Range), so retrying a 500 would only delay
  the error by the whole budget.
* anything else (401, 403, 400, not found, protocol errors) is raised at once.

The log level rises with the attempt: DEBUG for the first retry, INFO for the
second, WARNING from the third on. Messages name the operation and the
error's own message, which never holds the API key (they are also scrubbed).

:func:`resuming` wraps a ranged fetcher so that a download cut after some
bytes continues from the exact offset reached instead of starting over.
"""

from __future__ import annotations

import logging
import random as _random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from immichfs.errors import (
    ProtocolError,
    ServerError,
    TransientError,
    TruncatedBody,
    Unreachable,
)
from immichfs.logs import scrub

log = logging.getLogger(__name__)

T = TypeVar("T")

#: (asset_id, start, end_inclusive) -> async context manager of byte chunks
#: (the same shape as :data:`immichfs.catalog.reader.RangeFetcher`)
RangeFetcher = Callable[[str, int, int], AbstractAsyncContextManager[AsyncIterator[bytes]]]
Sleep = Callable[[float], Awaitable[Any]]
Clock = Callable[[], float]
Random = Callable[[], float]
#: log level of the first, second and any later retry
_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry transient failures (a value; see the module doc).

    - ``attempts``: most tries in all, the first included (1 = never retry).
    - ``base_delay`` / ``max_delay``: the backoff ceiling doubles from
      ``base_delay`` per attempt up to ``max_delay``; the pause is a uniformly
      random fraction of it (full jitter).
    - ``budget``: seconds after the operation started within which retries may
      start; ``Retry-After`` is honoured but never beyond it. Defaults to the
      ``retry_budget`` setting's default.
    - ``retry_statuses``: the 5xx statuses worth retrying.
    - ``retry_unreachable``: whether a refused connection is retried.
    """

    attempts: int = 8
    base_delay: float = 0.25
    max_delay: float = 8.0
    budget: float = 30.0
    retry_statuses: frozenset[int] = field(default=frozenset({502, 503, 504}))
    #: False: a server that cannot even be connected to fails at once (the gateway
    #: answers 502 and probes in the background instead of every request waiting)
    retry_unreachable: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ValueError(f"attempts must be an integer, not {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        for name in ("base_delay", "max_delay", "budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number ≥ 0, not {value!r}")

    @property
    def enabled(self) -> bool:
        return self.attempts > 1 and self.budget > 0

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another try under this policy."""
        if not isinstance(error, TransientError):
            return False
        if isinstance(error, Unreachable) and not self.retry_unreachable:
            return False
        if isinstance(error, ServerError):
            return error.status is None or error.status in self.retry_statuses
        return True

    def backoff(self, attempt: int, fraction: float) -> float:
        """The pause after failed try number ``attempt`` (1-based), for a random ``fraction``."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 60))
        return ceiling * min(max(fraction, 0.0), 1.0)

    def start(
        self,
        *,
        sleep: Sleep | None = None,
        clock: Clock | None = None,
        random: Random | None = None,
    ) -> Retrying:
        """A fresh retry state for one operation (the injectables are for tests)."""
        return Retrying(self, sleep=sleep, clock=clock, random=random)

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        what: str = "request",
        progress: Callable[[], int] | None = None,
        sleep: Sleep | None = None,
        clock: Clock | None = None,
        random: Random | None = None,
    ) -> T:
        """``await fn()``, again after each retryable failure, within the policy's bounds.

        This is the one retry loop of immichfs. ``progress``, when given, tells how
        far the operation got (bytes received): a try that moved it forward
        renews the tries and the budget (:meth:`Retrying.progressed`), so a long
        download resumed at the offset reached is not failed for cuts spread
        over hours. Works under trio and asyncio (anyio's sleep and clock by
        default, so trio's autojump clock drives it in tests). Cancellation is
        never caught.
        """
        state = self.start(sleep=sleep, clock=clock, random=random)
        while True:
            before = progress() if progress is not None else 0
            try:
                return await fn()
            except TransientError as exc:
                if progress is not None and progress() > before:
                    state.progressed()
                await state.failed(exc, what)


class Retrying:
    """The retry state of one operation: tries made and the deadline.

    ``await state.failed(exc, what)`` either sleeps the backoff (so the caller
    tries again) or re-raises ``exc`` when it is not retryable or the bounds
    are reached. ``state.progressed()`` tells it the operation moved forward
    (a resumed download received bytes): the count and the budget start again,
    so a long download is not failed for cuts spread over hours.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Sleep | None = None,
        clock: Clock | None = None,
        random: Random | None = None,
    ) -> None:
        self.policy = policy
        self._sleep: Sleep = sleep or anyio.sleep
        self._clock: Clock = clock or anyio.current_time
        self._random: Random = random or _random.random
        self.failures = 0
        self.total_failures = 0
        # from the start, not the first failure: a try that hangs for the whole
        # timeout before failing counts against the budget
        self._deadline = self._clock() + policy.budget

    def progressed(self) -> None:
        self.failures = 0
        self._deadline = self._clock() + self.policy.budget

    def delay_for(self, exc: TransientError) -> float | None:
        """Seconds to wait before the next try, or None to give up (no side effects)."""
        policy = self.policy
        if not policy.retryable(exc) or self.failures + 1 >= policy.attempts:
            return None
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            return None
        delay = policy.backoff(self.failures + 1, self._random())
        if exc.retry_after is not None:
            # the server said when to come back; never past the budget
            delay = max(delay, float(exc.retry_after))
        return min(delay, remaining)

    async def failed(self, exc: TransientError, what: str) -> None:
        """Sleep before the next try, or re-raise ``exc``."""
        delay = self.delay_for(exc)
        self.total_failures += 1
        if delay is None:
            if self.failures and self.policy.retryable(exc):
                log.debug("%s: giving up after %d tries", what, self.failures + 1)
            raise exc
        self.failures += 1
        level = _LEVELS[min(self.failures, len(_LEVELS)) - 1]
        log.log(
            level,
            "%s failed (%s); try %d of at most %d in %.2f s",
            what,
            scrub(str(exc)),
            self.failures + 1,
            self.policy.attempts,
            delay,
        )
        await self._sleep(delay)


def resuming(
    fetch: RangeFetcher,
    policy: RetryPolicy,
    *,
    sleep: Sleep | None = None,
    clock: Clock | None = None,
    random: Random | None = None,
) -> RangeFetcher:
    """``fetch`` made to survive transient failures, resuming at the exact offset reached.

    The result has ``fetch``'s signature: ``(asset_id, start, end_inclusive)`` to
    an async context manager of chunks. If opening or reading the stream fails
    with a retryable error before ``end``, the range is asked for again from
    ``start`` plus the bytes already yielded, after the policy's backoff, so the
    consumer sees exactly the bytes of ``[start, end]`` once, in order, or an
    exception. A base stream that ends early without an error counts as a
    truncated body; one that sends more than asked for is a ProtocolError (not
    retried): no byte past ``end`` is ever yielded. The tries and the budget
    start again whenever bytes arrived since the last failure. The retrying is
    :meth:`RetryPolicy.call`'s; a task hands the chunks over one at a time.
    """

    @asynccontextmanager
    async def fetcher(
        asset_id: str, start: int, end: int
    ) -> AsyncGenerator[AsyncIterator[bytes], None]:
        if start < 0 or end < start:
            raise ValueError(f"bad range {start}-{end} (end is inclusive)")
        # no buffer: a chunk is fetched only once the consumer took the one before
        send, receive = anyio.create_memory_object_stream[bytes](0)
        offset = start

        async def one_try() -> None:
            nonlocal offset
            if offset > start:
                log.debug("asset %s: resuming at offset %d", asset_id, offset)
            async with fetch(asset_id, offset, end) as chunks:
                try:
                    async for chunk in chunks:
                        if not chunk:
                            continue
                        if len(chunk) > end + 1 - offset:
                            raise ProtocolError(
                                f"asset {asset_id}: the server sent more bytes than bytes "
                                f"{start}-{end} (at offset {offset})"
                            )
                        await send.send(chunk)
                        offset += len(chunk)
                finally:
                    # close an abandoned body now, not when the garbage collector runs
                    aclose = getattr(chunks, "aclose", None)
                    if aclose is not None:
                        await aclose()
            if offset <= end:
                raise TruncatedBody(
                    f"asset {asset_id}: the answer ended at offset {offset}, before {end + 1}"
                )

        async def produce() -> None:
            async with send:
                await policy.call(
                    one_try,
                    what=f"asset {asset_id}: bytes {start}-{end}",
                    progress=lambda: offset,
                    sleep=sleep,
                    clock=clock,
                    random=random,
                )

        failure: list[BaseException] = []

        async def guarded() -> None:
            try:
                await produce()
            except Exception as exc:  # handed to the consumer as itself, not in a group
                failure.append(exc)
                send.close()

        async def chunks() -> AsyncGenerator[bytes, None]:
            async with receive:
                async for chunk in receive:
                    yield chunk
            if failure:
                raise failure[0]

        error: BaseException | None = None
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(guarded)
                stream = chunks()
                try:
                    yield stream
                finally:
                    await stream.aclose()
                    group.cancel_scope.cancel()
        except BaseExceptionGroup as grouped:
            # the producer never raises (guarded), so this is the consumer's own error:
            # raised as itself, its cause kept
            if len(grouped.exceptions) != 1:
                raise
            error = grouped.exceptions[0]
        if error is not None:
            raise error

    return fetcher
