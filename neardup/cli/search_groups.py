"""search.py --groups: sets of images in which every pair is a match, printed, drawn on a contact
sheet or written as an HTML page to review."""

from __future__ import annotations

import argparse
import os

from ..api import DuplicateGroup, ImageStore
from ..core.grouping import groups_distance_problem
from ..core.hashing import DEFAULT_MAX_PIXELS
from ..core.names import printable
from ..core.results import counted, display_path, json_text
from ..core.store import FileState, Store
from ..errors import NeardupError, command
from ..evaluation.html import Item, groups_page
from ..evaluation.keeping import Choice, Facts, choose_in_group
from ..evaluation.montage import Row, Tile
from .search_common import EXIT_MATCH, EXIT_NO_MATCH, draw_montage, save_page, say


def run_groups(args: argparse.Namespace) -> int:
    """--groups: sets of images in which every pair is a match (no chains)."""
    opened = Store.open_for_reading(args.shelve, report=say)
    if problem := groups_distance_problem(args.max_distance, opened.recipe.bits):
        opened.close()
        raise NeardupError(problem)
    with ImageStore(opened) as store:
        # On a store with local features every pair in a group is a verified match (api.py).
        groups = store.groups(args.max_distance,
                              include_low_information=args.include_low_information,
                              progress=True, warn=say)
        root, recipe = store.dataset, store.recipe.describe()
        verified = store.has_features
        # Files changed since they were indexed are shown, never offered for deletion, and said
        # in every output: people script the clean-up from the text and JSON too.
        states = opened.file_states()
        changed = changed_since_indexed(opened, states, groups, args.max_pixels)
    # Every file is gone with the dataset folder: said once already (check_store), not per file.
    for relpath in sorted(changed) if os.path.isdir(root) else ():
        say(f"{display_path(root, relpath) or relpath}: changed or gone since it was indexed;"
            f" run {command('index.py')} before deleting anything from its group")
    if args.json:
        print(json_text([{"images": [display_path(root, relpath) for relpath in group.relpaths],
                           "relpaths": list(group.relpaths),
                           # Each image's stored hash: a person can check the distances.
                           "hashes": [states[relpath].hash_hex if relpath in states else None
                                      for relpath in group.relpaths],
                           "distances": list(group.distances),
                           "max_distance": group.max_distance,
                           "distinct_hashes": group.distinct_hashes,
                           "changed": [relpath for relpath in group.relpaths
                                       if relpath in changed],
                           **({"verified": True, "inliers": list(group.inliers or ()),
                               "fewest_inliers": group.fewest_inliers} if verified else {})}
                          for group in groups], indent=2))
    else:
        for number, group in enumerate(groups, start=1):
            rule = (f"every pair a verified match (the weakest with {group.fewest_inliers}"
                    " inliers), hashes within" if verified else "every pair within")
            print(f"# group {number}: {len(group.relpaths)} images, {group.distinct_hashes}"
                  f" distinct hash{'es' if group.distinct_hashes > 1 else ''}, {rule}"
                  f" {counted(group.max_distance, 'bit')}")
            inliers = group.inliers or (None,) * len(group.relpaths)
            for relpath, distance, count in zip(group.relpaths, group.distances, inliers,
                                                strict=True):
                shown = "-" if distance is None else distance
                # On a store with features, as -q prints: distance, inliers (- for the first).
                middle = f"{'-' if count is None else count}\t" if verified else ""
                print(f"{shown}\t{middle}{printable(display_path(root, relpath) or relpath)}")
            print()
    if args.montage:
        rule = ("every pair a verified match" if verified
                else f"every pair within {counted(args.max_distance, 'bit')}")
        draw_montage(args.montage, f"near-duplicate groups, {rule}, largest first; under each"
                     " image, what the --html page's button keeps and marks",
                     [group_row(group, changed, args.max_pixels) for group in groups],
                     what="groups", nothing=f"no group of near-duplicates within"
                     f" {counted(args.max_distance, 'bit')}", rest_in=args.html or "--html PAGE",
                     max_pixels=args.max_pixels)
    if args.html:
        save_page(args.html, groups_page(
            [[Item(relpath, full, distance_caption(position, distance, count),
                   changed=relpath in changed)
              for position, (relpath, full, distance, count)
              in enumerate(zip(group.relpaths, group.paths, group.distances,
                               group.inliers or (None,) * len(group.relpaths), strict=True))]
             for group in groups],
            store=args.shelve, dataset=root, recipe=recipe, max_distance=args.max_distance,
            max_pixels=args.max_pixels, verified=verified,
            fewest_inliers=[group.fewest_inliers for group in groups] if verified else None,
            pair_inliers=[group.pair_inliers for group in groups] if verified else None))
    return EXIT_MATCH if groups else EXIT_NO_MATCH


def changed_since_indexed(store: Store, states: dict[str, FileState],
                          groups: list[DuplicateGroup],
                          max_pixels: int = DEFAULT_MAX_PIXELS) -> set[str]:
    """The grouped images whose file is no longer what was indexed (FileState.still_indexed: a
    replaced or rewritten file), or missing. `states`: store.file_states()."""
    changed = set()
    for group in groups:
        for relpath, path in zip(group.relpaths, group.paths, strict=True):
            state = states.get(relpath)
            try:
                now = os.stat(path)
            except OSError:
                changed.add(relpath)
                continue
            if state is None or not state.still_indexed(path, now, store.recipe, max_pixels):
                changed.add(relpath)
    return changed


def distance_caption(position: int, distance: int | None, inliers: int | None = None) -> str:
    if position == 0:
        return "first"
    caption = "matched" if distance is None else f"distance {distance}"
    return caption if inliers is None else f"{caption}, {inliers} inliers"


def group_row(group: DuplicateGroup, changed: set[str] | frozenset[str] = frozenset(),
              max_pixels: int = DEFAULT_MAX_PIXELS) -> Row:
    """A group's row of the contact sheet, saying what the groups page keeps and marks
    (`changed`: the relpaths changed since they were indexed, never kept)."""
    tiles = [Tile(full, distance_caption(position, distance, count), relpath)
             for position, (relpath, full, distance, count)
             in enumerate(zip(group.relpaths, group.paths, group.distances,
                              group.inliers or (None,) * len(group.relpaths), strict=True))]

    def keeping(facts: list[Facts | None]) -> Choice:
        return choose_in_group(group.paths, group.relpaths, facts, changed=[
            position for position, relpath in enumerate(group.relpaths) if relpath in changed],
            pairs=group.pair_inliers, max_pixels=max_pixels)

    return Row(tiles[0], tiles[1:], keeping)
