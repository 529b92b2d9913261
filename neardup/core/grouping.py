"""Every group of near-duplicates in a store: the "clean up my folder" use.

A person deletes what we call a duplicate, so a group must never hold two images that are not
themselves a match. Linking images transitively (a~b, b~c, so a, b, c) does exactly that: on
CALTECH-101 one such chain held 12 different motorbikes. Here a group is a set in which EVERY
pair matches (a clique of the match graph), built from the closest links first:

- every image starts alone; the links are taken nearest first (fewest bits; with features, pairs
  aligned pixel for pixel by fewest bits, then the others by most inliers: features/grouping.py);
- a link joins its two images' groups only if every member of one matches every member of the
  other, so each image ends beside its closest match that the others accept: a copy with its
  original before either can join a look-alike (grown from its best-connected image instead, a
  look-alike's group took a portrait's mirrored and rotated copies while the original, which the
  look-alike does not match, was left in a group of its own).

An image is in at most one group, and every distance inside a group is within the threshold
(hash-only stores) or every pair is a verified match (stores with features, through
`clique_groups` with the verified links). Each group shows every member's distance to its first
image and the largest distance between any two members.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from .hashing import Hash, is_low_information_count
from .search import HashIndex
from .store import Store

Node = TypeVar("Node", bound=Hashable)  # also orderable: ties are broken by the node itself


@dataclass(frozen=True, slots=True)
class Group:
    paths: tuple[str, ...]  # the first image, then the others nearest first
    hashes: int  # how many distinct hashes it spans (1: exact duplicates only)
    distances: tuple[int | None, ...]  # each path's hash distance to the first image
    max_distance: int | None  # the largest hash distance between any two members
    # Stores with local features: each path's inliers with the first image (None for the first),
    # and the fewest of any verified pair in the group (its weakest link).
    inliers: tuple[int | None, ...] | None = None
    fewest_inliers: int | None = None
    # And the inliers of every pair: (path, path) in sorted order -> inliers.
    pair_inliers: dict[tuple[str, str], int] | None = None


def groups_distance_problem(max_distance: int, bits: int) -> str | None:
    """Why groups at `max_distance` are not made, or None. Past a quarter of the bits nearly
    every pair of photos is within reach: a review's --groups -m 32 on 9,226 images was still
    running after 240 s at 6.8 GB (-m 24: 32 s, 1 GB), and -m 64 was accepted."""
    if max_distance <= bits // 4:
        return None
    return (f"--groups at {max_distance} bits of {bits}: past a quarter of the bits ({bits // 4})"
            " nearly every pair of photos is within reach, and the groups take minutes and"
            " gigabytes; use a smaller --max-distance")


def clique_groups(
    links: Mapping[Node, Mapping[Node, int]],
    weight: Callable[[Node], int] = lambda node: 1,
) -> list[list[Node]]:
    """Sets of nodes in which every pair is linked, each node in exactly one set.

    `links[a][b]` is the distance of a linked pair (symmetric: b in links[a] iff a in links[b]).
    Every node of `links` ends in one set, a node without links alone in its own; the caller
    decides which sets are groups (a node may stand for several images). Links are taken nearest
    first, and join two sets only where every pair across them is linked (complete linkage); of
    equal links, those between heavier nodes first (`weight`: how many images a node stands for,
    a hash its bucket), so more images are grouped. Each set lists first the member nearest to
    all the others (its seed), then the others by their distance to it.
    """
    nearest_first = sorted(
        (distance, -weight(one) - weight(other), one, other)
        for one, near in links.items() for other, distance in near.items() if one < other)
    set_of: dict[Node, list[Node]] = {node: [node] for node in links}
    for _distance, _weight, one, other in nearest_first:
        ours, theirs = set_of[one], set_of[other]
        if ours is theirs:
            continue
        if len(ours) < len(theirs):
            ours, theirs = theirs, ours
        # The pair itself is linked: with sets of one each (most links) nothing more to check.
        if (len(ours) > 1 or len(theirs) > 1) and not all(
                member in links[newcomer] for newcomer in theirs for member in ours):
            continue
        ours.extend(theirs)
        for newcomer in theirs:
            set_of[newcomer] = ours
    sets = {id(members): members for members in set_of.values()}.values()
    return [_seed_first(members, links, weight) for members in sets]


def _seed_first(members: list[Node], links: Mapping[Node, Mapping[Node, int]],
                weight: Callable[[Node], int]) -> list[Node]:
    if len(members) == 1:
        return members
    seed = min(members, key=lambda node: (
        sum(links[node][other] for other in members if other != node), -weight(node), node))
    others = sorted((other for other in members if other != seed),
                    key=lambda other: (links[seed][other], -weight(other), other))
    return [seed, *others]


def near_duplicate_groups(
    store: Store, max_distance: int, *, include_low_information: bool = False
) -> list[Group]:
    """Groups of two or more images whose hashes are all pairwise within max_distance.

    Images sharing one hash are always together (distance 0). Largest groups first.
    """
    index = HashIndex.from_store(store)
    bits = store.recipe.bits
    keys = index.hex_keys()
    usable = {key for key, ones in zip(keys, index.set_bits(), strict=True)
              if include_low_information or not is_low_information_count(ones, bits)}
    stored = store.all_buckets()  # one pass over the table, not a query per hash
    buckets = {key: stored.get(key, []) for key in usable}

    links: dict[str, dict[str, int]] = {key: {} for key in sorted(usable)}
    pairs = index.pairs_within(max_distance) if max_distance > 0 else None
    if pairs is not None:  # every pair at once (a 64-bit multi-index)
        for first, second, distance in zip(*(found.tolist() for found in pairs), strict=True):
            one, other = keys[first], keys[second]
            if one in usable and other in usable:
                links[one][other] = links[other][one] = distance
    elif max_distance > 0:
        for key in links:
            for neighbour, distance in index.within(Hash.from_hex(key, bits), max_distance):
                if neighbour in usable and neighbour != key:
                    links[key][neighbour] = distance

    # A set of one hash with one image is no group: most of a million, not worth describing.
    groups = [_hash_group(members, buckets, bits)
              for members in clique_groups(links, lambda key: len(buckets[key]))
              if len(members) > 1 or len(buckets[members[0]]) > 1]
    groups = [group for group in groups if len(group.paths) >= 2]
    groups.sort(key=lambda group: (-len(group.paths), group.paths))
    return groups


def _hash_group(keys: list[str], buckets: dict[str, list[str]], bits: int) -> Group:
    seed = Hash.from_hex(keys[0], bits)
    values = [Hash.from_hex(key, bits) for key in keys]
    paths: list[str] = []
    distances: list[int | None] = []
    for key, value in zip(keys, values, strict=True):
        for path in sorted(buckets[key]):
            paths.append(path)
            distances.append(seed.distance(value))
    widest = max((a.distance(b) for a in values for b in values), default=0)
    return Group(tuple(paths), len(keys), tuple(distances), widest)
