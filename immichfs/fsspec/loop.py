"""A trio event loop in a thread of its own, for synchronous callers.

fsspec's API is synchronous and the tree is trio. A :class:`TrioThread` runs
``trio.run`` in a daemon thread that holds an async context (the connector, the
byte client, the tree and its readers) open until :meth:`TrioThread.close`;
callers in any other thread block in ``trio.from_thread.run`` while their
coroutine runs on that loop, so calls from many threads (Dask's worker threads)
run concurrently and share one tree, its caches and its connections.

This was chosen over ``trio.lowlevel.start_guest_run`` (which needs a host loop
to drive it: a sync caller has none) and over one ``trio.run`` per call (which
would lose the caches and the connections between calls).

Fork: a child process has no copy of the thread, so :func:`session` keys the
threads by process id and a child starts its own on first use. Every thread is
closed at interpreter exit (the connections are shut properly).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Hashable
from contextlib import AbstractAsyncContextManager, suppress
from typing import Generic, TypeVar, TypeVarTuple

import trio

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Ts = TypeVarTuple("Ts")

#: seconds close() waits for the loop to finish its clean-up
CLOSE_TIMEOUT = 10.0
#: seconds a new loop may take to start (it requests nothing yet: only a stuck thread
#: takes this long)
START_TIMEOUT = 60.0


class LoopClosed(RuntimeError):
    """The loop thread has ended (closed, or the interpreter is exiting)."""


class TrioThread(Generic[T]):
    """``trio.run`` in a daemon thread, holding ``opener()``'s context open.

    :meth:`run` calls an async function with that context's value on the loop.
    """

    def __init__(self, opener: Callable[[], AbstractAsyncContextManager[T]], name: str) -> None:
        self._opener = opener
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._state: T | None = None
        self._error: BaseException | None = None
        self._closed = False
        self.pid = os.getpid()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise LoopClosed(f"the immich:// event loop did not start within {START_TIMEOUT:g} s")
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the starting thread
            if not self._ready.is_set():
                self._error = exc
            else:
                log.exception("the trio loop thread ended with an error")
        finally:
            self._closed = True
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = trio.Event()
        async with self._opener() as state:
            self._state = state
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    @property
    def closed(self) -> bool:
        return self._closed or not self._thread.is_alive()

    def run(self, fn: Callable[[T, *Ts], Awaitable[R]], *args: *Ts) -> R:
        """``await fn(state, *args)`` on the loop; blocks this thread until it is done."""
        if self.closed or self._token is None or os.getpid() != self.pid:
            raise LoopClosed("the immich:// event loop is closed")
        state = self._state
        assert state is not None

        async def call() -> R:
            return await fn(state, *args)

        try:
            return trio.from_thread.run(call, trio_token=self._token)
        except trio.RunFinishedError:
            raise LoopClosed("the immich:// event loop is closed") from None

    def close(self) -> None:
        """End the loop (closing what the opener opened) and wait for the thread."""
        if self.closed or os.getpid() != self.pid:
            return
        stop, token = self._stop, self._token
        if stop is not None and token is not None:
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=token)
        self._thread.join(CLOSE_TIMEOUT)


_lock = threading.Lock()
_threads: dict[tuple[int, Hashable], TrioThread[object]] = {}
#: set at interpreter exit: no loop starts after close_all (a file closed by the garbage
#: collector during shutdown would otherwise start one, and wait for it forever)
_exiting = False


def session(
    key: Hashable, opener: Callable[[], AbstractAsyncContextManager[T]], name: str
) -> TrioThread[T]:
    """The loop thread of this process for ``key``, started on first use (or after a fork)."""
    full = (os.getpid(), key)
    with _lock:
        if _exiting:
            raise LoopClosed("the interpreter is exiting")
        thread = _threads.get(full)
        if thread is None or thread.closed:
            thread = TrioThread(opener, name)
            _threads[full] = thread
        return thread  # type: ignore[return-value]


def close_all() -> None:
    """Close every loop thread this process started (in tests; at exit, see _at_exit)."""
    with _lock:
        mine = [t for (pid, _), t in _threads.items() if pid == os.getpid()]
        _threads.clear()
    for thread in mine:
        try:
            thread.close()
        except Exception:  # at exit: never let one failure keep the others open
            log.debug("closing a loop thread failed", exc_info=True)


def _after_fork_in_child() -> None:
    # the parent's threads do not exist here, and a lock held at the fork never opens
    global _lock
    _lock = threading.Lock()
    _threads.clear()


def _at_exit() -> None:
    global _exiting
    _exiting = True
    close_all()


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
