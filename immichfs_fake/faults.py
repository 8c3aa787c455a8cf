"""Fault switches and the request log of the fake server.

A test turns a fault on, makes its requests, and asserts on what the client
did; every switch is thread-safe and consumed per matching request
(``times=None`` means until :meth:`Faults.clear`). ``path`` filters match a
request path by prefix, or as a glob when they contain ``*``.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Rule:
    kind: str  # cut | truncate | fail | delay | ignore_range | slow | stall
    path: str | None
    times: int | None
    nbytes: int = 0
    status: int = 503
    retry_after: int | None = None
    seconds: float = 0.0

    def matches(self, path: str) -> bool:
        if self.path is None:
            return True
        if "*" in self.path:
            return fnmatch.fnmatchcase(path, self.path)
        return path.startswith(self.path)


class Faults:
    """Switches a test turns on to make the server misbehave."""

    def __init__(self, on_refuse: Callable[[bool], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._on_refuse = on_refuse
        self.key_revoked = False
        self.refusing = False

    def _add(self, rule: Rule) -> None:
        if rule.times is not None and rule.times < 1:
            raise ValueError("times must be >= 1 or None")
        with self._lock:
            self._rules.append(rule)

    def cut_after(self, nbytes: int, times: int | None = 1, *, path: str | None = None) -> None:
        """Reset the connection after ``nbytes`` bytes of a response body."""
        self._add(Rule("cut", path, times, nbytes=nbytes))

    def truncate(
        self, nbytes: int | None = None, times: int | None = 1, *, path: str | None = None
    ) -> None:
        """Send only ``nbytes`` (default: half) of a body whose full Content-Length was
        announced, then close the connection cleanly."""
        self._add(Rule("truncate", path, times, nbytes=-1 if nbytes is None else nbytes))

    def fail(
        self,
        status: int = 503,
        times: int | None = 1,
        retry_after: int | None = None,
        *,
        path: str | None = None,
    ) -> None:
        """Answer ``status`` (5xx or 429) instead of serving, optionally with Retry-After."""
        self._add(Rule("fail", path, times, status=status, retry_after=retry_after))

    def delay(self, seconds: float, *, times: int | None = None, path: str | None = None) -> None:
        """Wait ``seconds`` before answering."""
        self._add(Rule("delay", path, times, seconds=seconds))

    def slow_body(
        self, bytes_per_second: int, times: int | None = None, *, path: str | None = None
    ) -> None:
        """Send response bodies at about ``bytes_per_second``."""
        if bytes_per_second < 1:
            raise ValueError("bytes_per_second must be >= 1")
        self._add(Rule("slow", path, times, nbytes=bytes_per_second))

    def stall(
        self,
        nbytes: int,
        seconds: float,
        times: int | None = 1,
        *,
        path: str | None = None,
    ) -> None:
        """Send ``nbytes`` of a body, then pause ``seconds`` before the rest
        (a read timeout in the middle of a download)."""
        self._add(Rule("stall", path, times, nbytes=nbytes, seconds=seconds))

    def ignore_range(self, *, times: int | None = None, path: str | None = None) -> None:
        """Answer ranged requests with 200 and the whole body."""
        self._add(Rule("ignore_range", path, times))

    def refuse_connections(self) -> None:
        """Stop listening (new connections are refused) and drop open connections."""
        self.refusing = True
        if self._on_refuse:
            self._on_refuse(True)

    def resume_connections(self) -> None:
        """Listen again on the same port."""
        self.refusing = False
        if self._on_refuse:
            self._on_refuse(False)

    def revoke_key(self) -> None:
        """From now on the key is rejected (401 "Invalid API key")."""
        self.key_revoked = True

    def restore_key(self) -> None:
        self.key_revoked = False

    def clear(self) -> None:
        """Turn every switch off (connections are accepted again)."""
        with self._lock:
            self._rules.clear()
        self.key_revoked = False
        if self.refusing:
            self.resume_connections()

    def take(self, kind: str, path: str, body_length: int | None = None) -> Rule | None:
        """The first matching active rule of ``kind``, consuming one use of it.

        Byte-count faults (cut, truncate) match only bodies longer than the
        bytes they let through, so they never fire on a body they cannot break.
        """
        with self._lock:
            for rule in self._rules:
                if rule.kind == kind and rule.matches(path):
                    if (
                        body_length is not None
                        and rule.kind in ("cut", "truncate", "stall")
                        and rule.nbytes >= 0
                        and rule.nbytes >= body_length
                    ):
                        continue
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self._rules.remove(rule)
                    return rule
        return None

    def active(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)


@dataclass(slots=True)
class RequestRecord:
    """One answered request. Logged before its body is written (so a client that
    has its answer always finds the record); ``bytes_sent`` is the planned body
    length, lowered if the connection broke while sending."""

    method: str
    path: str
    query: str  # with any apiKey value masked
    status: int
    bytes_sent: int  # body bytes actually written
    range: str | None
    time: float = field(default_factory=time.time)
    #: ``time.monotonic()`` when the request had been read, and when its response's
    #: first byte (the status line) was about to go out
    received: float = 0.0
    first_byte: float = 0.0
    #: the request's body as sent (JSON searches: what the client asked for)
    body: bytes = b""


class RequestLog:
    """Every request the server answered, in order (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __getitem__(self, index: int) -> RequestRecord:
        with self._lock:
            return self._records[index]

    def select(
        self,
        method: str | None = None,
        path_prefix: str | None = None,
        status: int | None = None,
    ) -> list[RequestRecord]:
        return [
            r
            for r in self.snapshot()
            if (method is None or r.method == method.upper())
            and (path_prefix is None or r.path.startswith(path_prefix))
            and (status is None or r.status == status)
        ]
