"""A whole view of a library through Dask: plan, partition, process on the workers.

The driver lists the view through ``immich://`` (:func:`plan`), leaves out the
assets whose output already holds their current checksum, and hands the rest
to the cluster in partitions (a ``dask.bag``). Each worker reads the bytes
itself through ``immich://`` (the filesystem object travels pickled as the
arguments it was made with; the key is read on the worker from its
environment or key file), so no shared mount is needed. Results come back per
partition as they finish and are appended to ``OUTDIR/results.jsonl``.

OUTDIR must be one directory that every worker writes to (local with
``LocalCluster``; a shared filesystem for a cluster of machines).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem

from immichfs.dask.images import (
    Estimator,
    decode,
    gradient_magnitude,
    output_path,
    recorded_checksum,
    write_map,
)

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
#: partitions per worker: enough to balance uneven images, few enough to keep overhead low
PARTITIONS_PER_WORKER = 4


@dataclass(frozen=True)
class Task:
    """One asset to process."""

    asset_id: str
    checksum: str
    path: str


@dataclass(frozen=True)
class Summary:
    """What a run did; printed as the last line of the job."""

    processed: int
    skipped: int
    failed: int
    seconds: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def check_view(fs: AbstractFileSystem, view: str) -> None:
    """FileNotFoundError unless ``view`` is a directory of the tree (a typo must not
    make a job that finds nothing to do)."""
    if not fs.isdir(view):
        raise FileNotFoundError(
            f"{view!r} is not a directory of the tree (try photos, albums/NAME, tags/NAME)"
        )


def plan(fs: AbstractFileSystem, view: str, outdir: str | Path) -> tuple[list[Task], int]:
    """The images of ``view`` (recursively) still to process, and how many are done.

    An asset listed in several places of the view (a tag and its child tag) is
    one task. Done means ``OUTDIR/<id>.png`` exists and was made from the bytes
    with the asset's current checksum.
    """
    tasks: dict[str, Task] = {}
    for path, entry in sorted(fs.find(view, detail=True).items()):
        if entry.get("asset_type") != "IMAGE" or "checksum" not in entry:
            continue  # videos, thumbnails, virtual files
        asset_id = str(entry["asset_id"])
        tasks.setdefault(asset_id, Task(asset_id, str(entry["checksum"]), path))
    todo = [
        task
        for task in tasks.values()
        if recorded_checksum(output_path(outdir, task.asset_id)) != task.checksum
    ]
    return todo, len(tasks) - len(todo)


def process(
    fs: AbstractFileSystem, task: Task, outdir: str, estimate: Estimator = gradient_magnitude
) -> dict[str, Any]:
    """Read, decode, estimate and write one asset; a failure is a result, not an exception."""
    started = time.perf_counter()
    result: dict[str, Any] = {"id": task.asset_id, "checksum": task.checksum, "path": task.path}
    try:
        data = fs.cat_file(task.path)
    except OSError as exc:
        result.update(status="failed", reason=f"read: {exc}")
    else:
        # what limits a job: the bytes, or the work on them
        result["read_seconds"] = round(time.perf_counter() - started, 4)
        try:
            picture = estimate(decode(data))
        except Exception as exc:  # whatever the decoder or the model raises
            result.update(status="failed", reason=f"decode: {type(exc).__name__}: {exc}")
        else:
            write_map(
                output_path(outdir, task.asset_id),
                picture,
                asset_id=task.asset_id,
                checksum=task.checksum,
            )
            result["status"] = "processed"
    result["seconds"] = round(time.perf_counter() - started, 4)
    return result


def process_partition(
    tasks: Iterable[Task],
    fs: AbstractFileSystem,
    outdir: str,
    estimate: Estimator = gradient_magnitude,
) -> list[dict[str, Any]]:
    """:func:`process` for each task of one partition (runs on a worker)."""
    return [process(fs, task, outdir, estimate) for task in tasks]


def partitions(tasks: Sequence[Task], workers: int) -> int:
    return max(1, min(len(tasks), max(1, workers) * PARTITIONS_PER_WORKER))


def run(
    fs: AbstractFileSystem,
    view: str,
    outdir: str | Path,
    client: Any,
    estimate: Estimator = gradient_magnitude,
) -> Summary:
    """Process ``view`` on ``client``'s cluster (a ``distributed.Client``)."""
    import dask.bag
    from distributed import as_completed

    started = time.perf_counter()
    # a job lists what the library holds now, not what an earlier job saw
    fs.invalidate_cache()
    check_view(fs, view)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    tasks, skipped = plan(fs, view, outdir)
    processed = failed = 0
    if tasks:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        bag = dask.bag.from_sequence(  # type: ignore[no-untyped-call]
            tasks, npartitions=partitions(tasks, workers)
        )
        pieces = bag.map_partitions(process_partition, fs, str(outdir), estimate).to_delayed()
        futures = client.compute(pieces)
        with (outdir / RESULTS).open("a", encoding="utf-8") as results:
            for future in as_completed(futures):  # type: ignore[no-untyped-call]
                for result in future.result():
                    results.write(json.dumps(result, ensure_ascii=False) + "\n")
                    if result["status"] == "processed":
                        processed += 1
                    else:
                        failed += 1
                        log.warning("%s: %s", result["path"], result.get("reason"))
                results.flush()
    return Summary(processed, skipped, failed, round(time.perf_counter() - started, 3))


def read_results(outdir: str | Path) -> Iterator[dict[str, Any]]:
    """The lines of ``OUTDIR/results.jsonl``, oldest first."""
    path = Path(outdir) / RESULTS
    if not path.exists():
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)
