"""A map per photo of an Immich library, computed on a Dask cluster through ``immich://``.

    python examples/depth_with_dask.py VIEW OUTDIR [--workers N | --scheduler ADDRESS] [--demo]

VIEW is a directory of the immichfs tree (``photos``, ``albums/Holidays 2019``,
``tags/Travel`` ...); every image under it is read by the workers through
``immich://`` (no mount) and its normalised gradient-magnitude map (standing in
for a depth model, see docs/DASK.md) written to ``OUTDIR/<asset id>.png``, with
one line per asset in ``OUTDIR/results.jsonl``. A rerun skips what is done. The
last line printed is ``{"processed": n, "skipped": m, "failed": k, "seconds": s}``.

The server comes from ``IMMICH_URL`` and ``IMMICH_API_KEY`` (or
``IMMICH_API_KEY_FILE``), as for the mount. The URL and the key file's path
travel to the workers with the job; a key given in ``IMMICH_API_KEY`` does not:
workers of a remote cluster need it in their own environment (a ``LocalCluster``
inherits it). ``--demo`` serves the bundled sample library
from this process instead. Needs ``pip install immichfs[dask]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from immichfs.errors import ImmichfsError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("view", help="directory of the tree to process, e.g. photos")
    parser.add_argument("outdir", help="where <asset id>.png and results.jsonl go")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="start a LocalCluster of N worker processes")
    where.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler")
    parser.add_argument(
        "--demo", action="store_true", help="serve the bundled sample library (no server needed)"
    )
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


@contextmanager
def demo_server() -> Iterator[None]:
    """The fake Immich with the sample library, in this process; its address in the
    environment, where the filesystem here and the workers started later read it."""
    from immichfs_fake import FakeImmich, FakeLibrary

    library = FakeLibrary.generate(seed=0, large_video_bytes=None)
    try:
        with FakeImmich(library) as server:
            os.environ["IMMICH_URL"] = server.url
            os.environ["IMMICH_API_KEY"] = server.api_key
            os.environ.pop("IMMICH_API_KEY_FILE", None)
            yield
    finally:
        library.close()


@contextmanager
def cluster(args: argparse.Namespace) -> Iterator[object]:
    from distributed import Client, LocalCluster

    if args.scheduler:
        with Client(args.scheduler) as client:
            yield client
        return
    workers = args.workers or os.cpu_count() or 1
    # one thread per worker process: decoding holds the GIL
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as local,
        Client(local) as client,
    ):
        yield client


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Dask's own INFO lines (scheduler, nannies) drown the job's; workers inherit this too
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    try:
        import fsspec

        from immichfs.dask import job
    except ImportError as exc:
        print(f"depth_with_dask: {exc}; install the extra: pip install 'immichfs[dask]'")
        return 2
    try:
        with demo_server() if args.demo else _nothing():
            # the server and key file this process resolved travel to the workers (a key
            # from IMMICH_API_KEY does not: workers read theirs from their environment)
            fs = fsspec.filesystem(
                "immich",
                url=os.environ.get("IMMICH_URL"),
                api_key_file=os.environ.get("IMMICH_API_KEY_FILE"),
            )
            job.check_view(fs, args.view)  # before a cluster is started for nothing
            with cluster(args) as client:
                summary = job.run(fs, args.view, args.outdir, client)
    except (ImmichfsError, OSError) as exc:
        print(f"depth_with_dask: {exc}", file=sys.stderr)
        return 1
    print(summary.to_json(), flush=True)
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


if __name__ == "__main__":
    sys.exit(main())
