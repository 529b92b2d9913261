"""Writing an evaluation where people and programs can use it: JSON, CSV and a PNG chart.

The chart is drawn with Pillow alone (no plotting library): recall per edit kind and overall, and
precision, against the Hamming threshold, with the recommended threshold marked.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os

from PIL import Image, ImageDraw, ImageFont

from ..core.results import json_text
from .output import write_whole
from .scoring import MAX_THRESHOLD, TARGET_PRECISION, Evaluation, verified_scores

WIDTH, HEIGHT = 1000, 600
LEFT, RIGHT, TOP, BOTTOM = 70, 230, 50, 60
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232),
           (255, 187, 120), (152, 223, 138), (197, 176, 213)]


def report_stem(store: str) -> str:
    """What the names of a store's --report files begin with: "evaluation-", the store's file name
    with dashes for dots, and 8 hex digits of the store's resolved path. The file name alone
    named a/db.shelve and b/db.shelve alike, and the second one's report replaced the first's in
    a shared folder; the digest tells them apart, and is the same however the path is written
    (db.shelve, ./db.shelve, an absolute path), so a store's new report replaces its old one."""
    digest = hashlib.sha256(os.fsencode(os.path.realpath(store))).hexdigest()[:8]
    return f"evaluation-{os.path.basename(store).replace('.', '-')}-{digest}"


def write_report(evaluation: Evaluation, folder: str, stem: str) -> list[str]:
    """Write <stem>.json, <stem>.csv and <stem>.png into folder; return their paths."""
    os.makedirs(folder, exist_ok=True)
    json_path = os.path.join(folder, f"{stem}.json")
    write_whole(json_path, (json_text(evaluation.as_dict(), indent=2) + "\n").encode("utf-8"))
    csv_path = os.path.join(folder, f"{stem}.csv")
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    # One row per edit kind: "found" and "copies" are the kind's; other matches are of no edit
    # kind, so false_matches and precision are the whole search's, the same on each kind's row.
    writer.writerow(["recipe", "search", "threshold", "edit", "recall", "found", "copies",
                     "false_matches", "precision"])
    scores = [("hash", row) for row in evaluation.rows]
    if evaluation.verified_at is not None:
        scores += verified_scores(evaluation)
    copies = evaluation.copies_by_kind
    for search, row in scores:
        for kind, recall in row.recall.items():
            writer.writerow([evaluation.recipe, search, row.threshold, kind, f"{recall:.6f}",
                             row.found_by_kind[kind], copies[kind], row.false_matches,
                             f"{row.precision:.6f}"])
    write_whole(csv_path, table.getvalue().encode("utf-8"))
    png_path = os.path.join(folder, f"{stem}.png")
    encoded = io.BytesIO()
    chart(evaluation).save(encoded, "PNG")
    write_whole(png_path, encoded.getvalue())
    return [json_path, csv_path, png_path]


def chart(evaluation: Evaluation) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    small = ImageFont.load_default(size=12)
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(threshold: float) -> float:
        return LEFT + plot_width * threshold / MAX_THRESHOLD

    def y(value: float) -> float:
        return TOP + plot_height * (1 - value)

    draw.text((LEFT, 15), f"{evaluation.recipe}{', mirror' if evaluation.mirror else ''}:"
              f" recall and precision against the Hamming threshold", fill="black", font=font)
    for step in range(0, 11):
        value = step / 10
        draw.line([(LEFT, y(value)), (LEFT + plot_width, y(value))], fill=(230, 230, 230))
        draw.text((LEFT - 40, y(value) - 7), f"{value:.1f}", fill="black", font=small)
    for threshold in range(0, MAX_THRESHOLD + 1, 2):
        draw.line([(x(threshold), TOP), (x(threshold), TOP + plot_height)], fill=(230, 230, 230))
        draw.text((x(threshold) - 5, TOP + plot_height + 8), str(threshold), fill="black", font=small)
    draw.text((LEFT + plot_width // 2 - 80, HEIGHT - 30), "Hamming threshold (bits)", fill="black",
              font=font)
    draw.rectangle([LEFT, TOP, LEFT + plot_width, TOP + plot_height], outline="black")

    if evaluation.recommended is not None:
        at = x(evaluation.recommended)
        for start in range(TOP, TOP + plot_height, 12):
            draw.line([(at, start), (at, min(start + 6, TOP + plot_height))], fill=(90, 90, 90))

    series = [(kind, PALETTE[i % len(PALETTE)], 2) for i, kind in enumerate(evaluation.kinds)]
    series += [("all", (0, 0, 0), 4), ("precision", (214, 39, 40), 4)]
    legend_y = TOP
    for name, colour, width in series:
        if name == "precision":
            values = [row.precision for row in evaluation.rows]
        else:
            values = [row.recall.get(name, 0.0) for row in evaluation.rows]
        points = [(x(row.threshold), y(value)) for row, value in zip(evaluation.rows, values,
                                                                       strict=True)]
        draw.line(points, fill=colour, width=width)
        draw.line([(WIDTH - RIGHT + 20, legend_y + 8), (WIDTH - RIGHT + 50, legend_y + 8)],
                  fill=colour, width=width)
        label = "recall, all" if name == "all" else name
        draw.text((WIDTH - RIGHT + 58, legend_y), label, fill="black", font=small)
        legend_y += 20
    if evaluation.recommended is not None:
        draw.text((WIDTH - RIGHT + 20, legend_y + 10),
                  f"- - recommended: {evaluation.recommended}\n    (precision >= {TARGET_PRECISION})",
                  fill=(90, 90, 90), font=small)
    return image
