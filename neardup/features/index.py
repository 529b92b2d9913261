"""Candidate search over the stored local features: which stored images share keypoints with a
query, found without comparing the query with every image.

Every stored descriptor (STORED_KEYPOINTS per image) goes into one FAISS binary index; each query
descriptor looks up its NEIGHBOURS nearest stored descriptors, and each stored image gets one vote
per query descriptor that found one of its descriptors within MAX_DESCRIPTOR_DISTANCE bits. The
images with the most votes (at least MIN_VOTES, at most MAX_CANDIDATES) are the candidates that
verification then accepts or refuses.

Small stores use an exact (flat) index; larger ones an inverted file (IndexBinaryIVF): descriptors
are assigned to one of `lists` centroids, and a query scans only the PROBES nearest lists that
are not crowded (CROWDED_LIST). The serialised index is cached beside the store by generation,
like the hash arrays.

A store that changed is not indexed from scratch: the centroids of the last build are kept while
the descriptors stay within RETRAIN_GROWTH of the count they were trained on (and call for as
many lists), and so is the list of every descriptor of an image whose record did not change;
only new and changed images' descriptors are assigned. Assigning every descriptor was most of a
build: 16 minutes at 10^6 images after any change, one image added or a thousand.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.cache import EarlierArrays, cached_array, crc32_of, earlier_cached_arrays
from ..core.store import Store
from ..errors import StoreError
from . import faiss_in_this_thread
from .extract import DESCRIPTOR_BYTES, MIRROR_SEARCHED_KEYPOINTS, SEARCHED_KEYPOINTS, FeatureSet

# Two ORB descriptors of the same point in a copy differ by up to about 25 of the 128 bits stored;
# unrelated points by about 64 on average. Beyond 32 a neighbour is noise and gets no vote.
MAX_DESCRIPTOR_DISTANCE = 32
NEIGHBOURS = 10
MIN_VOTES = 5
# A photo library may hold a dozen copies of one picture (gather.py makes 13 per sample): each must
# be a candidate. Verification stops earlier (search.py: STOP_AFTER_REFUSALS).
MAX_CANDIDATES = 32
# Below this many descriptors (about 280 images) an exact scan costs under a few milliseconds.
FLAT_MAX_DESCRIPTORS = 20_000
# Lists scanned per query descriptor. 150 CALTECH-101 copies x 13 edit kinds (gather.py --seed 31)
# on 11,095 images, recipe v2: 4 lists (and all 500 query keypoints) found 99.8 %, 2 lists (and 150) 99.7 %;
# at 10^5 images 2 lists cost 50 ms per query against 70 ms with 4 (bench/features.py).
PROBES = 2
TRAINING_SAMPLE = 100_000
# k-means rounds when training the lists (FAISS's default is 25). The centroids are binarised after
# training, which blurs what later rounds refine: measured on 72,666 query descriptors of 150
# copies against the 1.1 million stored ones of gather.py --seed 2026 (1,024 lists), the share of
# each descriptor's true neighbours (within MAX_DESCRIPTOR_DISTANCE) that the search finds was
# 47.0 / 48.0 / 49.3 / 47.9 % after 5 / 8 / 10 / 25 rounds, while training took 4.7 / 7.5 / 9.4 /
# 23.6 s there, and search.py --evaluate printed the same report to the last line with 10 rounds
# as with 25 on gather.py --seed 2026, 7 and 99. The 25 rounds were a sixth of index.py --features
# on all of CALTECH-101 (9.2 of 58 s under cProfile).
TRAINING_ROUNDS = 10
# The centroids of an earlier build are kept while the descriptors number between 1/RETRAIN_GROWTH
# and RETRAIN_GROWTH times the count they were trained on (and call for as many lists). Measured
# on gather.py --seed 3131 (500 originals, 13 kinds of copies), each sample indexed in two runs:
# centroids trained on 80 % of the images, kept for the rest (1.25 times the descriptors), found
# as many copies of every kind as fresh builds trained on four samples of all of them (combo 95.8,
# crop 99.4, pad 98.6 %; fresh: combo 95.4 to 96.0, crop 99.4, pad 97.6 to 98.6 %); trained on
# the 9,145 originals alone and kept for the copies (1.7 times), crop 98.8 % and pad 97.2 %.
RETRAIN_GROWTH = 1.25
# Descriptors assigned to their lists per call (the distances and labels of a call are held at once).
ASSIGN_CHUNK = 1_000_000
# Lists holding more than CROWDED_LIST times the mean are not scanned: the stop words of Chum,
# Philbin and Zisserman's near-duplicate retrieval (BMVC 2008). ORB descriptors crowd around a few
# common patterns (plain edges and corners, which every photo has): at 10^5 images a third of
# the descriptors were in lists over twice the mean (the largest 7.4 times), and a query scanned
# 1.85 times the mean list per probe. Skipping them cut the candidate search from 21 to 11 ms per
# query (cProfile of bench/features.py's queries) and cost the verified search 0.2 to 0.4 % of
# the pad, crop, rotate or combo copies on three samples (gather.py --seed 2026, 7, 99; every
# recall goal still met).
CROWDED_LIST = 2.0
# Bumped whenever the same stored records start giving another index (the order descriptors are
# added in, how the lists are trained), so that an index cached by an older neardup is built
# again rather than answering differently from a fresh one. 2: descriptors in path order, lists
# trained in TRAINING_ROUNDS rounds (1, unnamed: in id order, 25 rounds).
INDEX_BUILD = 2


@dataclass(frozen=True, slots=True)
class Candidate:
    image_id: int
    votes: int
    look: int  # which look of the query found it (0: as is, 1: mirrored)


class FeatureIndex:
    def __init__(self, index: object, owners: np.ndarray) -> None:
        self._index = index
        self.owners = owners  # image id of each indexed descriptor
        self._crowded: np.ndarray | None = None  # per list of an inverted file: skipped
        lists = getattr(index, "invlists", None)
        if lists is not None:
            faiss = faiss_in_this_thread()

            self._quantizer = faiss.downcast_IndexBinary(index.quantizer)  # type: ignore[attr-defined]
            sizes = np.array([lists.list_size(number) for number in range(lists.nlist)])
            self._crowded = sizes > CROWDED_LIST * max(1.0, float(sizes.mean()))

    @classmethod
    def from_store(cls, store: Store) -> FeatureIndex:
        faiss = faiss_in_this_thread()
        # Both arrays come from one reading of every stored record (4 s per 10^5 images),
        # whichever of the two has to be built.
        read = functools.cache(lambda: _read_descriptors(store))
        built = functools.cache(lambda: _build(
            read()[0], read()[2], earlier_cached_arrays(store, _KEPT_FOR_NEXT, INDEX_BUILD)))
        for fresh in (False, True):
            owners = cached_array(store, "feature-owners", lambda: read()[1], small_too=True,
                                        build_version=INDEX_BUILD, fresh=fresh)
            serialised = cached_array(store, "feature-index", lambda: built().index,
                                            small_too=True, build_version=INDEX_BUILD,
                                            fresh=fresh)
            # The cached files pass their CRC; these checks catch a pair that does not belong
            # together (each rewritten alone, with a matching name): both are then built again.
            try:
                index = faiss.deserialize_index_binary(np.ascontiguousarray(serialised))
            except RuntimeError:  # FAISS's word for bytes that are no index
                continue
            if (index.ntotal == len(owners) and owners.ndim == 1
                    and owners.dtype == np.int64):
                break
        else:
            raise StoreError(f"{store.path}: the feature index built from the store does not"
                             " match it (the store changed while it was built?); search again")
        if built.cache_info().currsize:  # built here: kept for the next build to start from
            # Written even where another build of this state left its own (fresh): they go
            # with the index just written, which replaced that build's.
            for name, array in (("feature-assign", built().assign),
                                ("feature-images", read()[2]), ("feature-lists", built().lists)):
                cached_array(store, name, lambda array=array: array, small_too=True,
                             build_version=INDEX_BUILD, fresh=True)
        if hasattr(index, "nprobe"):
            index.nprobe = PROBES
        return cls(index, np.asarray(owners))

    def __len__(self) -> int:
        return int(self._index.ntotal)  # type: ignore[attr-defined]

    @property
    def ranks_by_votes(self) -> bool:
        """Whether the candidates' votes rank copies first. Only with an inverted file, whose
        crowded lists (the stop words) are skipped: a flat index (up to FLAT_MAX_DESCRIPTORS,
        about 280 images) counts the common patterns every photo has, and gave 11 stored
        photos 171 to 309 votes each, a 90-degree copy with 63 inliers 8th (a review)."""
        return self._crowded is not None

    def candidates(self, looks: list[FeatureSet], exclude: set[int] = frozenset()  # type: ignore[assignment]
                   ) -> list[Candidate]:
        """The stored images sharing the most keypoints with any look of the query."""
        best: dict[int, Candidate] = {}
        if len(self) == 0:
            return []
        for look_number, look in enumerate(looks):
            limit = SEARCHED_KEYPOINTS if look_number == 0 else MIRROR_SEARCHED_KEYPOINTS
            searched = np.ascontiguousarray(look.descriptors[:limit])
            if len(searched) == 0:
                continue
            distances, positions = self._search(searched)
            near = (positions >= 0) & (distances <= MAX_DESCRIPTOR_DISTANCE)
            rows = np.nonzero(near)[0]
            # One vote per query descriptor and image, however many of its descriptors match:
            # each (image, query descriptor) pair counted once, then the pairs counted per image.
            pairs = np.unique(self.owners[positions[near]] * len(searched) + rows)
            image_ids, counts = np.unique(pairs // len(searched), return_counts=True)
            enough = counts >= MIN_VOTES
            for image_id, count in zip(image_ids[enough].tolist(), counts[enough].tolist(),
                                       strict=True):
                if image_id not in exclude and (
                        image_id not in best or best[image_id].votes < count):
                    best[image_id] = Candidate(image_id, count, look_number)
        ranked = sorted(best.values(), key=lambda candidate: (-candidate.votes, candidate.image_id))
        return ranked[:MAX_CANDIDATES]

    def _search(self, searched: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The NEIGHBOURS nearest stored descriptors of each searched one, or -1."""
        faiss_in_this_thread()  # this thread's own OpenMP limit, before FAISS searches
        if self._crowded is None:
            return self._index.search(searched, NEIGHBOURS)  # type: ignore[attr-defined]
        nearest, lists = self._quantizer.search(searched, PROBES)
        lists = np.where(self._crowded[lists], -1, lists)
        return self._index.search_preassigned(  # type: ignore[attr-defined]
            searched, NEIGHBOURS, lists, nearest)


def _read_descriptors(store: Store) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every stored descriptor, the image id it belongs to, and each image's (id, CRC-32 of its
    record, descriptor count), image by image in path order: the index built from them (its
    training sample is drawn by position) is then the same for the same images, whatever order
    they were stored in. Ids follow the order index.py's workers finished: two indexings of one
    gather.py sample differed by 3 pad copies of 500 when the index was built in id order. Read
    in id order (the table's own, one pass over the file), then sorted."""
    rows: list[tuple[str, int, int, np.ndarray]] = []
    for image_id, path, data in store.feature_rows():
        try:
            features = FeatureSet.from_bytes(data)
        except ValueError as error:  # said once; the image is then found by its hash alone
            store.report_damaged_features(path, str(error))
            continue
        rows.append((path, image_id, zlib.crc32(data), features.descriptors))
    rows.sort(key=lambda row: row[0])
    images = np.array([(image_id, crc, len(descriptors)) for _, image_id, crc, descriptors in rows],
                      dtype=np.int64).reshape(-1, 3)
    if not rows:
        return np.zeros((0, DESCRIPTOR_BYTES), np.uint8), np.zeros(0, np.int64), images
    descriptors = np.concatenate([row[3] for row in rows])
    owners = np.repeat(images[:, 0], images[:, 2])
    return descriptors, owners, images


# What a build keeps for the next one (besides the index itself): the list of each descriptor,
# each image's identity (id, CRC-32 of its record, descriptor count) in path order, and how many
# descriptors the centroids were trained on, with how many lists.
_KEPT_FOR_NEXT = ("feature-index", "feature-assign", "feature-images", "feature-lists")


@dataclass(frozen=True)
class _Built:
    index: np.ndarray  # the serialised FAISS index
    assign: np.ndarray  # the list of each descriptor (empty for a flat index)
    # [descriptors the centroids were trained on, lists ([0, 0] for flat), and the CRC-32 of the
    # index, of `assign` and of the images array this build was made for]: the arrays a build
    # keeps are used together only if they are one build's (_earlier_centroids).
    lists: np.ndarray


def _kept_info(trained_on: int, lists: int, index: np.ndarray, assign: np.ndarray,
               images: np.ndarray | None) -> np.ndarray:
    """_Built.lists for this build."""
    images = np.zeros((0, 3), np.int64) if images is None else images
    return np.array([trained_on, lists, crc32_of(np.ascontiguousarray(index)),
                     crc32_of(assign), crc32_of(np.ascontiguousarray(images))], np.int64)


def _build(descriptors: np.ndarray, images: np.ndarray | None = None,
           earlier: EarlierArrays | None = None) -> _Built:
    """The FAISS index of every stored descriptor; `images` (from _read_descriptors) and the
    arrays an `earlier` build kept let it keep that build's centroids and lists."""
    faiss = faiss_in_this_thread()

    bits = DESCRIPTOR_BYTES * 8
    if len(descriptors) <= FLAT_MAX_DESCRIPTORS:
        index = faiss.IndexBinaryFlat(bits)
        index.add(descriptors)
        serialised = faiss.serialize_index_binary(index)
        no_lists = np.zeros(0, np.int32)
        return _Built(serialised, no_lists, _kept_info(0, 0, serialised, no_lists, images))
    # As many lists as descriptors per list (the square root of the count): a query then
    # compares each descriptor with every centroid and with PROBES lists, and both costs are
    # equal. Measured at 1.1 million descriptors: 512 lists took 80 ms per query look.
    lists = int(min(65_536, 2 ** round(np.log2(np.sqrt(len(descriptors))))))
    kept = _earlier_centroids(earlier, lists, len(descriptors))
    assign: np.ndarray | None = None
    if kept is None:
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, lists)
        index.cp.niter = TRAINING_ROUNDS
        rng = np.random.default_rng(0)  # the same sample, so the same index, on every build
        sample = descriptors[rng.choice(len(descriptors), min(len(descriptors),
                                                               max(TRAINING_SAMPLE, lists * 40)),
                                        replace=False)]
        index.train(sample)
        trained_on = len(descriptors)
    else:
        index, trained_on = kept
        assert earlier is not None and images is not None
        assign = _earlier_assignments(earlier, images, lists)
    quantizer = faiss.downcast_IndexBinary(index.quantizer)
    if assign is None:
        assign = _nearest_lists(quantizer, descriptors)
    else:
        unknown = np.flatnonzero(assign < 0)
        if len(unknown):
            assign[unknown] = _nearest_lists(quantizer, descriptors[unknown])
    # What index.add(descriptors) does, with the lists given: the same index, byte for byte.
    descriptors = np.ascontiguousarray(descriptors)
    kept_lists = assign.astype(np.int32)
    assign = np.ascontiguousarray(assign, dtype=np.int64)
    index.add_core(len(descriptors), faiss.swig_ptr(descriptors), None, faiss.swig_ptr(assign))
    del assign
    serialised = faiss.serialize_index_binary(index)
    return _Built(serialised, kept_lists,
                  _kept_info(trained_on, lists, serialised, kept_lists, images))


def _nearest_lists(quantizer: Any, descriptors: np.ndarray) -> np.ndarray:
    """The list (nearest centroid) of each descriptor, as index.add() assigns them."""
    found = np.empty(len(descriptors), np.int64)
    for start in range(0, len(descriptors), ASSIGN_CHUNK):
        chunk = np.ascontiguousarray(descriptors[start:start + ASSIGN_CHUNK])
        found[start:start + len(chunk)] = quantizer.search(chunk, 1)[1].ravel()
    return found


def _earlier_centroids(earlier: EarlierArrays | None, lists: int,
                       count: int) -> tuple[Any, int] | None:
    """An earlier build's inverted file, emptied, with the count its centroids were trained
    on; None where they are not to be kept (none, another number of lists, grown or shrunk
    past RETRAIN_GROWTH, anything malformed)."""
    faiss = faiss_in_this_thread()

    if earlier is None:
        return None
    # A memory map, let go of once read (2.2 GB at 10^6).
    serialised = earlier.arrays.pop("feature-index")
    info = np.asarray(earlier.arrays["feature-lists"])
    if info.shape != (5,) or info.dtype != np.int64 or int(info[1]) != lists:
        return None
    # All from the one build that wrote `info`: two processes building one state (index.py and
    # a checker) left one's index beside the other's lists, and the next update filed 21,135 of
    # 22,032 descriptors under the wrong centroids (a second review), for good.
    if [int(value) for value in info[2:]] != [earlier.crcs[name] for name in _KEPT_FOR_NEXT[:3]]:
        return None
    trained_on = int(info[0])
    if not trained_on / RETRAIN_GROWTH <= count <= trained_on * RETRAIN_GROWTH:
        return None
    try:
        index = faiss.deserialize_index_binary(np.ascontiguousarray(serialised))
    except RuntimeError:
        return None
    finally:
        del serialised
    if (not isinstance(index, faiss.IndexBinaryIVF) or index.nlist != lists
            or not index.is_trained or index.code_size != DESCRIPTOR_BYTES):
        return None
    index.reset()  # its lists emptied; its centroids kept
    return index, trained_on


def _earlier_assignments(earlier: EarlierArrays, images: np.ndarray,
                         lists: int) -> np.ndarray | None:
    """The list of each descriptor whose image's record is unchanged since the earlier build
    (same id, same CRC-32, same descriptor count), -1 for the others; None if the earlier
    build's arrays do not fit together. Per-descriptor arrays are 32-bit (72 million
    descriptors at 10^6 images)."""
    before = np.asarray(earlier.arrays["feature-images"])
    their_lists = np.asarray(earlier.arrays["feature-assign"])
    if (before.ndim != 2 or before.shape[1] != 3 or before.dtype != np.int64
            or their_lists.ndim != 1 or their_lists.dtype != np.int32
            or int(before[:, 2].sum()) != len(their_lists) or (before[:, 2] < 0).any()
            or (len(their_lists) and (int(their_lists.min()) < 0
                                      or int(their_lists.max()) >= lists))):
        return None
    counts = images[:, 2]
    total = int(counts.sum())
    if not len(before) or not total or total >= 2**31:
        return np.full(total, -1, np.int32)
    # An image is the same when its id, the CRC of its record and its descriptor count are.
    keys = images[:, 0] * (1 << 32) + images[:, 1]
    their_keys = before[:, 0] * (1 << 32) + before[:, 1]
    order = np.argsort(their_keys, kind="stable")
    match = order[np.minimum(np.searchsorted(their_keys[order], keys), len(order) - 1)]
    same = ((their_keys[match] == keys) & (before[match, 2] == counts)
            & (images[:, 0] < (1 << 31)) & (before[match, 0] < (1 << 31)))
    # Where each descriptor of a kept image sat in the earlier build: its own position moved by
    # its image's shift between the two builds.
    shift = (np.cumsum(before[:, 2]) - before[:, 2])[match] - (np.cumsum(counts) - counts)
    source = np.repeat(np.where(same, shift, 0).astype(np.int32), counts)
    source += np.arange(total, dtype=np.int32)
    kept = np.repeat(same, counts)
    return np.where(kept, their_lists[np.where(kept, source, 0)], np.int32(-1))
