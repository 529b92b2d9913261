"""Review pages: one self-contained HTML file to scroll through, for groups and for evaluations.

A person deciding what to delete, or checking what an evaluation missed, wants to see the images
with their paths and distances, not read a list. Each page carries its thumbnails as data URIs
(small JPEGs) and its own style and script, so it opens from anywhere, offline, and can be mailed
or archived as one file. Paths are shown relative to the store's dataset folder, named at the top.

The groups page is also a review form: a checkbox per image; its button pre-selects what can go
without losing a picture (keeping.py: identical files, and smaller copies of the one kept where
matches are verified), leaving the rest to the person; the marked paths are gathered in a text
box to copy. The page itself deletes nothing.

Every text comes from file names a stranger may have chosen, so all of it is escaped.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from PIL import Image

from ..core.hashing import DEFAULT_MAX_PIXELS
from ..core.names import can_be_listed, shown_path
from ..core.results import counted
from ..core.search import resolve_stored_path
from ..errors import ImageError, command
from .keeping import WEAK_INLIERS, Facts, choose_in_group, facts_of
from .montage import thumbnail
from .output import write_whole
from .scoring import (
    MAX_THRESHOLD,
    TARGET_PRECISION,
    Evaluation,
    hash_miss,
    manifest_changed,
    missing_copies,
    missing_haystack,
    verified_scores,
    verified_table,
)

THUMBNAIL_SIDE = 150
JPEG_QUALITY = 80
# Thumbnails cost about 5 KB each; past this many groups the page lists paths without pictures
# (and says so), so that a 17,000-miss evaluation stays a page a browser opens.
MAX_GROUPS_WITH_THUMBNAILS = 400


@dataclass(frozen=True, slots=True)
class Item:
    """One image on a page: its path relative to the dataset, the file, a caption."""

    relpath: str
    path: str | None  # None: the stored path would leave the dataset; shown, never opened
    caption: str
    css: str = ""  # "query", "missed", "other"
    changed: bool = False  # the file is not what was indexed (size, mtime or inode differ)


def groups_page(
    groups: Sequence[Sequence[Item]], *, store: str, dataset: str, recipe: str, max_distance: int,
    max_pixels: int = DEFAULT_MAX_PIXELS, verified: bool = False,
    fewest_inliers: Sequence[int | None] | None = None,
    pair_inliers: Sequence[dict[tuple[str, str], int] | None] | None = None,
) -> str:
    """The near-duplicate groups as a review form. `verified`: a store with local features,
    whose groups link verified matches (their hashes may be far apart); `fewest_inliers` and
    `pair_inliers`: for each group, the inliers of its weakest verified pair and of each pair
    (by relpaths in sorted order)."""
    title = f"Near-duplicate groups in {os.path.basename(store)}"
    rule = ("every pair of images is a verified match (local features; hash distances, where"
            f" shown, by {recipe})" if verified
            else f"every pair of images is within {counted(max_distance, 'bit')} (hash {recipe})")
    summary = (f"{counted(len(groups), 'group')}, {sum(len(g) for g in groups)} images; in each"
               " group"
               f" {rule}. Distances{' and inliers' if verified else ''} are to the first image"
               " of each group. Paths are relative to the dataset folder:")
    sections = []
    for number, items in enumerate(groups, start=1):
        sections.append(_section(f"group-{number}", f"Group {number}: {len(items)} images",
                                 items, with_pictures=number <= MAX_GROUPS_WITH_THUMBNAILS,
                                 max_pixels=max_pixels, reviewable=True,
                                 weakest=fewest_inliers[number - 1] if fewest_inliers else None,
                                 pairs=pair_inliers[number - 1] if pair_inliers else None))
    body = [_header(title, summary, dataset), _cut_notice(len(groups)), _REVIEW_TOOLS,
            *sections]
    return _page(title, body, script=_REVIEW_SCRIPT)


def evaluation_page(
    evaluation: Evaluation, max_distance: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> str:
    """The evaluation's table, then every query with what it missed and what else it found. On a
    store with local features the queries listed are what search.py answers (verified matches),
    the hash's table kept below the verified one for comparison."""
    title = f"Evaluation of {os.path.basename(evaluation.store)}"
    root = evaluation.dataset_root
    # "1 query, 1 copy"; but "1 of 1 copies found", "0 of 1 queries" (of all the copies).
    queries = counted(len(evaluation.groups), "query", "queries")
    copies = counted(evaluation.copies, "copy", "copies")
    if evaluation.verified_at is None:
        at = evaluation.row(max_distance)
        summary = (f"{evaluation.recipe}{', mirror' if evaluation.mirror else ''}:"
                   f" {queries}, {copies}. At max distance {max_distance}: {at.found} of"
                   f" {evaluation.copies} copies found,"
                   f" {counted(at.false_matches, 'other match', 'other matches')}.")
        tables = [_threshold_table(evaluation, max_distance)]
        shown = _hash_answers(evaluation, max_distance)
        answered = f"at max distance {max_distance}"
    else:
        answers = verified_scores(evaluation)[-1][1]
        summary = (f"{evaluation.recipe} and local features: {queries}, {copies}. Verified"
                   f" search (what {command('search.py')} answers, at max distance"
                   f" {evaluation.verified_at}):"
                   f" {answers.found} of {evaluation.copies} copies found,"
                   f" {counted(answers.false_matches, 'other match', 'other matches')}.")
        tables = [_verified_table(evaluation),
                  "<h2>The hash alone, unverified (what a store without features answers)</h2>",
                  _threshold_table(evaluation, max_distance)]
        shown = _verified_answers(evaluation)
        answered = "in the verified search"
    if missing := missing_copies(evaluation):
        summary += f" {missing}."
    if lacking := missing_haystack(evaluation):
        summary += f" {lacking[0].upper()}{lacking[1:]}."
    if changed := manifest_changed(evaluation):
        summary += f" {changed[0].upper()}{changed[1:]}."
    summary += " Paths are relative to the dataset folder:"
    sections = [_section(f"query-{name}", f"{name}: {_count(items, 'missed', 'missed copy')},"
                         f" {_count(items, 'other', 'other match', 'other matches')}", items,
                         with_pictures=number <= MAX_GROUPS_WITH_THUMBNAILS,
                         max_pixels=max_pixels, reviewable=False)
                for number, (name, items) in enumerate(shown, start=1)]
    found_all = len(evaluation.groups) - len(shown)
    listing = (f"<h2>Queries with a missed copy or another match: {len(shown)}</h2>"
               f"<p>{found_all} of {len(evaluation.groups)} queries found every copy and nothing"
               f" else {answered}.</p>")
    body = [_header(title, summary, root), *tables, listing, _cut_notice(len(shown)), *sections]
    return _page(title, body)


def _threshold_table(evaluation: Evaluation, max_distance: int) -> str:
    """Recall per edit kind, other matches and precision of the hash at every threshold."""
    kinds = evaluation.kinds
    head = "".join(f"<th>{escape(kind)}</th>" for kind in [*kinds, "all"])
    rows = []
    for row in evaluation.rows:
        marks = []
        if row.threshold == evaluation.recommended:
            marks.append(f"recommended (precision &ge; {TARGET_PRECISION})")
        if row.threshold == max_distance:
            marks.append("max distance")
        cells = "".join(f"<td>{row.recall.get(kind, 0):.1%}</td>" for kind in [*kinds, "all"])
        css = ' class="chosen"' if marks else ""
        rows.append(f"<tr{css}><td>{row.threshold}</td>{cells}<td>{row.false_matches}</td>"
                    f"<td>{row.precision:.4f}</td><td>{', '.join(marks)}</td></tr>")
    return (f'<table class="scores"><tr><th>t</th>{head}<th>false</th><th>precision</th><th></th>'
            f"</tr>{''.join(rows)}</table>")


def _verified_table(evaluation: Evaluation) -> str:
    """Recall per edit kind and other matches, by where the verified candidates came from."""
    columns = verified_table(evaluation)
    head = "".join(f"<th>{escape(title)}</th>" for title, _, _ in columns)
    rows = [f"<tr><td>{escape(kind)}</td>"
            + "".join(f"<td>{recall.get(kind, 0.0):.1%}</td>" for _, recall, _ in columns)
            + "</tr>" for kind in [*evaluation.kinds, "all"]]
    rows.append("<tr><td>other matches</td>"
                + "".join(f"<td>{others}</td>" for _, _, others in columns) + "</tr>")
    return (f'<table class="scores"><tr><th>edit</th>{head}</tr>{"".join(rows)}</table>')


def _hash_answers(evaluation: Evaluation, max_distance: int) -> list[tuple[str, list[Item]]]:
    """Per query: the copies the hash missed and the other images within max_distance."""
    root = evaluation.dataset_root
    shown = []
    for group in evaluation.groups:
        items = [Item(group.original, resolve_stored_path(root, group.original),
                      f"query {group.group}", "query")]
        for copy in group.copies:
            if copy.distance is None or copy.distance > max_distance:
                items.append(Item(copy.path, resolve_stored_path(root, copy.path),
                                  f"missed: {copy.edit} ({hash_miss(copy)})", "missed"))
        for path, distance in sorted(group.others.items(), key=lambda item: (item[1], item[0])):
            if distance <= max_distance:
                items.append(Item(path, resolve_stored_path(root, path),
                                  f"other match, distance {distance}", "other"))
        if len(items) > 1:
            shown.append((group.group, items))
    return shown


def _verified_answers(evaluation: Evaluation) -> list[tuple[str, list[Item]]]:
    """Per query: the copies the verified search did not answer and the other images it did."""
    root = evaluation.dataset_root
    shown = []
    for group in evaluation.groups:
        items = [Item(group.original, resolve_stored_path(root, group.original),
                      f"query {group.group}", "query")]
        copies = {copy.path for copy in group.copies}
        for copy in group.copies:
            if copy.path not in group.verified:
                distance = (copy.missing or f"hash not within {MAX_THRESHOLD} bits"
                            if copy.distance is None else f"hash distance {copy.distance}")
                items.append(Item(copy.path, resolve_stored_path(root, copy.path),
                                  f"missed: {copy.edit} (not verified; {distance})", "missed"))
        for path, how in sorted(group.verified.items()):
            if path not in copies:
                distance = group.others.get(path)
                shown_distance = "" if distance is None else f", hash distance {distance}"
                items.append(Item(path, resolve_stored_path(root, path),
                                  f"other match, verified (found by {how}{shown_distance})",
                                  "other"))
        if len(items) > 1:
            shown.append((group.group, items))
    return shown


def write_page(path: str, page: str) -> None:
    # Names are shown escaped (shown_path); anything else not UTF-8 is written escaped, no crash.
    write_whole(path, page.encode("utf-8", errors="backslashreplace"))


def _data_uri(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _section(anchor: str, heading: str, items: Iterable[Item], *, with_pictures: bool,
             max_pixels: int, reviewable: bool, weakest: int | None = None,
             pairs: dict[tuple[str, str], int] | None = None) -> str:
    """One group or one query with its images. `reviewable` (a group): tick boxes, and what
    "mark all but the one kept" marks (keeping.py); `pairs`: a group of verified matches, the
    inliers of each pair (by relpaths in sorted order), `weakest` the fewest."""
    items = list(items)
    pictures: list[str] = []  # past MAX_GROUPS_WITH_THUMBNAILS: the path and caption alone
    facts: list[Facts | None] = []  # what the keep rule weighs; None: cannot be kept
    for item in items:
        seen: list[Facts | None] = [None]

        def inspect(opened: Image.Image, size: tuple[int, int], shown: Image.Image,
                    path: str = item.path or "", seen: list[Facts | None] = seen) -> None:
            seen[0] = facts_of(path, opened, size)

        if item.path is None:
            pictures.append('<div class="missing">outside the dataset: not opened</div>')
        else:
            try:  # past the thumbnails shown, a tiny decode still weighs it for keeping
                picture = thumbnail(item.path, THUMBNAIL_SIDE if with_pictures else 16,
                                    max_pixels, inspect if reviewable else None)
                pictures.append(f'<img alt="" src="{_data_uri(picture)}">' if with_pictures
                                else "")
            except ImageError as error:
                pictures.append(f'<div class="missing">{escape(error.reason)}</div>'
                                if with_pictures else "")
        # A file changed since it was indexed is not what the group is about: never kept.
        facts.append(None if item.changed else seen[0])
    verified = pairs is not None
    weak = verified and weakest is not None and weakest < WEAK_INLIERS
    choice = (choose_in_group([item.path for item in items], [item.relpath for item in items],
                              facts, pairs=pairs, max_pixels=max_pixels)
              if reviewable else None)
    figures = []
    for position, item in enumerate(items):
        size = ""
        if item.path is not None:
            try:
                size = f"{os.path.getsize(item.path) / 1024:,.0f} KB"
            except OSError:
                size = "file not found"
        fact = facts[position]
        if fact is not None:
            size = f"{fact.width} x {fact.height}, {size}"
        if choice is not None and position in choice.why:
            size += f" ({choice.why[position]})"
        tick = ""
        if reviewable and item.changed:
            tick = ('<span class="by-hand">changed since it was indexed: not listed for'
                    f" deletion; run {escape(command('index.py'))} and look again</span>")
        elif reviewable and can_be_listed(item.relpath):
            # Nothing is marked until the person says so; the button marks those "0".
            role = ("1" if choice and position in choice.keep
                    else "0" if choice and position in choice.marked else "-")
            tick = (f'<label><input type="checkbox" class="mark" data-path="{escape(item.relpath)}"'
                    f' data-keep="{role}"> delete</label>')
        elif reviewable:
            tick = ('<span class="by-hand">not in the list of paths: its name holds a line'
                    " break, a control character or bytes that are not UTF-8</span>")
        css = " ".join(filter(None, [item.css, "kept" if choice and position == choice.kept
                                     and choice.marked else ""]))
        figures.append(f'<figure class="{css}">{pictures[position]}<figcaption>'
                       f'<span class="path">{escape(shown_path(item.relpath))}</span>'
                       f'<span class="caption">{escape(item.caption)}</span>'
                       f'<span class="size">{escape(size)}</span>{tick}'
                       "</figcaption></figure>")
    if choice is not None and not choice.keep:
        heading += (": no image here is still what was indexed and readable, so none is kept"
                    " and none marked by the button")
    elif choice is not None and not choice.marked and choice.kept >= 0:
        # Only when every path is one file (links to it) is one kept with nothing marked: it
        # said "no identical files" of 15 hard links to one file (a review).
        heading += (": every path here is one file (hard or symbolic links to it), so the button"
                    " marks none: deleting one would free nothing")
    elif choice is not None and not choice.marked:
        heading += ": the button marks nothing here (" + (
            "which image is the original cannot be told from the files" if verified else
            "no identical files; the hash alone cannot tell a copy from another photograph"
            " taken alike") + "): look, and mark by hand"
    if weak:
        heading += (f"; weakly verified (a pair with only {weakest} inliers, which different"
                    " photographs taken alike reach): look before deleting")
    return (f'<section id="{escape(anchor)}"><h3>{escape(shown_path(heading))}</h3>'
            f'<div class="row">{"".join(figures)}</div></section>')


def _count(items: list[Item], css: str, one: str, many: str = "") -> str:
    number = sum(1 for item in items if item.css == css)
    return f"{number} {one if number == 1 else many or one.replace('copy', 'copies')}"


def _header(title: str, summary: str, dataset: str) -> str:
    # The title and the dataset folder name files: shown as the paths in the groups are (a
    # review: an escape sequence or a line break in the folder's name reached the page raw).
    return (f"<h1>{escape(shown_path(title))}</h1><p>{escape(summary)}</p>"
            f'<p class="dataset">{escape(shown_path(dataset))}</p>')


def _cut_notice(sections: int) -> str:
    if sections <= MAX_GROUPS_WITH_THUMBNAILS:
        return ""
    return (f'<p class="notice">Thumbnails are shown for the first {MAX_GROUPS_WITH_THUMBNAILS}'
            f" of {sections}; the others are listed by path.</p>")


def _page(title: str, body: list[str], script: str = "") -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(shown_path(title))}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(part for part in body if part)
            + (f"<script>{script}</script>" if script else "") + "</body></html>\n")


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
.dataset { font-family: monospace; color: #555; }
.notice { background: #fff3cd; padding: .5em; }
table.scores { border-collapse: collapse; margin: 1em 0; }
table.scores td, table.scores th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
table.scores tr.chosen { background: #e8f0fe; font-weight: bold; }
section { border-top: 1px solid #ddd; padding: .5em 0; }
.row { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 160px; }
figure img, figure .missing { display: block; max-width: 150px; max-height: 150px; }
figure .missing { width: 150px; height: 100px; background: #ddd; font-size: 12px; padding: 4px;
  box-sizing: border-box; }
figure.query img { outline: 3px solid #d62728; }
figure.kept img { outline: 3px solid #2ca02c; }
figure.missed figcaption .caption { color: #b00; }
figcaption { font-size: 12px; overflow-wrap: anywhere; }
figcaption span { display: block; }
.path { font-family: monospace; }
.size { color: #777; }
.by-hand { color: #b00; }
#review { position: sticky; top: 0; background: #f7f7f7; padding: .5em; border: 1px solid #ccc; }
#review textarea { width: 100%; height: 6em; font-family: monospace; }
"""

_REVIEW_TOOLS = """
<div id="review"><button type="button" id="all-but-first">mark what can go without losing a
picture: files identical to one kept and, where matches are verified, smaller copies of the same
shape (the rest is left to you)</button>
<button type="button" id="clear">clear</button> <span id="count">0 marked</span>
<textarea id="marked" readonly placeholder="the paths you mark appear here, one per line, to copy">
</textarea></div>
"""

_REVIEW_SCRIPT = """
const boxes = Array.from(document.querySelectorAll('input.mark'));
function update() {
  const marked = boxes.filter(b => b.checked).map(b => b.dataset.path);
  document.getElementById('marked').value = marked.join('\\n');
  document.getElementById('count').textContent = marked.length + ' marked';
}
boxes.forEach(b => b.addEventListener('change', update));
document.getElementById('all-but-first').onclick = () => {
  boxes.forEach(b => { b.checked = b.dataset.keep === '0'; }); update(); };
document.getElementById('clear').onclick = () => { boxes.forEach(b => { b.checked = false; }); update(); };
"""
