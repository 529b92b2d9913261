"""Verified search: candidates from the hash AND the local features, kept only when verified.

The hash proposes the stored images within max_distance bits; the feature index proposes those
sharing the most keypoints with the query or with its mirror image (so mirrored copies are found
without --mirror). Every candidate, however found, is then verified (verify.py) against the
stored image's features, and only verified ones are answered.

Except the hash's candidates that have no features at all: on a store whose index.py --features
upgrade did not finish (the recipe is recorded before the first batch), the images not reached
yet cannot be verified, and leaving them out answered nothing for them, silently (a review). They
are answered by their hash alone, unverified (found_by "hash", inliers None, verified False),
and every mode says so once (lacking_features).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from ..core.hashing import Hash
from ..core.search import HashIndex, Match, find_matches_many, merge_matches
from ..core.store import Store
from ..errors import NeardupError, StoreError, command
from . import require
from .extract import (
    FeatureRecipe,
    FeatureSet,
    beyond_a_band_features,
    enlarged_features,
    query_features,
    sharpened_features,
    softened_features,
    without_bars,
)
from .index import FeatureIndex
from .verify import EXACT_RESIDUAL, FINE_DETAIL, Verdict, descriptor_index, verify

# Feature candidates come best first (most shared keypoints); after this many of them refused in a
# row the rest are refused unseen: copies have far more votes than look-alikes (bounds the search
# time). Only feature candidates count: a motorbike's hash finds a dozen other motorbikes, which
# verification refuses, and counted with them its own copies with 46 votes went unverified.
# Counted for each look apart: the mirrored look searches fewer keypoints (extract.
# MIRROR_SEARCHED_KEYPOINTS), so its votes rank below the look as it is; counted together, a
# review's mirrored portraits found their original 7th (35 votes) behind four other portraits
# of the plain look, refused, and 6 of 36 mirrored copies were missed without --mirror.
STOP_AFTER_REFUSALS = 4

# A verified picture within this much of the query's scale, aligned pixel-exact (verify.
# EXACT_RESIDUAL), is the query's own frame (same_frame).
SAME_FRAME_SCALE = 0.01

# The verdict of a hash candidate the store holds no features for (an unfinished upgrade).
NO_FEATURES = "no features stored"
_UNVERIFIABLE = Verdict(False, 0, 0, None, 0.0, None, None, NO_FEATURES)

# A feature record describes the image whose path it is stored under only if its thumbnail's
# dHash is within this many bits of the dHash-64 stored for that path. Records swapped between
# two images by hand (a hostile review) verified a query's copy under the other image's path,
# with 72 inliers. Measured on three stores (gather.py --seed 2026 and 99, 15,645 images each;
# 300 logo copies): every record within 15 bits of its own image's hash; of 20,000 records
# against random other images' hashes, 1.6 % within 20 bits.
RECORD_HASH_BITS = 20


def lacking_features(store: Store, also: str = "") -> tuple[int, str | None]:
    """How many stored images have no features on a store that keeps them, and the one line
    that says so (None when none lacks them). `also`: what the caller's mode does with them,
    ending with "; "."""
    lacking = store.images_without_features()
    if not lacking:
        return 0, None
    total = store.image_count()
    index = command("index.py")
    verb = "has" if lacking == 1 else "have"
    return lacking, (f"{store.path}: {lacking} of the {total} stored images {verb} no local"
                     f" features yet ({index} --features did not finish): search answers"
                     f" {'it by its' if lacking == 1 else 'them by their'} hash alone, unverified;"
                     f" {also}run {index} --features again to finish")


class VerifiedSearch:
    """The store's feature index loaded once; answers queries inside the caller's snapshot."""

    def __init__(self, store: Store, hash_index: HashIndex | None) -> None:
        self.store = store
        self.hash_index = hash_index
        self.features = FeatureIndex.from_store(store)

    def _describes(self, path: str, record: FeatureSet, hash_hex: str) -> bool:
        """Whether a verified candidate's record describes the image of its path (unknown, and
        taken as so, on a store of another hash than dHash-64); said once where it does not."""
        if not hash_hex:  # a record of no indexed image (written by hand; index.py drops it)
            self.store.report_damaged_features(path, "the record belongs to no indexed image")
            return False
        recipe = self.store.recipe
        if recipe.algorithm != "dhash" or recipe.hash_size != 8:
            return True
        apart = (record.thumbnail_dhash() ^ int(hash_hex, 16)).bit_count()
        if apart <= RECORD_HASH_BITS:
            return True
        self.store.report_damaged_features(
            path, f"the record describes another picture ({apart} bits from the image's hash;"
            f" written behind index.py?)")
        return False

    @classmethod
    def for_store(cls, store: Store, hash_index: HashIndex | None) -> VerifiedSearch | None:
        """None for a hash-only store; a store with features needs the optional libraries."""
        recorded = store.feature_recipe()
        if recorded is None:
            return None
        require()
        if recorded != FeatureRecipe().to_dict():
            raise StoreError(f"{store.path}: holds features made with"
                             f" {FeatureRecipe.describe_recorded(recorded)}; this neardup"
                             f" makes {FeatureRecipe().describe()}; index again into a new store")
        return cls(store, hash_index)

    def search(
        self,
        hashes: list[Hash],
        frame: np.ndarray,
        max_distance: int,
        *,
        include_low_information: bool = False,
        source: str = "both",
        sharpen: bool = True,
        unpad: bool = True,
    ) -> list[Match]:
        """Verified matches of one query: `hashes` are its hash (and mirror hash, with --mirror),
        `frame` its analysis frame (extract.read_frame). Best first: by hash distance, then by
        inliers, features-only matches last. `source`: where candidates come from, "hash",
        "features" or "both" (what search.py does). `sharpen`: whether a hash candidate no look
        aligned with is asked again with the query sharpened (for a blurred query). `unpad`: see
        search_with_verdicts. A hash candidate without stored features (an unfinished upgrade) is
        answered unverified."""
        return [match for match, verdict in self.search_with_verdicts(
            hashes, frame, max_distance, include_low_information=include_low_information,
            source=source, sharpen=sharpen, unpad=unpad)
            if verdict.verified or verdict.reason == NO_FEATURES]

    def search_with_verdicts(
        self,
        hashes: list[Hash],
        frame: np.ndarray,
        max_distance: int,
        *,
        include_low_information: bool = False,
        source: str = "both",
        sharpen: bool = True,
        unpad: bool = True,
        magnified: float = 1.0,
        as_came: float | None = None,
    ) -> list[tuple[Match, Verdict]]:
        """Every candidate with its verdict, verified or not (for --evaluate and tests). `unpad`:
        whether a query that verified nothing but its own frame is searched again without the
        flat bars at its edges (a padded or letterboxed copy: extract.without_bars).
        `magnified`, `as_came`: how many times larger than the query as it came `frame` is and
        the query's sharpness as it came (for a frame cut of its bars: verification reads fine
        detail only where the query keeps its size and is as sharp as the stored picture)."""
        looks = query_features(frame, magnified, as_came)
        as_came = looks[0].sharpness
        # path -> (hash distance or None, how it was found)
        found: dict[str, tuple[int | None, set[str]]] = {}
        hash_of: dict[str, str] = {}  # the stored hash (hex) of each candidate the hash found
        by_mirror_hash: set[str] = set()  # hash candidates the query's mirror image was nearer to
        if source in ("hash", "both") and hashes:
            answers = find_matches_many(self.store, hashes, max_distance, self.hash_index,
                                        include_low_information=include_low_information)
            for match in merge_matches(*answers) if len(answers) == 2 else answers[0]:
                found[match.path] = (match.distance, {"hash"})
                hash_of[match.path] = match.hash_hex
                if match.mirrored:
                    by_mirror_hash.add(match.path)
        stored: dict[str, FeatureSet] = {}
        found_by_look: dict[str, int] = {}  # which look's descriptors found a feature candidate
        if source in ("features", "both"):
            # The query as it is and mirrored propose candidates; enlarged looks only verify.
            # Proposing too, they found 1 or 2 more copies on three of the six README samples,
            # and 2 more different catalogue motorbikes on gather.py --seed 2026, 1 on 4242.
            candidates = self.features.candidates(looks)
            records = self.store.features_by_id(candidate.image_id for candidate in candidates)
            for candidate in candidates:  # most votes first
                if candidate.image_id not in records:
                    continue  # removed since the index was built: the caller reloads it
                path, data = records[candidate.image_id]
                parsed = _parse(self.store, path, data)
                if parsed is None:
                    continue
                stored[path] = parsed
                found_by_look[path] = candidate.look
                distance, how = found.get(path, (None, set()))
                found[path] = (distance, how | {"features"})
        # Hash candidates the store holds no readable features for: answered by the hash alone,
        # unverified, whether the record is missing (an unfinished upgrade) or damaged (said
        # once; dropped, it hid an exact copy of the upload: a review).
        unverifiable: set[str] = set()
        for path in found:
            if path not in stored:
                record = self.store.features_of_path(path)
                parsed = None if record is None else _parse(self.store, path, record[1])
                if parsed is None:
                    unverifiable.add(path)
                else:
                    stored[path] = parsed
        # One query for the hashes of the features' candidates (one per candidate cost 1.4 ms of
        # a 30 ms search at 10^5 images).
        hash_of |= self.store.hashes_of_paths([path for path in found if path not in hash_of])
        answers_out: list[tuple[Match, Verdict]] = []
        indexes = [descriptor_index(look) for look in looks]
        enlarged = _LaterLooks(frame, lambda picture: enlarged_features(picture, magnified,
                                                                        as_came))
        sharpened = _LaterLooks(frame, sharpened_features)
        softened = _LaterLooks(frame, softened_features)
        uncaptioned = _LaterLooks(frame, lambda picture: beyond_a_band_features(picture, looks[0]))
        by_softened: set[str] = set()  # verified only by the query blurred
        refused_in_a_row = [0] * len(looks)  # feature candidates refused in a row, per look
        # Hash candidates first (each verified), then feature candidates by votes, best first.
        for path, (distance, how) in sorted(found.items(), key=lambda item: "hash" not in item[1][1]):
            if path in unverifiable:
                answers_out.append(_by_hash_alone(path, distance, hash_of.get(path, ""),
                                                  path in by_mirror_hash))
                continue
            first = found_by_look.get(path, 0)  # the look that found it, first
            if ("hash" not in how and self.features.ranks_by_votes
                    and refused_in_a_row[first] >= STOP_AFTER_REFUSALS):
                continue
            order = [first, *range(first), *range(first + 1, len(looks))]
            # Enlarged and sharpened looks for the hash's candidates only: what a smaller or a
            # blurred copy of the same photo is (its hash barely moves). Offered a feature
            # candidate too, enlarged looks verified small copies of a face against other
            # photographs of the same woman.
            by_hash = "hash" in how
            verdict, through = _best_verdict(
                [(looks[number], indexes[number]) for number in order], stored[path],
                enlarged if by_hash else None, sharpened if by_hash and sharpen else None,
                softened if by_hash and sharpen else None, uncaptioned if by_hash else None)
            if "hash" not in how:  # the hash's refusals say nothing of the features' ranking
                refused_in_a_row[first] = 0 if verdict.verified else refused_in_a_row[first] + 1
            hash_hex = hash_of.get(path, "")
            if verdict.verified and not self._describes(path, stored[path], hash_hex):
                if by_hash:  # as for a damaged record
                    answers_out.append(_by_hash_alone(path, distance, hash_hex,
                                                      path in by_mirror_hash))
                continue
            found_by = "+".join(name for name in ("hash", "features") if name in how)
            if verdict.verified and softened.made(through):
                by_softened.add(path)
            answers_out.append((Match(path, distance, hash_hex, found_by, verdict.inliers,
                                      verdict.verified, through.mirrored), verdict))
        answers_out.sort(key=_answer_order)
        # Only then, so a query that found what it is a copy of (nearly every one) costs nothing
        # more: with bars looked at as they were, padded copies' originals were not among the
        # features' candidates (bench/upload_direction.py; extract.without_bars).
        # A query that found only pictures of its own frame (itself, stored: a re-upload, or
        # `search.py -q` on a file of the indexed folder) is asked again too: it verified
        # against itself, and a captioned or padded copy then missed the original the same
        # query found in a store without it (a review: 10 and 13 of 16). So is one that found
        # only what the query blurred verified (a copy stored blurred, padded like the query:
        # a review found the sharp original then missed), and both answers are kept.
        kept_anyway = [verdict.verified and (same_frame(verdict) or match.path in by_softened)
                       for match, verdict in answers_out]
        if unpad and not any(verdict.verified and not kept for (_, verdict), kept
                             in zip(answers_out, kept_anyway, strict=True)):
            cut = without_bars(frame)
            if cut is not None:
                inside, enlarged_by = cut
                # A picture the query as it came showed to be another photograph stays refused.
                # The looks without bars are read for fine detail where they keep the query's
                # size on the stored frame, with the query's sharpness as it came: measured on
                # the frame cut and enlarged, a catalogue motorbike's (its white sides cut off,
                # the rest enlarged 1.32 times) was blurred past "as sharp", and a look-alike
                # refused in another way as it came was verified (a review).
                another = {match.path for match, verdict in answers_out
                           if verdict.reason == FINE_DETAIL}
                again = [(match, verdict) for match, verdict in self.search_with_verdicts(
                    hashes, inside, max_distance, include_low_information=include_low_information,
                    source=source, sharpen=sharpen, unpad=False,
                    magnified=magnified * enlarged_by, as_came=as_came)
                    if match.path not in another]
                if any(kept_anyway):
                    return _merged(answers_out, again)
                if any(verdict.verified for _, verdict in again):
                    return again
        return answers_out


def _by_hash_alone(path: str, distance: int | None, hash_hex: str,
                   mirrored: bool) -> tuple[Match, Verdict]:
    """What the hash alone answers for a candidate that cannot be verified: unverified."""
    return Match(path, distance, hash_hex, "hash", None, False, mirrored), _UNVERIFIABLE


def same_frame(verdict: Verdict) -> bool:
    """Whether a verified picture is the query's own frame: the same size, every keypoint where
    the query has it (the query itself stored, or a copy that only re-encoded it)."""
    return (verdict.scale is not None and abs(verdict.scale - 1) <= SAME_FRAME_SCALE
            and verdict.residual is not None and verdict.residual <= EXACT_RESIDUAL)


def _merged(first: list[tuple[Match, Verdict]], again: list[tuple[Match, Verdict]]
            ) -> list[tuple[Match, Verdict]]:
    """Both searches' answers, one per path (a verified one where either verified it), in the
    order search_with_verdicts gives them."""
    by_path = {match.path: (match, verdict) for match, verdict in first}
    for match, verdict in again:
        if match.path not in by_path or (verdict.verified and not by_path[match.path][1].verified):
            by_path[match.path] = (match, verdict)
    return sorted(by_path.values(), key=_answer_order)


def _answer_order(item: tuple[Match, Verdict]) -> tuple[bool, int, int, str]:
    """Nearest hash first, then most inliers; features-only matches last."""
    match, verdict = item
    return (match.distance is None, match.distance or 0, -verdict.inliers, match.path)


# Refusals before the pictures are compared: no transform between them was found. Only then is
# an enlarged look of a small query asked (extract.ENLARGED_BELOW), and only against a stored
# picture at least ENLARGED_FOR times its size: what the enlarging is for (a picture of the
# query's own size gains nothing from it); then the sharpened looks (extract.SHARPEN_MASKS), then
# the softened one (extract.SOFTEN_SIGMA). A picture whose keypoints aligned and was refused for
# how it looks gets no second chance from another look: verification is the only test against
# look-alikes.
GEOMETRIC_REFUSALS = frozenset(("too few keypoints", "too few matches", "no transform",
                                "implausible scale", "too few inliers"))
ENLARGED_FOR = 1.15


class _LaterLooks:
    """More looks of a query (enlarged, sharpened) with their descriptor indexes, made when first
    asked for (most verifications never need them)."""

    def __init__(self, frame: np.ndarray, make: Callable[[np.ndarray], list[FeatureSet]]) -> None:
        self._frame: np.ndarray | None = frame
        self._make = make
        self._looks: list[tuple[FeatureSet, Any]] = []

    def __call__(self) -> list[tuple[FeatureSet, Any]]:
        if self._frame is not None:
            self._looks = [(look, descriptor_index(look)) for look in self._make(self._frame)]
            self._frame = None
        return self._looks

    def made(self, look: FeatureSet) -> bool:
        """Whether `look` is one of these looks (made already: asked for before)."""
        return any(look is mine for mine, _ in self._looks)


def _best_verdict(looks: Iterable[tuple[FeatureSet, Any]], stored: FeatureSet,
                  enlarged: Callable[[], list[tuple[FeatureSet, Any]]] | None = None,
                  sharpened: Callable[[], list[tuple[FeatureSet, Any]]] | None = None,
                  softened: Callable[[], list[tuple[FeatureSet, Any]]] | None = None,
                  uncaptioned: Callable[[], list[tuple[FeatureSet, Any]]] | None = None
                  ) -> tuple[Verdict, FeatureSet]:
    """The first look (the one whose descriptors found the candidate, else the query as it is)
    that verifies, else the look with most inliers (a mirrored copy costs one verification),
    and that look.
    Each look comes with its descriptor_index(). While no look has aligned with the stored
    picture, the `enlarged` looks of a small query are asked when the stored picture is
    ENLARGED_FOR times the query's size or more, then the `sharpened` looks, then the
    `softened` one. The `uncaptioned` look (a caption's band left out) comes last, aligned or
    not (the caption is what made the aligned pictures differ), unless a look's fine detail
    showed the stored picture to be another photograph."""
    best: tuple[Verdict, FeatureSet] | None = None
    aligned = False
    another_photograph = False
    query_side = 0

    def later() -> Iterator[tuple[FeatureSet, Any]]:
        """The enlarged, the sharpened, then the softened looks, each only while no look has
        aligned (one that aligned and was refused gets no second chance); then the uncaptioned
        one."""
        if enlarged is not None and not aligned and (
                max(stored.width, stored.height) >= ENLARGED_FOR * query_side):
            yield from enlarged()
        for make in (sharpened, softened):
            for look in make() if make is not None and not aligned else ():
                if aligned:
                    break
                yield look
        if uncaptioned is not None and not another_photograph:
            yield from uncaptioned()

    for look, index in itertools.chain(looks, later()):
        query_side = max(query_side, look.width, look.height)  # read by later() once looks end
        verdict = verify(look, stored, index)
        aligned = aligned or verdict.reason not in GEOMETRIC_REFUSALS
        another_photograph = another_photograph or verdict.reason == FINE_DETAIL
        if best is None or verdict.inliers > best[0].inliers:
            best = verdict, look
        if verdict.verified:
            return verdict, look
    assert best is not None
    return best


def _parse(store: Store, path: str, data: bytes) -> FeatureSet | None:
    """The stored record, or None for one that cannot be read (said once: one damaged record
    failed every query that proposed it, as "store damaged")."""
    try:
        return FeatureSet.from_bytes(data)
    except ValueError as error:
        store.report_damaged_features(path, str(error))
        return None


class CheckerFeatures:
    """What the long-running checker (neardup.service.checker) needs from local features.

    The checker decodes the query's frame outside its lock (service/decoding.py: decoding is the
    expensive part) and calls `answer` inside its snapshot. The feature index is loaded when the
    store is first answered from (or reopened); when the features change after that, a thread
    builds the new index from its own connection while answers go on from the one in memory, and
    the first answer after it is done takes it. Meanwhile every candidate is still verified against
    the store as it is now: only images added since are not yet proposed by their features (their
    hash still finds them), and images removed since are passed over. Building it in the answer,
    under the checker's lock, froze every answer and /health for 5.5 s per commit at 2,508 images,
    and grows with the store (a hostile review).
    """

    def __init__(self, store_path: str, warn: Callable[[str], None] = lambda line: None,
                 answers_lock: threading.Lock | None = None) -> None:
        self._store_path = store_path
        self._warn = warn
        # Held by the checker's answers: the builder's connection closes under it, never while
        # an answer reads (its close may drop the process's lock on the -shm for a moment:
        # core.sharedmemory).
        self._answers_lock = answers_lock or threading.Lock()
        self._search: VerifiedSearch | None = None
        self._loaded_token = ""  # the features' token of the index in memory
        self._pending: tuple[str, FeatureIndex] | None = None  # built by the thread: (token, index)
        self._building: threading.Thread | None = None
        self._failed: tuple[str, str] | None = None  # (features' token, why) of a build that failed
        self._failed_said = False

    def answer(self, store: Store, generation: int, hash_index: HashIndex | None,
               hashes: list[Hash], frame: np.ndarray, max_distance: int,
               include_low_information: bool) -> list[Match]:
        token = store.feature_token()
        if self._search is None or self._search.store.store_id != store.store_id:
            # At start, or another store at the path: loaded here, from its cache when index.py
            # left one.
            self._search = VerifiedSearch.for_store(store, hash_index)
            self._loaded_token, self._pending = token, None
        else:
            # The same store, perhaps opened again (its file was checkpointed): its index
            # follows it like any other change.
            self._search.store = store
            if self._loaded_token != token:
                self._follow(store, token)
        if self._search is None:
            raise StoreError(f"{store.path}: holds no local features any more")
        self._search.hash_index = hash_index  # the checker's, current for this snapshot
        return self._search.search(hashes, frame, max_distance,
                                   include_low_information=include_low_information)

    def _follow(self, store: Store, token: str) -> None:
        """Take the index the thread built, if it is for the features as they are now, else
        have one built (called under the checker's lock)."""
        assert self._search is not None
        if self._pending is not None:
            built_for, index = self._pending
            self._pending = None
            self._search.features = index
            self._loaded_token = built_for
            if built_for == token:
                return
        if self._failed is not None:
            failed_for, why = self._failed
            if failed_for == token:
                # Tried once for these features: not again until they change (a damaged record
                # made every answer start a whole new build, 6 a second, a review).
                if not self._failed_said:
                    self._warn(f"building the feature index failed ({why}); answering from the"
                               " one in memory until the features change again")
                    self._failed_said = True
                return
            self._failed, self._failed_said = None, False
        if self._building is None:
            self._building = threading.Thread(target=self._build, args=(store.store_id,),
                                              name="neardup-feature-index", daemon=True)
            self._building.start()

    def _build(self, store_id: str) -> None:
        token = ""
        try:
            store = Store.open_for_reading(self._store_path, quick_check=False,
                                           report=self._warn)
            try:
                with store.snapshot():
                    if store.store_id != store_id:
                        return  # another store at the path: the next answer reopens it
                    token = store.feature_token()
                    built = (token, FeatureIndex.from_store(store))
            finally:
                with self._answers_lock:
                    store.close()
            self._pending = built
        except Exception as error:  # noqa: BLE001 - said by the next answer; the old one serves
            self._failed = (token, str(error) if isinstance(error, NeardupError)
                            else f"{type(error).__name__}: {error}")
        finally:
            self._building = None
