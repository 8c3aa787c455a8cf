"""Stand-ins for the kernel's side when tests call the FUSE handlers directly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyfuse3


@dataclass
class Ctx:
    """Stands in for pyfuse3.RequestContext (whose attributes are read-only)."""

    uid: int = 0
    gid: int = 0
    pid: int = 1
    umask: int = 0o022


CTX: Any = Ctx()


@dataclass
class Replies:
    """An injected readdir_reply: collects entries, accepts at most ``room`` per call."""

    room: int = 1_000_000
    entries: list[tuple[bytes, int, int]] = field(default_factory=list)
    _used: int = 0

    def __call__(
        self, token: Any, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int
    ) -> bool:
        if self._used >= self.room:
            return False
        self._used += 1
        self.entries.append((name, attr.st_ino, next_id))
        return True

    def next_call(self) -> None:
        self._used = 0
