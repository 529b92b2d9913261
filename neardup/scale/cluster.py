"""Hashing on a Dask cluster: index.py --scheduler tcp://HOST:PORT (or --local-cluster N).

The client walks the folder and plans as a local run does, then sends partitions of file paths
to the workers, which read and hash the files themselves (so the files must be on a file system
they share); only hashes and file metadata come back. The store stays the single source of truth:
this process alone writes it, one transaction per finished partition. A re-run after a crash of
the client, the scheduler or a worker finds the committed files unchanged and hashes only the rest.
If a worker dies, Dask runs its partitions again elsewhere.

Dask is optional (requirements-dask.txt) and imported only when asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..core.discovery import FoundFile
from ..core.hashing import Recipe
from ..core.indexing import Hasher, HashOutcome, hash_partition
from ..errors import NeardupError

DEFAULT_PARTITION_SIZE = 1000
# A partition whose worker dies is run again elsewhere; one that fails this often is an error.
TASK_RETRIES = 3


def _dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise NeardupError(
            "--scheduler and --local-cluster need Dask: pip install -r requirements-dask.txt"
        ) from None
    return distributed


@contextmanager
def connect(
    scheduler: str | None, local_workers: int | None, timeout_seconds: float = 30
) -> Iterator[Any]:
    """A Dask client: to the scheduler at that address, or to a new local cluster on 127.0.0.1."""
    distributed = _dask()
    if local_workers:
        cluster = distributed.LocalCluster(n_workers=local_workers, threads_per_worker=1,
                                           processes=True, host="127.0.0.1",
                                           dashboard_address=None)
        try:
            with distributed.Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    address = scheduler or ""
    try:
        client = distributed.Client(address, timeout=f"{timeout_seconds}s")
    except (OSError, TimeoutError) as error:
        raise NeardupError(f"cannot reach the Dask scheduler at {address} ({error})") from error
    with client:
        yield client


def cluster_hasher(
    client: Any, partition_size: int = DEFAULT_PARTITION_SIZE, *, features: bool = False
) -> Hasher:
    """A Hasher for index_folder that hashes partitions (and extracts features) on the cluster's
    workers."""
    distributed = _dask()

    def hash_on_cluster(
        files: list[FoundFile], recipe: Recipe, max_pixels: int
    ) -> Iterator[list[HashOutcome]]:
        partitions = [files[start:start + partition_size]
                      for start in range(0, len(files), partition_size)]
        if not partitions:
            return
        futures = client.map(hash_partition, partitions, recipe=recipe, max_pixels=max_pixels,
                             features=features, retries=TASK_RETRIES, pure=False)
        try:
            for future in distributed.as_completed(futures):
                yield future.result()
                future.release()  # its outcomes are committed; the cluster can forget them
        finally:
            client.cancel(futures)

    return hash_on_cluster


def worker_paths(dataset: str) -> str:
    """The dataset folder as workers will read it: local paths and file:// URLs only."""
    if dataset.startswith("file://"):
        return dataset.removeprefix("file://")
    if "://" in dataset:
        raise NeardupError(f"{dataset}: only local folders and file:// URLs are supported")
    return os.path.abspath(dataset)
