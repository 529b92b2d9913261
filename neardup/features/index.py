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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..core.cache import cached_array
from ..core.store import Store
from ..errors import StoreError
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
            import faiss

            self._quantizer = faiss.downcast_IndexBinary(index.quantizer)  # type: ignore[attr-defined]
            sizes = np.array([lists.list_size(number) for number in range(lists.nlist)])
            self._crowded = sizes > CROWDED_LIST * max(1.0, float(sizes.mean()))

    @classmethod
    def from_store(cls, store: Store) -> FeatureIndex:
        import faiss

        # The checker answers from several threads and index.py runs workers: FAISS's own
        # OpenMP threads only fight them for the same cores (measured 60x slower on 2 busy cores).
        faiss.omp_set_num_threads(1)
        # Both arrays come from one reading of every stored record (4 s per 10^5 images),
        # whichever of the two has to be built.
        read = functools.cache(lambda: _read_descriptors(store))
        for fresh in (False, True):
            owners = cached_array(store, "feature-owners", lambda: read()[1], small_too=True,
                                        build_version=INDEX_BUILD, fresh=fresh)
            serialised = cached_array(store, "feature-index", lambda: _build(read()[0]),
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
        if hasattr(index, "nprobe"):
            index.nprobe = PROBES
        return cls(index, np.asarray(owners))

    def __len__(self) -> int:
        return int(self._index.ntotal)  # type: ignore[attr-defined]

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
        if self._crowded is None:
            return self._index.search(searched, NEIGHBOURS)  # type: ignore[attr-defined]
        nearest, lists = self._quantizer.search(searched, PROBES)
        lists = np.where(self._crowded[lists], -1, lists)
        return self._index.search_preassigned(  # type: ignore[attr-defined]
            searched, NEIGHBOURS, lists, nearest)


def _read_descriptors(store: Store) -> tuple[np.ndarray, np.ndarray]:
    """Every stored descriptor, and the image id it belongs to, image by image in path order:
    the index built from them (its training sample is drawn by position) is then the same for
    the same images, whatever order they were stored in. Ids follow the order index.py's workers
    finished: two indexings of one gather.py sample differed by 3 pad copies of 500 when the
    index was built in id order. Read in id order (the table's own, one pass over the file),
    then sorted."""
    rows: list[tuple[str, int, np.ndarray]] = []
    for image_id, path, data in store.feature_rows():
        try:
            features = FeatureSet.from_bytes(data)
        except ValueError as error:  # said once; the image is then found by its hash alone
            store.report_damaged_features(path, str(error))
            continue
        rows.append((path, image_id, features.descriptors))
    rows.sort(key=lambda row: row[0])
    blocks: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    for _path, image_id, descriptors in rows:
        blocks.append(descriptors)
        owners.append(np.full(len(descriptors), image_id, dtype=np.int64))
    if not blocks:
        return np.zeros((0, DESCRIPTOR_BYTES), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(blocks), np.concatenate(owners)


def _build(descriptors: np.ndarray) -> np.ndarray:
    """The serialised FAISS index of every stored descriptor."""
    import faiss

    bits = DESCRIPTOR_BYTES * 8
    if len(descriptors) <= FLAT_MAX_DESCRIPTORS:
        index = faiss.IndexBinaryFlat(bits)
    else:
        # As many lists as descriptors per list (the square root of the count): a query then
        # compares each descriptor with every centroid and with PROBES lists, and both costs are
        # equal. Measured at 1.1 million descriptors: 512 lists took 80 ms per query look.
        lists = int(min(65_536, 2 ** round(np.log2(np.sqrt(len(descriptors))))))
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, lists)
        index.cp.niter = TRAINING_ROUNDS
        rng = np.random.default_rng(0)  # the same sample, so the same index, on every build
        sample = descriptors[rng.choice(len(descriptors), min(len(descriptors),
                                                               max(TRAINING_SAMPLE, lists * 40)),
                                        replace=False)]
        index.train(sample)
    index.add(descriptors)
    return faiss.serialize_index_binary(index)
