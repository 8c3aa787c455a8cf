"""``immichfs fake-server``: the fake Immich server with a sample library, standalone.

It prints ``IMMICH_URL=...`` and ``IMMICH_API_KEY=...`` lines (ready for
``export``), optionally writes them to ``--ready-file`` once the server is
listening (so scripts and benchmarks can wait for it), and serves until
SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address to bind: 127.0.0.1 (default), ::1 or localhost",
    )
    parser.add_argument("--port", type=int, default=2283, help="TCP port (0: any free port)")
    parser.add_argument(
        "--version",
        dest="immich_version",
        default="2.7.5",
        metavar="X.Y.Z",
        help="Immich version to emulate (default 2.7.5; e.g. 1.135.3, 3.1.0, 3.2.0)",
    )
    parser.add_argument("--photos", type=int, default=500, help="regular photos (default 500)")
    parser.add_argument("--videos", type=int, default=20, help="regular videos (default 20)")
    parser.add_argument(
        "--large-video-mb",
        type=int,
        default=300,
        metavar="MB",
        help="size of the one large video in MiB (default 300; 0: none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="library seed (default 0)")
    parser.add_argument(
        "--smart-search",
        action="store_true",
        help="enable POST /search/smart (off by default, as without ML)",
    )
    parser.add_argument(
        "--permissions", default="all", help="comma-separated API-key permissions (default: all)"
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help="write the IMMICH_URL/IMMICH_API_KEY lines here once listening",
    )
    parser.add_argument(
        "--realistic",
        action="store_true",
        help="an Immich-like origin: --latency-ms 5 and --stream-mib-s 350 unless given",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        metavar="MS",
        help="delay before every response's first byte (default 0; 5 with --realistic)",
    )
    parser.add_argument(
        "--stream-mib-s",
        type=float,
        metavar="MIB_S",
        help="cap on each response's throughput in MiB/s (default none; 350 with --realistic)",
    )
    parser.add_argument(
        "--no-extra",
        action="store_true",
        help="only regular assets and the large video (no awkward names, live photo...)",
    )


def default_key(seed: int) -> str:
    """A stable key per seed, so an exported key survives a restart of the fake."""
    from immichfs_fake.server import KEY_PREFIX

    return KEY_PREFIX + hashlib.blake2b(f"seed-{seed}".encode(), digest_size=16).hexdigest()


def run(args: argparse.Namespace) -> int:
    from immichfs.errors import UserError
    from immichfs_fake.library import FakeLibrary
    from immichfs_fake.server import FakeImmich, parse_version

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        parse_version(args.immich_version)
    except ValueError as exc:
        raise UserError(str(exc), 2) from None
    library = FakeLibrary.generate(
        seed=args.seed,
        photos=args.photos,
        videos=args.videos,
        large_video_bytes=(args.large_video_mb << 20) or None,
        extra=not args.no_extra,
    )
    permissions = [p.strip() for p in args.permissions.split(",") if p.strip()]
    try:
        server = FakeImmich(
            library,
            version=args.immich_version,
            api_key=default_key(args.seed),
            permissions=permissions,
            smart_search=args.smart_search,
            host=args.host,
            port=args.port,
            latency_ms=args.latency_ms,
            stream_mib_s=args.stream_mib_s,
            realistic=args.realistic,
        )
        server.start()
    except ValueError as exc:
        raise UserError(str(exc), 2) from None
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}", 1) from None

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    lines = f"IMMICH_URL={server.url}\nIMMICH_API_KEY={server.api_key}\n"
    sys.stdout.write(lines)
    sys.stdout.flush()
    if args.ready_file is not None:
        tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
        tmp.write_text(lines)
        os.replace(tmp, args.ready_file)
    origin = ""
    if server.latency_ms or server.stream_mib_s:
        cap = f"{server.stream_mib_s:g} MiB/s" if server.stream_mib_s else "no cap"
        origin = f" ({server.latency_ms:g} ms before the first byte, {cap} per stream)"
    print(
        f"fake Immich v{args.immich_version}: {len(library.assets)} assets, "
        f"{len(library.albums)} albums{origin}; Ctrl-C to stop",
        file=sys.stderr,
    )
    threading.Thread(target=_warm, args=(library,), daemon=True).start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        library.close()
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
    return 0


def _warm(library: object) -> None:
    """Compute every checksum in the background (large files first): the first
    listing of a big library is then as fast as the next ones."""
    from immichfs_fake.library import FakeLibrary

    assert isinstance(library, FakeLibrary)
    assets = sorted(library.sorted_assets(), key=lambda a: -a.size)
    for asset in assets:
        try:
            library.checksum(asset.id)
        except KeyError:  # deleted meanwhile
            continue
