"""neardup from Python: index a folder, search by path, bytes or PIL image, list groups, evaluate.

    import neardup

    neardup.index_folder("photos", "photos.shelve")       # incremental, like index.py
    with neardup.open_store("photos.shelve") as store:
        for found in store.search("upload.jpg"):         # a path, bytes or a PIL.Image.Image
            print(found.distance, found.relpath)
        for group in store.groups(max_distance=4):
            print(group.relpaths)

Everything a caller can get wrong raises a NeardupError subclass with a one-line message:
ImageError (this image cannot be read; `.reason` says why), StoreError (the store cannot be
opened or was built with another recipe), DatasetError (a manifest that does not fit the store).
ValueError is raised for arguments outside their range (a distance beyond the hash's bits).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

from PIL import Image

from .core.grouping import groups_distance_problem, near_duplicate_groups
from .core.hashing import (
    DEFAULT_MAX_PIXELS,
    Hash,
    Recipe,
    hash_decoded_and_mirror,
    hash_source,
    mode_refusal,
)
from .core.identity import RECIPE_RETRIES, identity_and_state, open_with_identity
from .core.indexing import DEFAULT_BATCH_SIZE, DEFAULT_FILE_SECONDS, Hasher, IndexSummary
from .core.indexing import index_folder as _index_folder
from .core.search import (
    DEFAULT_MAX_DISTANCE,
    HashIndex,
    Match,
    find_matches_many,
    merge_matches,
    resolve_stored_path,
)
from .core.store import Store
from .errors import ImageError, StoreError

# Imported for real (34 ms), not only for type checkers: typing.get_type_hints(), and the tools
# built on it (sphinx-autodoc-typehints, typeguard, pydantic), must resolve every public
# annotation.
from .evaluation.scoring import Evaluation

if TYPE_CHECKING:
    import numpy as np

    from .features.search import VerifiedSearch

# What search() accepts: a file path, the bytes of an image file (an upload), or a decoded image.
ImageInput = str | os.PathLike | bytes | BinaryIO | Image.Image


@dataclass(frozen=True, slots=True)
class Found:
    """A stored image near the query."""

    relpath: str  # as stored: relative to the store's dataset folder, '/'-separated
    path: str  # the file on disk (the dataset folder joined with relpath)
    # Bits by which the stored hash differs from the query's, not counting the query's undecided
    # bits (hashing.UNDECIDED_BAND); None on a store with features when the hash did not find it
    # (a crop, a mirror image: found by the features alone).
    distance: int | None
    hash: str  # the stored image's hash, hexadecimal
    # Stores with features only (index.py --features): every answer is verified (README
    # "Verified matches"); how it was found ("hash", "features", "hash+features") and the
    # keypoint matches the verifying transform explains. None on a hash-only store. Where an
    # index.py --features run did not finish, the images it had not reached yet are answered by
    # their hash alone: found_by "hash", inliers None, verified False (images_without_features).
    found_by: str | None = None
    inliers: int | None = None
    verified: bool | None = None
    # Whether it is the query's mirror image (its mirror image's hash was the nearer, or its
    # mirror image is what verified); None where mirror images were not looked at (a hash-only
    # store searched without mirror=True). `distance` is then the nearer of the two hashes'.
    mirrored: bool | None = None


@dataclass(frozen=True, slots=True)
class DuplicateGroup:
    """Images of which every pair is a near-duplicate (see search.py --groups): no chains."""

    relpaths: tuple[str, ...]  # the first image, then the others nearest first
    paths: tuple[str, ...]  # the same files on disk
    distances: tuple[int | None, ...]  # each image's hash distance to the first (0 for the first)
    max_distance: int | None  # the largest hash distance between any two members
    distinct_hashes: int  # 1: exact duplicates of one hash only
    # Stores with local features: each image's inliers with the first (None for the first), and
    # the fewest of any verified pair in the group; None on a hash-only store.
    inliers: tuple[int | None, ...] | None = None
    fewest_inliers: int | None = None
    # And the inliers of every pair of images, by their relpaths in sorted order.
    pair_inliers: dict[tuple[str, str], int] | None = None


def index_folder(
    dataset: str | os.PathLike,
    store: str | os.PathLike,
    *,
    algorithm: str = "dhash",
    hash_size: int = 8,
    exact: bool = False,
    jobs: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    report: Callable[[str], None] | None = None,
    hasher: Hasher | None = None,
    features: bool = False,
    allow_mass_removal: bool = False,
    moved_from: str | os.PathLike | None = None,
    file_seconds: float = DEFAULT_FILE_SECONDS,
) -> IndexSummary:
    """Hash every image under `dataset` into the store at `store` (created if missing).

    Incremental and crash-safe like index.py: unchanged files are not hashed again, deleted ones
    are dropped, every committed batch survives an interruption. `report` receives one line per
    file that could not be hashed, and one line when an existing store keeps an older
    preprocessing (default: ignored; the summary counts the files). `jobs=0` uses one process per
    core. The hash (algorithm, hash_size, exact) must match the store's, if it exists; a store made
    by an older neardup with the same hash keeps being updated with its own preprocessing.
    `features`: also keep local features (the `features` extra; see README "Verified matches").
    `allow_mass_removal`: let a run drop more than half of the stored images whose files are gone
    (refused otherwise, and `summary.refusal` says why: a folder that failed to mount looks the
    same); an empty folder never empties a store.
    `moved_from`: the folder an existing store indexes, moved or copied to `dataset` since: the
    store is re-pointed (its paths are relative to the folder; files whose size, mtime or inode
    changed are hashed again, as always).
    A file that kills the worker process hashing it (a crash in a decoder, the out-of-memory
    killer), or that it takes more than `file_seconds` to hash, fails alone and the run goes on
    (not with jobs=1: files are then hashed in this process).
    """
    recipe = Recipe(algorithm, hash_size, exact=exact)
    return _index_folder(os.fspath(dataset), os.fspath(store), recipe, jobs=jobs,
                         batch_size=batch_size, max_pixels=max_pixels, progress=progress,
                         report=report or (lambda line: None), hasher=hasher,
                         features=features, allow_mass_removal=allow_mass_removal,
                         moved_from=os.fspath(moved_from) if moved_from is not None else None,
                         file_seconds=file_seconds)


def open_store(path: str | os.PathLike) -> ImageStore:
    """Open a store built by index.py or index_folder() for searching (read-only)."""
    store, _identity = open_with_identity(os.fspath(path))
    return ImageStore(store)


class ImageStore:
    """A store open for reading. Use it as a context manager, or call close().

    Searches see the store's latest committed state: when another process has indexed more images
    since the last call, the search index is rebuilt first; when the store was rebuilt
    (index.py --rebuild) or the file at its path replaced, deleted or rewritten, the store there
    is opened again (StoreError if there is none to open). One ImageStore may be shared by threads: images
    are decoded and hashed in parallel, and the store is read by one thread at a time.
    """

    def __init__(self, store: Store) -> None:
        self._opened = store
        self._file = os.path.abspath(store.path)  # looked at again after a chdir as well
        self._identity, self._state = identity_and_state(self._file)
        self._pinned = 0  # inside _reading(): the store that snapshot was taken on
        self._index: HashIndex | None = None
        self._generation: tuple[str, int, int] | None = None
        self._verified: VerifiedSearch | None = None  # stores with features: loaded once
        self._verified_generation: tuple[str, int, int] | None = None
        # One SQLite connection and one search index, used by one thread at a time: a web
        # application's worker threads sharing an ImageStore failed with SQLite's "objects
        # created in a thread can only be used in that same thread" once one of them had
        # opened a replaced store again (a review). Reentrant: a block reading the store calls
        # helpers that read it too.
        self._lock = threading.RLock()
        self._closed = False

    @property
    def has_features(self) -> bool:
        """True for a store built with index.py --features (verified matches)."""
        with self._lock:
            return self._store.has_features()

    @property
    def images_without_features(self) -> int:
        """On a store with features, how many images have none yet (an index.py --features run
        that did not finish): search() answers them by their hash alone, unverified, and
        groups() leaves them out. 0 on a complete store and on a hash-only one."""
        with self._reading():
            return self._store.images_without_features()

    @property
    def path(self) -> str:
        return self._opened.path

    @property
    def dataset(self) -> str:
        """The folder the stored paths are relative to."""
        with self._lock:
            return self._store.dataset_root

    @property
    def recipe(self) -> Recipe:
        """How the stored hashes were made; queries are hashed the same way."""
        with self._lock:
            return self._store.recipe

    def __len__(self) -> int:
        """How many images the store holds."""
        with self._reading():
            return self._store.image_count()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._opened.close()

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def hash(self, image: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
        """The image's hash with this store's recipe, hexadecimal."""
        return self._hashes(image, self.recipe, mirror=False, max_pixels=max_pixels)[0].hex()

    def search(
        self,
        image: ImageInput,
        *,
        max_distance: int = DEFAULT_MAX_DISTANCE,
        mirror: bool = False,
        include_low_information: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> list[Found]:
        """The stored images within max_distance bits of `image`, nearest first.

        `image` is a file path, the bytes of an image file (or an open binary file or stream,
        which is read), or a PIL image. Files and bytes are
        decoded as index.py decodes them, so a stored file searched by path or by its bytes is
        found at distance 0; a PIL image is hashed as it is, which for a JPEG the store decoded
        at reduced size can differ by a bit or two. `mirror` also matches mirror images. Blank and
        smooth images match nothing unless `include_low_information`. Raises ImageError for an
        image that cannot be read, ValueError for a distance outside 0..the hash's bits.

        On a store with features (index.py --features) the answers are search.py's: candidates
        from the hash and the local features, only verified ones kept (crops, pads, rotations and
        mirror images included), nearest by hash first, then by inliers; and the hash's
        candidates that have no features yet (images_without_features), unverified.
        """
        self._check_distance(max_distance)
        if hasattr(image, "read") and not isinstance(image, Image.Image):
            image = image.read()  # an open file or a stream, as a web framework hands an upload
        for _attempt in range(RECIPE_RETRIES):
            # Decoded and hashed outside the lock (threads do that in parallel), the way the
            # store asks; a store replaced meanwhile by one of another recipe, or with or without
            # features, is asked again its own way (a review: a query hashed for the old store
            # was looked up in the new one, a wrong empty answer or a ValueError).
            with self._lock:
                recipe, features = self._store.recipe, self._store.has_features()
            # On a store with features the mirror image's hash proposes candidates too (verified).
            looks = self._hashes(image, recipe, mirror=mirror or features, max_pixels=max_pixels)
            frame = _analysis_frame(image, max_pixels) if features else None
            with self._reading() as store:
                if (store.meta_changed()  # since the look at the file: see Store.meta_changed
                        or store.recipe != recipe or store.has_features() != features):
                    continue
                if frame is not None:
                    matches = self._verified_matches(looks, frame, max_distance,
                                                     include_low_information)
                else:
                    index = self._current_index() if max_distance > 0 else None
                    answers = find_matches_many(store, looks, max_distance, index,
                                                include_low_information=include_low_information)
                    matches = answers[0] if len(answers) == 1 else merge_matches(*answers)
                root = store.dataset_root  # of the store answered from, were it replaced since
            return [Found(match.path, full, match.distance, match.hash_hex, match.found_by,
                          match.inliers, match.verified, match.mirrored) for match in matches
                    if (full := resolve_stored_path(root, match.path)) is not None]
        raise StoreError(f"{self.path}: the store kept changing its recipe while this query was"
                         " answered")

    def groups(
        self, max_distance: int = DEFAULT_MAX_DISTANCE, *, include_low_information: bool = False,
        progress: bool = False, warn: Callable[[str], None] | None = None,
    ) -> list[DuplicateGroup]:
        """Groups of two or more images in which every pair is within max_distance bits (no
        chains: a~b and b~c do not put a and c together), each image in one group at most,
        largest first. On a store with features each image is searched again (its file read:
        minutes for 10^4 images): `progress` shows a bar on a terminal, and `warn` gets a line
        for each image whose file can no longer be read (its own matches are not searched), and
        one saying how many images have no features yet (left out: they cannot be verified)."""
        self._check_distance(max_distance)
        if problem := groups_distance_problem(max_distance, self.recipe.bits):
            raise ValueError(problem.replace("--groups", "groups", 1))
        with self._reading():
            if self.has_features and not os.path.isdir(self.dataset):
                # Its folder is gone (moved with the store?): no image can be read again, so
                # none verified (Store.dataset_gone() says it once; not a line per image).
                groups = []
            elif self.has_features:  # every pair in a group is a verified match
                from .features.grouping import verified_groups
                from .features.search import VerifiedSearch, lacking_features

                _, line = lacking_features(self._store, "--groups leaves them out of its groups; ")
                if line is not None and warn is not None:
                    warn(line)
                search = VerifiedSearch.for_store(self._store, HashIndex.from_store(self._store))
                assert search is not None
                groups = verified_groups(self._store, search, max_distance,
                                         include_low_information=include_low_information,
                                         progress=progress,
                                         warn=warn or (lambda line: None))
            else:
                groups = near_duplicate_groups(self._store, max_distance,
                                               include_low_information=include_low_information)
            # The folder of the store grouped, were it replaced since (paths came out under the
            # new one's: a review).
            root = self._store.dataset_root
        result = []
        for group in groups:
            # Stored paths that would leave the dataset (a store from someone else) are dropped.
            inliers = group.inliers or (None,) * len(group.paths)
            kept = [(relpath, full, distance, count)
                    for relpath, distance, count in zip(group.paths, group.distances, inliers,
                                                        strict=True)
                    if (full := resolve_stored_path(root, relpath)) is not None]
            if len(kept) < 2:
                continue
            result.append(DuplicateGroup(
                tuple(r for r, _, _, _ in kept), tuple(f for _, f, _, _ in kept),
                tuple(d for _, _, d, _ in kept), group.max_distance, group.hashes,
                tuple(c for _, _, _, c in kept) if group.inliers is not None else None,
                group.fewest_inliers, group.pair_inliers))
        return result

    def evaluate(self, manifest: str | os.PathLike, *, mirror: bool = False) -> Evaluation:
        """Score the store against a gather.py manifest.csv: recall per edit and threshold,
        precision, the recommended threshold (see search.py --evaluate)."""
        from .evaluation.scoring import evaluate_manifest  # only evaluation needs the manifests

        with self._reading():
            return evaluate_manifest(self._store, os.fspath(manifest), mirror=mirror)

    # -- inside ------------------------------------------------------------------------------

    @property
    def _store(self) -> Store:
        if self._closed:  # said as such, not as SQLite's "cannot operate on a closed database"
            raise StoreError(f"{self._opened.path}: this store was closed (close() or the end of"
                             " its with block); open it again with neardup.open_store()")
        return self._opened if self._pinned else self._follow()

    @contextmanager
    def _reading(self) -> Iterator[Store]:
        """One consistent view of the store at the path (followed first), held for the block,
        and the store to this thread alone."""
        with self._lock:
            store = self._store
            self._pinned += 1
            try:
                with store.snapshot():
                    yield store
            finally:
                self._pinned -= 1

    def _follow(self) -> Store:
        """The store open, opened again first if the file at its path is no longer the one held
        open or was written since (a stat: microseconds). A review: a script holding an
        ImageStore went on answering from the old file after the README's rebuild (`index.py -s
        new.shelve && mv new.shelve db.shelve`) and after `rm db.shelve`; the checker behind
        --stdin and --serve reopened. The file is written in place by index.py's checkpoints
        too: opening it again then costs milliseconds beside the index rebuilt for the new
        generation anyway."""
        identity, state = identity_and_state(self._file)
        if (identity is not None and identity == self._identity and state == self._state
                and not self._opened.shared_memory_lost and not self._opened.meta_changed()):
            return self._opened
        path = self._opened.path
        # Closed before it is opened again: a connection to the old file and one to the new,
        # open at once, share the -shm path, and the old one's close would drop the new one's
        # lock (core.sharedmemory). Until it opens, nothing matches the old identity.
        self._opened.close()
        self._identity = None
        try:
            # As it was named, unless the caller has changed folder since.
            named = path if os.path.abspath(path) == self._file else self._file
            store, identity = open_with_identity(named)
        except StoreError as error:
            reason = str(error).removeprefix(f"{path}: ")
            raise StoreError(f"{path}: the store file was replaced, deleted or rewritten since it"
                             f" was opened, and cannot be opened again ({reason})") from error
        self._opened, self._identity, self._state = store, identity, state
        self._index, self._generation = None, None
        self._verified, self._verified_generation = None, None
        return store

    def _check_distance(self, max_distance: int) -> None:
        if isinstance(max_distance, bool) or not isinstance(max_distance, int):
            raise TypeError(f"max_distance must be a whole number of bits, not {max_distance!r}")
        bits = self.recipe.bits
        if not 0 <= max_distance <= bits:
            raise ValueError(f"max_distance {max_distance} is outside 0..{bits}, the bits of"
                             f" {self.path}'s hashes")

    def _current_index(self) -> HashIndex:
        generation = self._state_seen()
        if self._index is None or generation != self._generation:
            self._index = HashIndex.from_store(self._store)
            self._generation = generation
        return self._index

    def _state_seen(self) -> tuple[str, int, int]:
        """What moves with every change of the store: its generation and schema (triggers
        dropped, a bucket written and the triggers made again between two calls kept the old
        index: a review), or where no change log is kept (an old store, or triggers another
        program dropped) every commit seen."""
        store = self._store
        if store.refresh_tracking():
            return "logged", store.generation(), store.schema_version()
        return "every commit", store.generation(), store.data_version()

    def _verified_matches(self, hashes: list[Hash], frame: np.ndarray, max_distance: int,
                          include_low_information: bool) -> list[Match]:
        """search() on a store with features (called reading it)."""
        generation = self._state_seen()
        if self._verified is None or generation != self._verified_generation:
            # The feature index is read once per store generation, not once per query.
            from .features.search import VerifiedSearch

            self._verified = VerifiedSearch.for_store(self._store, self._current_index())
            self._verified_generation = generation
        if self._verified is None:  # has_features() was checked in this snapshot
            raise StoreError(f"{self.path}: its local features cannot be read")
        return self._verified.search(hashes, frame, max_distance,
                                     include_low_information=include_low_information)

    def _hashes(self, image: ImageInput, recipe: Recipe, *, mirror: bool,
                max_pixels: int) -> list[Hash]:
        """The query's hash (and its mirror image's): through hashing's one entry point, so a
        query is hashed exactly as index.py hashed the stored images."""
        if isinstance(image, Image.Image):
            # Already decoded at full size by the caller: only the recipe's own steps remain,
            # once its mode is one they read (open_image checks a file's; the features, which
            # look after the hash, read every mode the hash does).
            refusal = mode_refusal(image, recipe)
            if 0 in image.size:  # no file decodes to this (Pillow refuses one), but Image.new can
                refusal = f"has no pixels ({image.width} x {image.height})"
            if refusal is not None:
                raise ImageError(getattr(image, "filename", "") or "image", refusal)
            plain, flipped = hash_decoded_and_mirror(image, recipe, mirror=mirror)
        elif isinstance(image, (bytes, bytearray, memoryview)):
            plain, flipped = hash_source("upload", recipe, max_pixels, data=bytes(image),
                                         mirror=mirror)
        else:
            plain, flipped = hash_source(os.fspath(image), recipe, max_pixels, mirror=mirror)
        return [plain] if flipped is None else [plain, flipped]


def _analysis_frame(image: ImageInput, max_pixels: int) -> np.ndarray:
    """What local features look at, decoded as index.py --features decodes stored files."""
    from .features.extract import analysis_frame, read_frame

    if isinstance(image, Image.Image):
        return analysis_frame(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return read_frame("upload", max_pixels, data=bytes(image))
    return read_frame(os.fspath(image), max_pixels)
