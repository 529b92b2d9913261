"""--groups on a store with local features: images linked only by verified matches.

Every stored image is searched as a query (its file re-read: verification needs the picture), and
each verified match links the two images. Groups are then formed as on a hash-only store
(neardup.core.grouping.clique_groups): every pair in a group is a verified match, never a chain.
Distances shown are those of the stored hashes, whatever found the match.
"""

from __future__ import annotations

from collections.abc import Callable

from tqdm import tqdm

from ..core.grouping import Group, clique_groups
from ..core.hashing import DEFAULT_MAX_PIXELS, Hash
from ..core.search import Match, resolve_stored_path
from ..core.store import Store
from ..errors import ImageError, command
from .extract import read_frame
from .search import VerifiedSearch, same_frame
from .verify import Verdict

# clique_groups adds the closest links first. Closest are the pairs aligned pixel for pixel
# (search.same_frame: byte copies, re-encoded, captioned or mirrored copies), fewest bits
# between the stored hashes first, then the most inliers; then every other verified pair, by
# inliers alone. By inliers alone throughout, a review's byte-identical files (70 inliers of a
# record's 72) went to two groups, one of them with a mirrored copy (72); by bits throughout,
# another review's originals joined a look-alike shot the same way (8 bits, 11 inliers) before
# their own crops, mirror images and rotated copies (far in bits, 33 to 67 inliers): 9 of 300.
# One number per pair (clique_groups sums them to choose a group's first image).
INLIER_RANKS = 1000
NOT_SAME_FRAME = 1000 * INLIER_RANKS  # past any number of bits


def _closeness(verdict: Verdict, match: Match, query: Hash, bits: int) -> int:
    """How close a verified pair is (smaller: closer), as the comment above says."""
    fewer = INLIER_RANKS - 1 - min(match.inliers or 0, INLIER_RANKS - 1)
    if not same_frame(verdict):
        return NOT_SAME_FRAME + fewer
    apart = query.distance(Hash.from_hex(match.hash_hex, bits)) if match.hash_hex else bits
    return apart * INLIER_RANKS + fewer


def verified_groups(
    store: Store,
    search: VerifiedSearch,
    max_distance: int,
    *,
    include_low_information: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    warn: Callable[[str], None] = lambda line: None,
    progress: bool = False,
) -> list[Group]:
    """Groups of two or more images in which every pair is a verified match, largest first.
    `progress`: a bar on standard error while the images are searched, if it is a terminal."""
    bits = store.recipe.bits
    hashes: dict[str, Hash] = {}
    links: dict[str, dict[str, int]] = {}  # how close each verified pair is (see below)
    inliers: dict[tuple[str, str], int] = {}  # each verified pair's inliers, either way round

    rows = list(store.feature_rows())
    for _image_id, relpath, _data in tqdm(rows, unit="img", desc="verifying",
                                          disable=None if progress else True,
                                          dynamic_ncols=True):
        hash_hex = store.hash_of_path(relpath)
        full = resolve_stored_path(store.dataset_root, relpath)
        if hash_hex is None or full is None:
            continue
        hashes[relpath] = Hash.from_hex(hash_hex, bits)
        links.setdefault(relpath, {})
        try:
            frame = read_frame(full, max_pixels)
        except ImageError as error:  # deleted or changed since indexing: it cannot be verified
            # Others' searches still find it by its stored record, as a hash-only store's groups
            # list what the store holds; index.py brings the store up to date.
            with tqdm.external_write_mode():  # the line above the bar, not on it
                warn(f"{full}: {error.reason}; its own matches were not searched (run"
                     f" {command('index.py')} to update the store)")
            continue
        # Neither sharpened nor softened: a person deletes from these groups, and the sharpened
        # look verified two different catalogue motorbikes and two drawings of a stop sign, the
        # softened one a third drawing (docs/features.md); a blurred copy is still linked when
        # its original, as the query, verifies it. Nor asked
        # again without its bars for finding only itself (what search.py -q does for it): each
        # image is a query here, so a padded copy is linked when its original verifies it, and
        # a third of CALTECH-101's photos have such bars (a second search for each).
        for match, verdict in search.search_with_verdicts(
                [hashes[relpath]], frame, max_distance,
                include_low_information=include_low_information, sharpen=False, unpad=False):
            if match.path != relpath and verdict.verified and match.inliers is not None:
                closeness = max(_closeness(verdict, match, hashes[relpath], bits),
                                links[relpath].get(match.path, -1))
                links[relpath][match.path] = closeness
                links.setdefault(match.path, {})[relpath] = closeness
                inliers[relpath, match.path] = inliers[match.path, relpath] = min(
                    match.inliers, inliers.get((relpath, match.path), match.inliers))
    # A pair verified in one direction only is still linked, from both sides.
    groups = []
    for members in clique_groups(links):
        if len(members) < 2:
            continue
        seed = hashes.get(members[0])
        values = [hashes.get(path) for path in members]
        distances = tuple(None if seed is None or value is None else seed.distance(value)
                          for value in values)
        known = [value for value in values if value is not None]
        widest = max((a.distance(b) for a in known for b in known), default=None)
        pairs = {(a, b): inliers[a, b] for a in members for b in members if a < b}
        groups.append(Group(tuple(members), len({value for value in known}), distances, widest,
                            (None, *(inliers[members[0], path] for path in members[1:])),
                            min(pairs.values()), pairs))
    groups.sort(key=lambda group: (-len(group.paths), group.paths))
    return groups
