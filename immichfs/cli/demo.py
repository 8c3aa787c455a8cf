"""The bundled demo library: the only place in ``immichfs`` that imports :mod:`immichfs_fake`.

``immichfs mount --demo`` serves the fake Immich's sample library from this
process (:func:`demo_server`); ``immichfs fake-server`` (this module's
``add_arguments``/``run``) runs the fake on its own. Everything else in
``immichfs`` talks to a real (or fake) server only over HTTP.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from immichfs.fuse.mount import MountPlan

log = logging.getLogger(__name__)

#: bytes of the large sample video in the demo library
DEMO_LARGE_VIDEO_BYTES = 300 * 1024 * 1024
#: the library's seed, `immichfs fake-server`'s default: the key is the one it prints
DEMO_SEED = 0


@contextmanager
def demo_server(plan: MountPlan) -> Iterator[MountPlan]:
    """Run the bundled fake Immich in this process; the plan then points at it."""
    from immichfs_fake.cli import default_key
    from immichfs_fake.library import FakeLibrary
    from immichfs_fake.server import FakeImmich

    library = FakeLibrary.generate(seed=DEMO_SEED, large_video_bytes=DEMO_LARGE_VIDEO_BYTES)
    try:
        # the key `immichfs fake-server` prints (and the README shows) for the same library;
        # a new port each time: what the mount keeps on disk goes with the server
        with (
            tempfile.TemporaryDirectory(prefix="immichfs-demo-cache-") as cache_dir,
            FakeImmich(library, api_key=default_key(DEMO_SEED)) as server,
        ):
            log.info("demo: fake Immich with %d assets at %s", len(library.assets), server.url)
            settings = replace(
                plan.settings, url=server.url, api_key=server.api_key, cache_dir=Path(cache_dir)
            )
            yield replace(plan, settings=settings)
    finally:
        library.close()  # its temporary files (the daemon ends with os._exit: no finalizers)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from immichfs_fake import cli

    cli.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from immichfs_fake import cli

    return cli.run(args)
