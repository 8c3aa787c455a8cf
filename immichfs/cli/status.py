"""``immichfs status MOUNTPOINT``: what a mounted immichfs is doing.

It reads ``MOUNTPOINT/.immichfs/status`` (see :mod:`immichfs.vfs.status`) like any
program would, so it needs neither the server nor the key, and works from any
container or machine that sees the mount. It prints a summary, or with
``--json`` the report itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from immichfs.errors import UserError
from immichfs.fuse.kernel import FSTYPE, mount_of

log = logging.getLogger(__name__)

STATUS_PATH = (".immichfs", "status")
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", help="where immichfs is mounted (or any path inside it)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def read_status(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> dict[str, Any]:
    """The report of the immichfs mount holding ``path``; UserError if there is none."""
    target = os.path.realpath(path)
    found = mount_of(target, mountinfo)
    if found is None or found.fstype != FSTYPE:
        what = f"{found.fstype} mounted at {found.mountpoint}" if found else "in no mount"
        raise UserError(f"{path} is not an immichfs mount (it is {what})")
    status_file = Path(found.mountpoint, *STATUS_PATH)
    try:
        data = status_file.read_bytes()
    except OSError as exc:
        raise UserError(
            f"cannot read {status_file}: {exc.strerror or exc} (is the immichfs process running?)"
        ) from None
    try:
        report = json.loads(data)
    except ValueError:
        raise UserError(f"{status_file} is not a status report ({len(data)} bytes)") from None
    if not isinstance(report, dict):
        raise UserError(f"{status_file} is not a status report")
    return report


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB' (binary units, one decimal; bytes as a whole number)."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """3723.4 → '1:02:03'; a day or more → '2 days, 1:02:03'."""
    return str(timedelta(seconds=int(seconds)))


def _percent(rate: Any) -> str:
    return f"{rate * 100:.1f}%" if isinstance(rate, int | float) else "-"


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    if word.endswith("y"):
        return f"{n} {word[:-1]}ies"
    return f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _seconds(value: Any) -> str:
    return f"{value:g} s" if isinstance(value, int | float) else "?"


def format_summary(report: Mapping[str, Any]) -> str:
    """The report for a person: one line per subject, then a table of the caches."""
    server = report.get("server") or {}
    settings = report.get("settings") or {}
    api = report.get("api") or {}
    originals = report.get("originals") or {}
    files = report.get("files") or {}
    readahead = report.get("readahead") or {}
    refresh = report.get("refresh")
    invalidations = int((report.get("kernel") or {}).get("invalidations") or 0)
    errors = format_errors(report.get("errors") or {}, report.get("error_causes") or {})
    lines = [
        f"immichfs {report.get('immichfs_version', '?')} mounted at "
        f"{report.get('mountpoint') or '?'} (pid {report.get('pid', '?')}), "
        f"up {human_duration(float(report.get('uptime_seconds') or 0))}",
        f"server      {server.get('url', '?')} (Immich {server.get('version') or '?'})",
        f"settings    listing TTL {_seconds(settings.get('listing_ttl'))}, "
        f"asset TTL {_seconds(settings.get('asset_ttl'))}, "
        f"kernel TTL {_seconds(settings.get('kernel_ttl'))}, "
        f"read-ahead {settings.get('readahead_mb', '?')} MiB per file "
        f"(budget {settings.get('readahead_budget_mb', '?')} MiB)",
    ]
    if refresh:
        last = refresh.get("last_refresh_at") or "not yet"
        lines.append(
            f"refresh     every {_seconds(refresh.get('interval'))}, "
            f"{_plural(int(refresh.get('cycles') or 0), 'cycle')}, last {last}"
        )
    else:
        lines.append("refresh     off")
    lines += [
        f"api         {_plural(int(api.get('requests') or 0), 'request')}, "
        f"{api.get('failed', 0)} failed, {human_bytes(api.get('bytes_received') or 0)} received",
        f"originals   {_plural(int(originals.get('range_requests') or 0), 'ranged GET')}, "
        f"{human_bytes(originals.get('bytes_fetched') or 0)} received "
        f"({_plural(int(originals.get('retries') or 0), 'retry')}, "
        f"{_plural(int(originals.get('fetch_errors') or 0), 'error')})",
        f"open        {_plural(int(files.get('open_files') or 0), 'file')}, "
        f"{_plural(int(files.get('open_directories') or 0), 'directory')}",
        f"read-ahead  {human_bytes(readahead.get('bytes_in_use') or 0)} in use of "
        f"{human_bytes(readahead.get('budget_bytes') or 0)} "
        f"(peak {human_bytes(readahead.get('peak_bytes') or 0)})",
        f"kernel      {_plural(invalidations, 'invalidation')}",
        f"errors      {errors}",
    ]
    connection = report.get("connection")
    if connection:
        lines.insert(2, f"connection  {connection}")
    disk = report.get("disk_cache")
    if disk:
        lines.append(
            f"disk cache  {_plural(int(disk.get('hits') or 0), 'hit')}, "
            f"{_plural(int(disk.get('misses') or 0), 'miss')}, "
            f"{human_bytes(disk.get('bytes_on_disk') or 0)} on disk of "
            f"{human_bytes(disk.get('limit') or 0)}, "
            f"{_plural(int(disk.get('evictions') or 0), 'eviction')}, "
            f"{_plural(int(disk.get('dropped_blocks') or 0), 'block')} failed verification "
            f"({disk.get('directory', '?')})"
        )
    caches: Mapping[str, Mapping[str, Any]] = report.get("cache") or {}
    if caches:
        width = max(len(name) for name in caches)
        lines.append(
            f"cache       {'':{width}}  {'hit rate':>8}  {'hits':>9}  {'misses':>9}  {'entries':>9}"
        )
        for name, cache in caches.items():
            lines.append(
                f"            {name:{width}}  {_percent(cache.get('hit_rate')):>8}  "
                f"{cache.get('hits', 0):>9}  {cache.get('misses', 0):>9}  "
                f"{cache.get('entries', 0):>9}"
            )
    return "\n".join(lines)


def format_errors(errors: Mapping[str, int], causes: Mapping[str, int]) -> str:
    """'EIO 2, ENOENT 14 (ServerError 2)': most frequent first; 'none' when empty."""
    if not errors:
        return "none"
    shown = ", ".join(
        f"{name} {count}" for name, count in sorted(errors.items(), key=lambda i: (-i[1], i[0]))
    )
    if causes:
        shown += (
            " ("
            + ", ".join(
                f"{name} {count}"
                for name, count in sorted(causes.items(), key=lambda i: (-i[1], i[0]))
            )
            + ")"
        )
    return shown


def run(args: argparse.Namespace) -> int:
    report = read_status(Path(args.mountpoint))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_summary(report))
    return 0
