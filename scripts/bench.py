#!/usr/bin/env python3
"""Throughput and memory benchmark of immichfs against the bundled fake server.

Every figure is compared with a baseline measured in the same run, on the same
machine, against the same fake server:

1. ``dd bs=1M`` of a 1 GiB original through the mount vs ``curl -o /dev/null``;
2. ``cp -r`` of a directory of 200 × 4 MiB photos vs ``curl`` of the same files,
   and 16 parallel readers vs ``curl --parallel --parallel-max 16``;
3. a cold 4 KiB read at 900 MiB: GETs and bytes sent by the server (its request
   log), and latency vs one ranged ``curl``;
4. peak RSS of the mount process while streaming the 1 GiB file;
5. ``ls -l`` of a directory of 100,000 assets, cold, vs the connector alone
   paging the same listing; warm ``ls -l`` (and, as the floor on this machine,
   ``ls -l`` of as many empty files on tmpfs); peak RSS with the listing cached;
6. 2,000 × 200 KiB files read by 8 parallel readers: files per second;
7. ``dask_images_per_s``: 500 photos processed (``immichfs.dask``, gradient maps) on
   LocalClusters of 1, 2 and 4 worker processes reading through ``immich://``, vs this
   process doing the same work alone (no mount; see docs/DASK.md);
8. an Immich-like origin (the fake with ``realistic=True``: 5 ms before each
   response's first byte, 350 MiB/s per response, as real Immich servers on
   loopback measured): ``dd bs=1M`` of a 512 MiB original through the mount vs
   ``curl -o /dev/null`` and ``curl | dd bs=1M`` of the same original, and a
   cold 4 KiB read there (GETs, latency vs one ranged ``curl``);
9. the persistent cache (``--only cache``): ``ls -l`` of the 100,000 assets after a
   remount with the catalog on disk; a first ``cat`` of 200 × 4 MiB photos with the
   content cache on vs off, from the loopback fake (the machine's CPU is then the
   limit: the cache's writer hashes and writes what arrives at the speed of
   memory) and from an Immich-like one; a second one after a remount vs the same bytes read
   from a local directory (written back to disk, then dropped from the page cache, on
   both sides); the cache's size on disk vs ``--cache-size-mb``.

Scenarios 1-8 mount with ``--cache-size-mb=0`` in a scratch ``--cache-dir``: they
measure the network path, and a second run must not be served from disk.

Usage: ``scripts/bench [--quick] [--only big,immichlike,listing,small,dask,cache] [--repeat N]
[--mount-arg=--x=y]``. It prints a table and, as its last line, one JSON object
with the figures. Timed measures run ``--repeat`` times (3; 2 with ``--quick``),
the mount and its baseline taking turns so both see the same load; the best run
of each counts. Between runs the kernel's page cache of the files read is
dropped (``posix_fadvise(DONTNEED)``), so every run through the mount is cold.
``--quick`` shrinks every set (256 MiB files, 48 photos, 20,000 assets, 400 small
files) to finish in about two minutes. Needs root or a user allowed to mount
FUSE, ``curl``, ``dd``, ``cp``, ``xargs``; run ``scripts/install`` first.

The fake server runs in a child process (this script with ``--serve``) that
answers ``stats`` / ``reset`` on its stdin with its request counters, so the
bytes the mount asked for are counted where they are sent.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

FULL = {"big": GiB, "photos": 200, "listing": 100_000, "small": 2000, "immichlike": 512 * MiB}
QUICK = {"big": 256 * MiB, "photos": 48, "listing": 20_000, "small": 400, "immichlike": 256 * MiB}
PHOTO = 4 * MiB
SMALL = 200 * KiB


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the fake server (child process) ---------------------------------------------------------


def serve(spec: dict[str, Any]) -> int:
    """Child: run a FakeImmich over a generated library; answer commands on stdin."""
    from immichfs_fake import FakeImmich, FakeLibrary
    from immichfs_fake.library import FILE_THRESHOLD

    lib = FakeLibrary.generate(seed=spec.get("seed", 7), **spec["generate"])
    want = spec.get("report_size")
    # the generator archives and trashes a few percent at random: the sets measured
    # here are exact (200 photos means 200 files in photos/)
    for asset in list(lib.assets.values()):
        if want is None or asset.size == want:
            if asset.is_trashed:
                lib.restore(asset.id)
            if asset.visibility != "timeline":
                lib.set_visibility(asset.id, "timeline")
    with FakeImmich(lib, realistic=bool(spec.get("realistic"))) as server:
        keyfile = Path(spec["keyfile"])
        keyfile.write_text(server.api_key)
        keyfile.chmod(0o600)
        visible = [
            a
            for a in lib.assets.values()
            if a.visibility == "timeline" and not a.is_trashed and a.owner_id == lib.me.id
        ]
        report: list[dict[str, Any]] = [
            {"id": a.id, "size": a.size, "type": a.type}
            for a in visible
            if want is not None and (a.size == want or a.size > FILE_THRESHOLD)
        ]
        for item in report:  # write large bytes to the cache now, not while timing
            if item["size"] > FILE_THRESHOLD:
                lib.content_path(item["id"])
        images = sum(1 for a in visible if a.type == "IMAGE")
        print(json.dumps({"url": server.url, "assets": report, "images": images}), flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                gets = [
                    r for r in server.requests if r.method == "GET" and r.path.endswith("/original")
                ]
                answer = {
                    "gets": len(gets),
                    "bytes": sum(r.bytes_sent for r in gets),
                    "requests": len(server.requests),
                    "ranges": [r.range for r in gets[:20]],
                }
            elif command == "reset":
                server.requests.clear()
                answer = {}
            else:
                answer = {"error": f"unknown command {command!r}"}
            print(json.dumps(answer), flush=True)
    return 0


class Fake:
    """The fake server child process and its control pipe."""

    def __init__(
        self,
        work: Path,
        name: str,
        generate: dict[str, Any],
        report_size: int | None,
        realistic: bool = False,
    ):
        self.keyfile = work / f"{name}.key"
        spec = {
            "generate": generate,
            "keyfile": str(self.keyfile),
            "report_size": report_size,
            "realistic": realistic,
        }
        self.log = (work / f"fake-{name}.log").open("w")
        self.proc = subprocess.Popen(
            [PY, __file__, "--serve", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fake server did not start; see {self.log.name}")
        info = json.loads(line)
        self.url: str = info["url"]
        self.assets: list[dict[str, Any]] = info["assets"]
        self.images: int = info["images"]
        self.key = self.keyfile.read_text().strip()

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def original_url(self, asset_id: str) -> str:
        return f"{self.url}/api/assets/{asset_id}/original"

    def close(self) -> None:
        with suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# -- the mount -------------------------------------------------------------------------------


class Mount:
    """``immichfs mount --foreground`` as a child process, with its memory figures."""

    def __init__(
        self,
        fake: Fake,
        mountpoint: Path,
        log_file: TextIO,
        extra: Sequence[str],
        program: Sequence[str] = (PY, "-m", "immichfs"),
    ):
        self.mountpoint = mountpoint
        mountpoint.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IMMICH", "IMMICHFS"))}
        env.update(IMMICH_URL=fake.url, IMMICH_API_KEY_FILE=str(fake.keyfile))
        command = [*program, "mount", str(mountpoint), "--foreground", *extra]
        self.proc = subprocess.Popen(command, env=env, stdout=log_file, stderr=log_file, cwd=ROOT)
        deadline = time.monotonic() + 60
        while not os.path.ismount(mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(f"immichfs mount exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the mount did not become ready within 60 s")
            time.sleep(0.05)

    def _status(self, field: str) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB → MiB
        return float("nan")

    def rss_mb(self) -> float:
        return self._status("VmRSS")

    def peak_mb(self) -> float:
        return self._status("VmHWM")

    def reset_peak(self) -> bool:
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def close(self) -> None:
        for args in (["-u"], ["-uz"]):
            if not os.path.ismount(self.mountpoint):
                break
            fusermount = shutil.which("fusermount3") or "fusermount"
            subprocess.run([fusermount, *args, str(self.mountpoint)], capture_output=True)
            time.sleep(0.2)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- measuring -------------------------------------------------------------------------------


def timed(command: Sequence[str], **kw: Any) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, **kw)
    return time.perf_counter() - started


def timed_shell(script: str) -> float:
    # pipefail: a failed curl must fail the run, not time an empty pipe
    return timed(["bash", "-o", "pipefail", "-c", script])


def timed_into_dd(command: Sequence[str]) -> float:
    """``command | dd``: its output handed to a reading process, as a mount hands bytes."""
    return timed_shell(f"{shlex.join(command)} | dd of=/dev/null bs=1M status=none")


class Curl:
    def __init__(self, work: Path, fake: Fake) -> None:
        # the key goes in a file: command lines are visible in `ps`
        self.headers = work / f"curl-headers-{fake.proc.pid}"
        self.headers.write_text(f"x-api-key: {fake.key}\n")
        self.headers.chmod(0o600)
        self.base = ["curl", "-sSf", "--no-progress-meter", "-H", f"@{self.headers}"]

    def get(self, url: str, out: str = "/dev/null", byte_range: str | None = None) -> float:
        extra = ["-r", byte_range] if byte_range else []
        return timed([*self.base, *extra, "-o", out, url])

    def latency(self, url: str, byte_range: str) -> float:
        result = subprocess.run(
            [*self.base, "-r", byte_range, "-o", "/dev/null", "-w", "%{time_total}", url],
            check=True,
            capture_output=True,
            text=True,
        )
        return float(result.stdout.strip())

    def many(self, urls: Sequence[str], outputs: Sequence[str] | None, parallel: int = 1) -> float:
        """Fetch ``urls`` into ``outputs`` (None: all through a pipe into ``dd``)."""
        config = self.headers.with_suffix(".cfg")
        if outputs is None:
            config.write_text("".join(f'url = "{u}"\n' for u in urls))
        else:
            config.write_text(
                "".join(
                    f'url = "{u}"\noutput = "{o}"\n' for u, o in zip(urls, outputs, strict=True)
                )
            )
        extra = ["--parallel", "--parallel-max", str(parallel)] if parallel > 1 else []
        command = [*self.base, *extra, "-K", str(config)]
        try:
            if outputs is None:
                return timed_into_dd(command)
            return timed(command)
        finally:
            config.unlink()

    def piped(self, url: str) -> float:
        """``curl | dd``: the copy floor of one stream."""
        return timed_into_dd([*self.base, url])


def pread_latency(path: Path, offset: int, size: int = 4096) -> tuple[float, int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        started = time.perf_counter()
        data = os.pread(fd, size, offset)
        return time.perf_counter() - started, len(data)
    finally:
        os.close(fd)


def drop_page_cache(paths: Sequence[Path]) -> None:
    """Make the next reads of ``paths`` cold: the kernel forgets their cached pages."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_of_size(directory: Path, size: int) -> list[Path]:
    return sorted(
        entry for entry in directory.iterdir() if entry.is_file() and entry.stat().st_size == size
    )


def parallel_cat(paths: Sequence[Path], parallel: int) -> float:
    listing = "\0".join(str(p) for p in paths).encode() + b"\0"
    per = max(1, min(25, len(paths) // (parallel * 4) or 1))
    started = time.perf_counter()
    subprocess.run(
        ["xargs", "-0", "-P", str(parallel), "-n", str(per), "cat"],
        input=listing,
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def listing_library(count: int) -> dict[str, Any]:
    """The fake library of the listing scenarios: ``count`` small photos, nothing else."""
    return {
        "photos": count,
        "videos": 0,
        "photo_bytes": (16 * KiB, 64 * KiB),
        "large_video_bytes": None,
        "extra": False,
    }


def dd_against_curl(
    fake: Fake, curl: Curl, url: str, path: Path, repeat: int
) -> tuple[float, float, float, int]:
    """``dd bs=1M`` of ``path`` through the mount (page cache dropped first), and
    ``url`` with curl and with curl | dd, taking turns ``repeat`` times: the best time
    of each, and the GETs the mount's last read made."""
    dd_runs, curl_runs, pipe_runs, gets = [], [], [], 0
    for _ in range(repeat):
        curl_runs.append(curl.get(url))
        pipe_runs.append(curl.piped(url))
        drop_page_cache([path])
        fake.ask("reset")
        dd_runs.append(timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True))
        gets = fake.ask("stats")["gets"]
    return min(dd_runs), min(curl_runs), min(pipe_runs), gets


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = QUICK if args.quick else FULL
        self.work = Path(tempfile.mkdtemp(prefix="immichfs-bench-"))
        shm = Path("/dev/shm")
        self.scratch = Path(
            tempfile.mkdtemp(prefix="immichfs-bench-", dir=shm if shm.is_dir() else None)
        )
        self.results: dict[str, Any] = {"quick": bool(args.quick)}
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.mount_log = (self.work / "mount.log").open("w")

    def row(self, what: str, mount: str, baseline: str, ratio: str, goal: str) -> None:
        self.rows.append((what, mount, baseline, ratio, goal))
        log(f"{what}: {mount} vs {baseline} → {ratio} (goal {goal})")

    @contextmanager
    def fake(
        self,
        name: str,
        generate: dict[str, Any],
        report_size: int | None,
        realistic: bool = False,
    ) -> Iterator[Fake]:
        log(f"starting the fake server ({name}{', Immich-like' if realistic else ''})")
        fake = Fake(self.work, name, generate, report_size, realistic)
        try:
            yield fake
        finally:
            fake.close()

    @contextmanager
    def mount(
        self, fake: Fake, name: str, extra: Sequence[str] = (), *, cache: Path | None = None
    ) -> Iterator[Mount]:
        program = (
            shlex.split(self.args.mount_cmd) if self.args.mount_cmd else (PY, "-m", "immichfs")
        )
        if cache is None:  # no bytes kept: every run measures the network path
            cache = self.work / f"cache-{name}"
            extra = ["--cache-size-mb=0", *extra]
        args = [f"--cache-dir={cache}", *extra, *self.args.mount_arg]
        mount = Mount(fake, self.work / f"mnt-{name}", self.mount_log, args, program)
        try:
            yield mount
        finally:
            mount.close()

    # -- 1-4: one large original and a directory of photos ------------------------------------

    def big(self) -> None:
        size, count = self.sizes["big"], self.sizes["photos"]
        generate = {
            "photos": count,
            "videos": 0,
            "photo_bytes": (PHOTO, PHOTO),
            "large_video_bytes": size,
            "extra": True,
        }
        with self.fake("big", generate, report_size=PHOTO) as fake:
            curl = Curl(self.work, fake)
            video = next(a for a in fake.assets if a["size"] == size)
            photos = [a for a in fake.assets if a["size"] == PHOTO and a["type"] == "IMAGE"]
            video_url = fake.original_url(video["id"])
            mib = size / MiB

            far = min(900 * MiB, size - 64 * MiB) // 4096 * 4096
            offsets = [far + i * 8 * MiB for i in range(5)]
            urls = [fake.original_url(p["id"]) for p in photos]
            photo_bytes = len(urls) * PHOTO
            # warm the server (its cache file, its threads) before anything is timed
            curl.get(video_url)
            curl.many(urls, ["/dev/null"] * len(urls), parallel=16)
            repeat = self.args.repeat

            with self.mount(fake, "big") as mount:
                videos = self.mount_dir(mount, "videos")
                path = next(p for p in videos.iterdir() if p.stat().st_size == size)
                # 3. cold random reads (first: nothing of the file has been read yet)
                latencies, curl_latencies = [], []
                for i, offset in enumerate(offsets):
                    fake.ask("reset")
                    seconds, got = pread_latency(path, offset)
                    assert got == 4096
                    latencies.append(seconds)
                    if i == 0:
                        stats = fake.ask("stats")
                        self.results["rand_gets"] = stats["gets"]
                        self.results["rand_bytes"] = stats["bytes"]
                    curl_latencies.append(curl.latency(video_url, f"{offset}-{offset + 4095}"))
                lat = statistics.median(latencies)
                curl_lat = statistics.median(curl_latencies)
                self.results["rand_latency_ms"] = round(lat * 1000, 2)
                self.results["rand_latency_ratio"] = round(lat / curl_lat, 2)
                self.row(
                    f"cold 4 KiB read at {far // MiB} MiB",
                    f"{self.results['rand_gets']} GET, {self.results['rand_bytes']} B, "
                    f"{lat * 1000:.1f} ms",
                    f"curl {curl_lat * 1000:.1f} ms",
                    f"{lat / curl_lat:.2f}×",
                    "1 GET, ≤128 KiB, ≤2×",
                )
                # 1 + 4. sequential read and memory; mount and curl take turns, best of each
                peak_reset = mount.reset_peak()
                before = mount.rss_mb()
                dd, curl_seq, pipe, gets = dd_against_curl(fake, curl, video_url, path, repeat)
                peak = mount.peak_mb() if peak_reset else float("nan")
                self.results["seq_mib_s"] = round(mib / dd)
                self.results["seq_curl_mib_s"] = round(mib / curl_seq)
                self.results["seq_ratio"] = round(curl_seq / dd, 3)
                self.results["seq_pipe_mib_s"] = round(mib / pipe)
                self.results["seq_pipe_ratio"] = round(pipe / dd, 3)
                self.results["seq_gets"] = gets
                self.results["rss_stream_mb"] = round(peak, 1)
                self.results["rss_before_stream_mb"] = round(before, 1)
                self.row(
                    f"dd bs=1M of {mib:.0f} MiB",
                    f"{mib / dd:.0f} MiB/s ({gets} GETs)",
                    f"curl {mib / curl_seq:.0f} MiB/s",
                    f"{curl_seq / dd:.2f}×",
                    "≥0.5×",
                )
                # the copy floor: curl into a pipe that dd reads makes the same copies
                # as the mount (socket → process → kernel → reader), on the same cores
                self.row(
                    "  same bytes: curl | dd",
                    "",
                    f"{mib / pipe:.0f} MiB/s (copy floor)",
                    f"{pipe / dd:.2f}× floor",
                    "",
                )
                self.row(
                    "peak RSS while streaming",
                    f"{peak:.0f} MB",
                    f"{before:.0f} MB before",
                    "",
                    "≤100 MB",
                )
                # 2a. cp -r of the photos directory vs curl writing the same files
                photos_dir = self.mount_dir(mount, "photos")
                files = files_of_size(photos_dir, PHOTO)
                assert len(files) == len(urls), (len(files), len(urls))
                target = self.scratch / "cp"
                cp_runs, curl_runs = [], []
                copied = 0
                for _ in range(repeat):
                    target.mkdir()
                    outputs = [str(target / f"{i}") for i in range(len(urls))]
                    curl_runs.append(curl.many(urls, outputs))
                    shutil.rmtree(target)
                    drop_page_cache(files)
                    cp_runs.append(timed(["cp", "-r", str(photos_dir), str(target)]))
                    copied = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
                    shutil.rmtree(target)
                cp, curl_cp = min(cp_runs), min(curl_runs)
                ratio = (copied / cp) / (photo_bytes / curl_cp)
                self.results["cp_mib_s"] = round(copied / MiB / cp)
                self.results["cp_curl_mib_s"] = round(photo_bytes / MiB / curl_cp)
                self.results["cp_ratio"] = round(ratio, 3)
                self.row(
                    f"cp -r photos/ ({copied / MiB:.0f} MiB)",
                    f"{copied / MiB / cp:.0f} MiB/s",
                    f"curl {photo_bytes / MiB / curl_cp:.0f} MiB/s",
                    f"{ratio:.2f}×",
                    "≥0.5×",
                )
                # 2b. 16 parallel readers vs curl --parallel-max 16
                par_runs, curl_runs, pipe_runs, par_gets = [], [], [], 0
                for _ in range(repeat):
                    curl_runs.append(curl.many(urls, ["/dev/null"] * len(urls), parallel=16))
                    pipe_runs.append(curl.many(urls, None, parallel=16))
                    drop_page_cache(files)
                    fake.ask("reset")
                    par_runs.append(parallel_cat(files, 16))
                    par_gets = fake.ask("stats")["gets"]
                par, curl_par, pipe = min(par_runs), min(curl_runs), min(pipe_runs)
                self.results["par16_mib_s"] = round(photo_bytes / MiB / par)
                self.results["par16_curl_mib_s"] = round(photo_bytes / MiB / curl_par)
                self.results["par16_ratio"] = round(curl_par / par, 3)
                self.results["par16_gets"] = par_gets
                self.results["par16_pipe_mib_s"] = round(photo_bytes / MiB / pipe)
                self.results["par16_pipe_ratio"] = round(pipe / par, 3)
                self.row(
                    f"16 readers × {len(files)} photos",
                    f"{photo_bytes / MiB / par:.0f} MiB/s ({par_gets} GETs)",
                    f"curl {photo_bytes / MiB / curl_par:.0f} MiB/s",
                    f"{curl_par / par:.2f}×",
                    "≥0.5×",
                )
                self.row(
                    "  same bytes: curl --parallel | dd",
                    "",
                    f"{photo_bytes / MiB / pipe:.0f} MiB/s (copy floor)",
                    f"{pipe / par:.2f}× floor",
                    "",
                )

    def mount_dir(self, mount: Mount, name: str) -> Path:
        path = mount.mountpoint / name
        if not path.is_dir():
            raise RuntimeError(f"no {name}/ in the mount: {sorted(os.listdir(mount.mountpoint))}")
        return path

    # -- 5: a directory of 100,000 assets ----------------------------------------------------

    def listing(self) -> None:
        count = self.sizes["listing"]
        generate = listing_library(count)
        with self.fake("listing", generate, report_size=None) as fake:
            page = [PY, __file__, "--page", fake.url, str(fake.keyfile)]
            subprocess.run(page, check=True, capture_output=True)  # warm the server
            result = subprocess.run(page, check=True, capture_output=True, text=True)
            paged = json.loads(result.stdout)
            # the set-up above restored and unarchived a few thousand assets moments ago
            # (their updatedAt is now): the first background refresh would rightly drop
            # the listing being measured, and the "warm" run would reload it
            with self.mount(fake, "listing", ["--refresh-interval=3600"]) as mount:
                directory = self.mount_dir(mount, "photos")
                started = time.perf_counter()
                listed = subprocess.run(
                    ["ls", "-l", str(directory)], check=True, capture_output=True
                ).stdout.count(b"\n")
                cold = time.perf_counter() - started
                warm = min(
                    timed(["ls", "-l", str(directory)], stdout=subprocess.DEVNULL)
                    for _ in range(self.args.repeat)
                )
                rss = mount.peak_mb()
            # the floor: `ls -l` of as many empty files in memory (tmpfs) on this machine
            floor = self.scratch / "ls"
            floor.mkdir()
            for i in range(listed - 1):
                os.close(os.open(floor / f"IMG_{i:06d}.JPG", os.O_CREAT | os.O_WRONLY, 0o644))
            tmpfs = min(
                timed(["ls", "-l", str(floor)], stdout=subprocess.DEVNULL)
                for _ in range(self.args.repeat)
            )
            shutil.rmtree(floor)
            ratio = cold / paged["seconds"]
            self.results["ls100k_entries"] = listed - 1
            self.results["ls100k_cold_s"] = round(cold, 3)
            self.results["ls100k_connector_s"] = round(paged["seconds"], 3)
            self.results["ls100k_ratio"] = round(ratio, 3)
            self.results["ls100k_warm_s"] = round(warm, 3)
            self.results["ls100k_tmpfs_s"] = round(tmpfs, 3)
            self.results["rss_100k_mb"] = round(rss, 1)
            self.row(
                f"ls -l of {listed - 1} assets, cold",
                f"{cold:.2f} s",
                f"connector paging {paged['seconds']:.2f} s ({paged['count']})",
                f"{ratio:.2f}×",
                "≤1.3×",
            )
            self.row("ls -l, warm", f"{warm:.3f} s", f"tmpfs (floor) {tmpfs:.3f} s", "", "≤0.5 s")
            self.row("peak RSS with the listing cached", f"{rss:.0f} MB", "", "", "≤400 MB")

    # -- 8: an Immich-like origin ----------------------------------------------------------------

    def immichlike(self) -> None:
        """The fake made to cost what a real Immich costs: latency, a per-stream cap."""
        size = self.sizes["immichlike"]
        generate = {
            "photos": 4,
            "videos": 0,
            "large_video_bytes": size,
            "extra": False,
        }
        with self.fake("immichlike", generate, report_size=size, realistic=True) as fake:
            curl = Curl(self.work, fake)
            video = next(a for a in fake.assets if a["size"] == size)
            url = fake.original_url(video["id"])
            mib = size / MiB
            curl.get(url)  # warm the server (its cache file)
            with self.mount(fake, "immichlike") as mount:
                videos = self.mount_dir(mount, "videos")
                path = next(p for p in videos.iterdir() if p.stat().st_size == size)
                far = (size * 7 // 8) // 4096 * 4096
                fake.ask("reset")
                lat, got = pread_latency(path, far)
                assert got == 4096
                stats = fake.ask("stats")
                curl_lat = curl.latency(url, f"{far}-{far + 4095}")
                self.results["immichlike_rand_gets"] = stats["gets"]
                self.results["immichlike_rand_bytes"] = stats["bytes"]
                self.results["immichlike_rand_latency_ms"] = round(lat * 1000, 2)
                self.row(
                    f"Immich-like: cold 4 KiB read at {far // MiB} MiB",
                    f"{stats['gets']} GET, {stats['bytes']} B, {lat * 1000:.1f} ms",
                    f"curl {curl_lat * 1000:.1f} ms",
                    f"{lat / curl_lat:.2f}×",
                    "1 GET, ≤128 KiB",
                )
                dd, curl_seq, pipe, gets = dd_against_curl(fake, curl, url, path, self.args.repeat)
                learnt = self.learnt(mount)
            self.results.update({f"immichlike_{k}": v for k, v in learnt.items()})
            self.results["immichlike_seq_mib_s"] = round(mib / dd)
            self.results["immichlike_seq_curl_mib_s"] = round(mib / curl_seq)
            self.results["immichlike_seq_pipe_mib_s"] = round(mib / pipe)
            self.results["immichlike_seq_ratio"] = round(curl_seq / dd, 3)
            self.results["immichlike_seq_floor_ratio"] = round(pipe / dd, 3)
            self.results["immichlike_seq_gets"] = gets
            self.row(
                f"Immich-like: dd bs=1M of {mib:.0f} MiB",
                f"{mib / dd:.0f} MiB/s ({gets} GETs)",
                f"curl {mib / curl_seq:.0f} MiB/s",
                f"{curl_seq / dd:.2f}×",
                "≥1.0×",
            )
            self.row(
                "  same bytes: curl | dd",
                "",
                f"{mib / pipe:.0f} MiB/s (copy floor)",
                f"{pipe / dd:.2f}× floor",
                "≥1.0×",
            )
            if learnt:
                self.row(
                    "  what the mount learnt",
                    f"{learnt.get('streams')} streams",
                    f"{learnt.get('origin_latency_ms')} ms, {learnt.get('origin_mib_s')} MiB/s, "
                    f"×{learnt.get('origin_parallel_gain')} two at once",
                    "",
                    "",
                )

    @staticmethod
    def learnt(mount: Mount) -> dict[str, Any]:
        """What the mount's reader learnt of the origin (its status file), if it says."""
        try:
            status = json.loads((mount.mountpoint / ".immichfs" / "status").read_text())
        except (OSError, ValueError):
            return {}
        originals = status.get("originals", {})
        origin = originals.get("origin")
        if not isinstance(origin, dict):
            return {}  # a mount from before the reader learnt its origin
        return {
            "streams": originals.get("streams"),
            "origin_latency_ms": origin.get("latency_ms"),
            "origin_mib_s": origin.get("stream_mib_s"),
            "origin_parallel_gain": origin.get("parallel_gain"),
        }

    # -- 6: many small files -------------------------------------------------------------------

    def small(self) -> None:
        count = self.sizes["small"]
        generate = {
            "photos": count,
            "videos": 0,
            "photo_bytes": (SMALL, SMALL),
            "large_video_bytes": None,
            "extra": False,
        }
        with self.fake("small", generate, report_size=SMALL) as fake:
            curl = Curl(self.work, fake)
            urls = [fake.original_url(a["id"]) for a in fake.assets if a["type"] == "IMAGE"]
            curl.many(urls, ["/dev/null"] * len(urls), parallel=8)  # warm the server
            with self.mount(fake, "small") as mount:
                files = files_of_size(self.mount_dir(mount, "photos"), SMALL)
                runs, curl_runs = [], []
                for _ in range(self.args.repeat):
                    curl_runs.append(curl.many(urls, ["/dev/null"] * len(urls), parallel=8))
                    drop_page_cache(files)
                    runs.append(parallel_cat(files, 8))
            seconds, curl_s = min(runs), min(curl_runs)
            rate = len(files) / seconds
            self.results["small_files"] = len(files)
            self.results["small_files_per_s"] = round(rate)
            self.results["small_curl_files_per_s"] = round(len(urls) / curl_s)
            self.row(
                f"8 readers × {len(files)} files of 200 KiB",
                f"{rate:.0f} files/s",
                f"curl {len(urls) / curl_s:.0f} files/s",
                f"{len(urls) / curl_s / rate:.2f}× slower" if rate else "",
                "≥800 files/s",
            )

    # -- 9: the persistent cache ------------------------------------------------------------

    def cache(self) -> None:
        """Remount with the catalog on disk; epochs over photos with the content cache."""
        self._cache_listing()
        self._cache_epochs()

    def _cache_listing(self) -> None:
        count = self.sizes["listing"]
        generate = listing_library(count)
        cache = self.work / "cache-remount"
        with self.fake("remount", generate, report_size=None) as fake:
            extra = ["--refresh-interval=3600"]
            with self.mount(fake, "remount", extra, cache=cache) as mount:
                directory = self.mount_dir(mount, "photos")
                cold = timed(["ls", "-l", str(directory)], stdout=subprocess.DEVNULL)
                # the listing is saved in the background: wait for it before unmounting
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    report = json.loads((mount.mountpoint / ".immichfs" / "status").read_text())
                    catalog = (report.get("disk_cache") or {}).get("catalog") or {}
                    if catalog.get("assets", 0) >= count * 0.9:
                        break
                    time.sleep(0.2)
            runs = []
            for _ in range(self.args.repeat):
                started = time.perf_counter()
                with self.mount(fake, "remount", extra, cache=cache) as mount:
                    mounted = time.perf_counter() - started
                    directory = self.mount_dir(mount, "photos")
                    seconds = timed(["ls", "-l", str(directory)], stdout=subprocess.DEVNULL)
                    # the same listing once in memory: what the disk load adds to it
                    warm = timed(["ls", "-l", str(directory)], stdout=subprocess.DEVNULL)
                    runs.append((seconds, mounted, warm))
            seconds, mounted, warm = min(runs)
        self.results["remount_ls100k_s"] = round(seconds, 3)
        self.results["remount_mount_s"] = round(mounted, 3)
        self.results["remount_cold_ls100k_s"] = round(cold, 3)
        self.results["remount_warm_ls100k_s"] = round(warm, 3)
        self.row(
            f"ls -l of {count} assets after a remount",
            f"{seconds:.2f} s (mount {mounted:.2f} s)",
            f"first mount {cold:.2f} s, warm {warm:.2f} s",
            f"{cold / seconds:.1f}× faster" if seconds else "",
            "≤2 s",
        )

    def _cache_epochs(self) -> None:
        count = self.sizes["photos"]
        limit_mb = 10240
        total = count * PHOTO
        off, on, second, from_disk, disk = self._epochs(count, limit_mb, immich_like=False)
        like_off, like_on, *_ = self._epochs(count, limit_mb, immich_like=True)
        epoch1 = min(off) / min(on)
        epoch1_like = min(like_off) / min(like_on)
        epoch2 = min(from_disk) / min(second)
        self.results.update(
            epoch1_ratio_vs_nocache=round(epoch1, 3),
            epoch1_ratio_vs_nocache_immichlike=round(epoch1_like, 3),
            epoch2_ratio=round(epoch2, 3),
            epoch2_MBps=round(total / min(second) / MiB, 1),
            epoch_local_MBps=round(total / min(from_disk) / MiB, 1),
            cache_disk_mb=round(disk / MiB, 1),
            cache_size_mb=limit_mb,
        )
        self.row(
            f"cat of {count} × 4 MiB, first pass, cache on",
            f"{total / min(on) / MiB:.0f} MB/s",
            f"cache off {total / min(off) / MiB:.0f} MB/s",
            f"{epoch1:.2f}×",
            "≥0.9×",
        )
        self.row(
            "  the same from an Immich-like origin",
            f"{total / min(like_on) / MiB:.0f} MB/s",
            f"cache off {total / min(like_off) / MiB:.0f} MB/s",
            f"{epoch1_like:.2f}×",
            "≥0.9×",
        )
        self.row(
            "  second pass after a remount",
            f"{total / min(second) / MiB:.0f} MB/s",
            f"local directory {total / min(from_disk) / MiB:.0f} MB/s",
            f"{epoch2:.2f}×",
            "≥0.8×",
        )
        self.row("  cache on disk", f"{disk / MiB:.0f} MiB", f"limit {limit_mb} MiB", "", "≤limit")

    def _epochs(
        self, count: int, limit_mb: int, *, immich_like: bool
    ) -> tuple[list[float], list[float], list[float], list[float], int]:
        """First passes with the content cache off and on; on loopback also a second pass
        after a remount (page cache dropped) and the same bytes from a local directory."""
        generate = {
            "photos": count,
            "videos": 0,
            "photo_bytes": (PHOTO, PHOTO),
            "large_video_bytes": None,
            "extra": False,
        }
        name = "epochs-immichlike" if immich_like else "epochs"
        cache = self.work / f"cache-{name}"
        off: list[float] = []
        on: list[float] = []
        second: list[float] = []
        from_disk: list[float] = []
        with self.fake(name, generate, report_size=PHOTO, realistic=immich_like) as fake:
            local_files: list[Path] = []
            if not immich_like:
                curl = Curl(self.work, fake)
                urls = [fake.original_url(a["id"]) for a in fake.assets if a["type"] == "IMAGE"]
                local = self.work / "local-photos"  # the same bytes in a local directory
                local.mkdir()
                outputs = [str(local / f"{i:04d}.jpg") for i in range(len(urls))]
                curl.many(urls, outputs, parallel=4)
                local_files = sorted(local.iterdir())

            def cat(paths: Sequence[Path]) -> float:
                return timed(["cat", *map(str, paths)], stdout=subprocess.DEVNULL)

            for run in range(self.args.repeat):
                with self.mount(fake, f"{name}-nocache") as mount:
                    off.append(cat(files_of_size(self.mount_dir(mount, "photos"), PHOTO)))
                shutil.rmtree(cache, ignore_errors=True)  # the first pass fills it afresh
                extra = [f"--cache-size-mb={limit_mb}"]
                with self.mount(fake, name, extra, cache=cache) as mount:
                    on.append(cat(files_of_size(self.mount_dir(mount, "photos"), PHOTO)))
                if immich_like:
                    continue
                blobs = sorted(cache.glob("*/content/blobs/*"))
                os.sync()  # dirty pages cannot be dropped: written back first
                drop_page_cache(blobs)
                with self.mount(fake, name, extra, cache=cache) as mount:
                    files = files_of_size(self.mount_dir(mount, "photos"), PHOTO)
                    second.append(cat(files))
                    report = json.loads((mount.mountpoint / ".immichfs" / "status").read_text())
                    hits = (report.get("disk_cache") or {}).get("hits", 0)
                os.sync()
                drop_page_cache(local_files)
                from_disk.append(cat(local_files))
                log(f"epochs run {run + 1}: {len(files)} files, {hits} reads from the cache")
            disk = sum(p.stat().st_blocks * 512 for p in cache.rglob("*") if p.is_file())
        return off, on, second, from_disk, disk

    # -- report ---------------------------------------------------------------------------------

    # -- 7: a library processed on Dask through immich:// ------------------------------------

    def dask(self) -> None:
        """``dask_images_per_s`` for 1, 2 and 4 worker processes over the same photos,
        against this process reading and processing them one by one without Dask."""
        count = DASK_PHOTOS
        generate = {
            "photos": count,
            "videos": 0,
            "photo_bytes": (DASK_PHOTO, DASK_PHOTO),
            "large_video_bytes": None,
            "extra": False,
        }
        with self.fake("dask", generate, report_size=None) as fake:
            rates, baseline = dask_rates(fake.url, fake.keyfile, self.work, self.args.repeat)
        self.results["dask_images_per_s"] = {str(n): round(rate, 1) for n, rate in rates.items()}
        self.results["dask_baseline_images_per_s"] = round(baseline, 1)
        for workers, rate in rates.items():
            self.row(
                f"{count} photos on Dask, {workers} worker(s) (images/s)",
                f"{rate:.0f}",
                f"{baseline:.0f}",
                f"{rate / baseline:.2f}",
                "scales with cores",
            )

    def run(self) -> int:
        started = time.perf_counter()
        failed = []
        try:
            for name in self.args.only:
                try:
                    getattr(self, name)()
                except Exception as exc:  # one broken scenario must not hide the others
                    failed.append(name)
                    log(f"{name} failed: {exc!r} (logs in {self.work})")
        finally:
            self.mount_log.close()
            shutil.rmtree(self.scratch, ignore_errors=True)
            if not self.args.keep and not failed:
                shutil.rmtree(self.work, ignore_errors=True)
        self.results["seconds"] = round(time.perf_counter() - started, 1)
        if failed:
            self.results["failed"] = failed
        widths = [max(len(r[i]) for r in [HEADER, *self.rows]) for i in range(5)]
        for row in [HEADER, *self.rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        print(json.dumps(self.results, sort_keys=True))
        return 1 if failed else 0


HEADER = ("measure", "immichfs", "baseline", "ratio", "goal")

#: the Dask scenario: the same photos for every cluster size
DASK_PHOTOS = 500
DASK_PHOTO = 256 * KiB
DASK_WORKERS = (1, 2, 4)


def dask_rates(url: str, keyfile: Path, work: Path, repeat: int) -> tuple[dict[int, float], float]:
    """Images per second of ``immichfs.dask.job.run`` over ``photos`` on LocalClusters of
    1, 2 and 4 worker processes (best of ``repeat``; cluster start-up not counted), and
    of the same work in this process without Dask (the baseline, best of ``repeat`` too)."""
    from distributed import Client, LocalCluster

    from immichfs.dask import job
    from immichfs.fsspec import ImmichFileSystem

    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    fs = ImmichFileSystem(url=url, api_key_file=str(keyfile))
    tasks, _ = job.plan(fs, "photos", work / "dask-none")
    for task in tasks:  # warm the server (it renders each original once) before timing
        fs.cat_file(task.path)
    (work / "dask-baseline").mkdir(exist_ok=True)
    baseline = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        results = [job.process(fs, task, str(work / "dask-baseline")) for task in tasks]
        baseline = max(baseline, len(results) / (time.perf_counter() - started))
        assert all(r["status"] == "processed" for r in results), results[:3]
    rates: dict[int, float] = {}
    for workers in DASK_WORKERS:
        log(f"dask: {workers} worker(s)")
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(_dask_warm)  # imports on the workers: not part of the rate
            best = 0.0
            for attempt in range(repeat):
                outdir = work / f"dask-{workers}-{attempt}"
                summary = job.run(fs, "photos", outdir, client)
                assert summary.processed == len(tasks) and not summary.failed, summary
                best = max(best, summary.processed / summary.seconds)
                shutil.rmtree(outdir, ignore_errors=True)
            rates[workers] = best
    return rates, baseline


def _dask_warm() -> None:
    import immichfs.dask.job
    import immichfs.fsspec  # noqa: F401


def page(url: str, keyfile: str) -> int:
    """Child: page the /photos listing with the connector alone; print time and count."""
    import trio

    from immichfs.client.connector import ImmichConnector

    async def main() -> None:
        key = Path(keyfile).read_text().strip()
        async with ImmichConnector(url, key) as connector:
            await connector.connect()
            started = time.perf_counter()
            count = 0
            filters = {"type": "IMAGE", "visibility": "timeline"}
            async for _ in connector.iter_search_metadata(filters, page_size=1000):
                count += 1
            seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "count": count}))

    trio.run(main)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sets, under two minutes")
    parser.add_argument(
        "--only",
        default="big,immichlike,listing,small,dask,cache",
        help="comma-separated scenarios: big (1-4), listing (5), small (6), dask (7), "
        "immichlike (8), cache (9)",
    )
    parser.add_argument(
        "--mount-arg",
        action="append",
        default=[],
        help="extra argument for `immichfs mount` (repeatable), e.g. --mount-arg=--readahead-mb=32",
    )
    parser.add_argument(
        "--mount-cmd",
        help="command run instead of `python -m immichfs` for `... mount MOUNTPOINT` "
        "(e.g. an installed build: --mount-cmd immichfs)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs of each timed measure, mount and baseline taking turns; the best of each "
        "counts (default 3, with --quick 2)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--page", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(json.loads(args.serve))
    if args.page:
        return page(*args.page)
    if args.repeat is None:
        args.repeat = 2 if args.quick else 3
    args.repeat = max(1, args.repeat)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - {"big", "immichlike", "listing", "small", "dask", "cache"}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    for tool in ("curl", "dd", "cp", "xargs", "ls"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is needed (apt-get install {tool})")
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
