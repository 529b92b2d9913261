"""Every group of near-duplicates in a store: the "clean up my folder" use.

Two images are linked when their hashes are within max_distance; a group is a connected set of
linked images (so a chain a~b~c is one group even if a and c are further apart). Each distinct
hash is searched once with the store's index, and a union-find joins the hits. Low-information
hashes (blank images) are left out unless asked, as in search.
"""

from __future__ import annotations

from dataclasses import dataclass

from .hashing import Hash, is_low_information
from .search import HashIndex
from .store import Store


@dataclass(frozen=True, slots=True)
class Group:
    paths: tuple[str, ...]  # sorted
    hashes: int  # how many distinct hashes it spans (1: exact duplicates only)


def near_duplicate_groups(
    store: Store, max_distance: int, *, include_low_information: bool = False
) -> list[Group]:
    """Groups of two or more images, largest first."""
    index = HashIndex.from_store(store)
    bits = store.recipe.bits
    width = (bits + 3) // 4
    keys = [index.hex_at(position, width) for position in range(len(index))]
    position_of = {key: position for position, key in enumerate(keys)}
    parent = list(range(len(keys)))

    def root(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]  # path halving keeps the trees flat
            item = parent[item]
        return item

    usable = [include_low_information or not is_low_information(Hash.from_hex(key, bits))
              for key in keys]
    if max_distance > 0:
        for position, key in enumerate(keys):
            if not usable[position]:
                continue
            for neighbour, _distance in index.within(Hash.from_hex(key, bits), max_distance):
                other = position_of[neighbour]
                if usable[other]:
                    parent[root(other)] = root(position)

    members: dict[int, list[int]] = {}
    for position in range(len(keys)):
        if usable[position]:
            members.setdefault(root(position), []).append(position)
    groups = []
    for positions in members.values():
        paths = sorted(path for position in positions for path in store.bucket(keys[position]))
        if len(paths) >= 2:
            groups.append(Group(tuple(paths), len(positions)))
    groups.sort(key=lambda group: (-len(group.paths), group.paths))
    return groups
