"""The edits gather.py applies to make near-duplicate copies, each with its parameters recorded.

Every edit takes an RGB or L picture and a seeded random generator, and returns the edited picture
and a description such as `crop left=3 top=1 right=5 bottom=2 (%)`, and the JPEG quality the copy
is saved with (90, except for the `jpeg` edit, which draws it from 30-95). Reproducible: the same
seed gives the same edits.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

DEFAULT_JPEG_QUALITY = 90

EditResult = tuple[Image.Image, str, int]  # picture, description, JPEG quality to save with


def resize(picture: Image.Image, rng: random.Random, scale: float = 0.05) -> EditResult:
    """Scaled by a random factor in [1 - scale, 1 + scale], aspect kept, never its own size."""
    factor = rng.uniform(1 - scale, 1 + scale)
    width, height = picture.size
    new_width, new_height = max(1, round(width * factor)), max(1, round(height * factor))
    if (new_width, new_height) == (width, height):
        # A factor this close to 1 would reproduce the reference's bug: a "copy" that is the file.
        new_width = max(1, width + (1 if factor >= 1 else -1))
        new_height = max(1, round(height * new_width / width))
    result = picture.resize((new_width, new_height), Image.Resampling.LANCZOS)
    return (result, f"resize factor={factor:.4f} from={width}x{height} to={new_width}x{new_height}",
            DEFAULT_JPEG_QUALITY)


def jpeg(picture: Image.Image, rng: random.Random) -> EditResult:
    """Re-compressed harder: the quality (30-95) is what the copy is saved with."""
    return picture.copy(), "jpeg", rng.randint(30, 95)


def crop(picture: Image.Image, rng: random.Random) -> EditResult:
    """1-10% off each edge, independently."""
    width, height = picture.size
    cuts = [rng.randint(1, 10) for _ in range(4)]
    left, top = width * cuts[0] // 100, height * cuts[1] // 100
    right, bottom = width - width * cuts[2] // 100, height - height * cuts[3] // 100
    return (picture.crop((left, top, right, bottom)),
            f"crop left={cuts[0]} top={cuts[1]} right={cuts[2]} bottom={cuts[3]} (%)",
            DEFAULT_JPEG_QUALITY)


def pad(picture: Image.Image, rng: random.Random) -> EditResult:
    """Borders or letterbox bars: 2-15% of the side, black or white."""
    width, height = picture.size
    letterbox = rng.random() < 0.5
    share = rng.randint(2, 15)
    colour = rng.choice([(0, 0, 0), (255, 255, 255)])
    if letterbox:
        bar = height * share // 100
        border = (0, bar, 0, bar)
    else:
        border = (width * share // 100, height * share // 100) * 2
    fill = colour if picture.mode == "RGB" else colour[0]
    style = "letterbox" if letterbox else "border"
    return (ImageOps.expand(picture, border=border, fill=fill),
            f"pad {style}={share}% colour={'black' if colour[0] == 0 else 'white'}",
            DEFAULT_JPEG_QUALITY)


def rotate(picture: Image.Image, rng: random.Random) -> EditResult:
    angle = rng.uniform(1, 5) * rng.choice([-1, 1])
    fill = (0, 0, 0) if picture.mode == "RGB" else 0
    return (picture.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=fill),
            f"rotate degrees={angle:.2f}", DEFAULT_JPEG_QUALITY)


def flip(picture: Image.Image, rng: random.Random) -> EditResult:
    return ImageOps.mirror(picture), "flip mirror", DEFAULT_JPEG_QUALITY


def brightness(picture: Image.Image, rng: random.Random) -> EditResult:
    factor = rng.choice([rng.uniform(0.6, 0.9), rng.uniform(1.1, 1.4)])
    return (ImageEnhance.Brightness(picture).enhance(factor), f"brightness factor={factor:.2f}",
            DEFAULT_JPEG_QUALITY)


def contrast(picture: Image.Image, rng: random.Random) -> EditResult:
    factor = rng.choice([rng.uniform(0.6, 0.9), rng.uniform(1.1, 1.4)])
    return (ImageEnhance.Contrast(picture).enhance(factor), f"contrast factor={factor:.2f}",
            DEFAULT_JPEG_QUALITY)


def gray(picture: Image.Image, rng: random.Random) -> EditResult:
    return picture.convert("L"), "gray", DEFAULT_JPEG_QUALITY


def blur(picture: Image.Image, rng: random.Random) -> EditResult:
    radius = rng.uniform(0.5, 2.0)
    return (picture.filter(ImageFilter.GaussianBlur(radius)), f"blur radius={radius:.2f}",
            DEFAULT_JPEG_QUALITY)


def noise(picture: Image.Image, rng: random.Random) -> EditResult:
    sigma = rng.uniform(3, 12)
    generator = np.random.default_rng(rng.getrandbits(32))
    pixels = np.asarray(picture, dtype=np.float64)
    noisy = np.clip(pixels + generator.normal(0, sigma, pixels.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy), f"noise sigma={sigma:.1f}", DEFAULT_JPEG_QUALITY


def text(picture: Image.Image, rng: random.Random) -> EditResult:
    """A caption or watermark: a word in the corner or across the middle, 5-12% of the height."""
    result = picture.copy()
    draw = ImageDraw.Draw(result)
    size = max(8, picture.height * rng.randint(5, 12) // 100)
    font = ImageFont.load_default(size=size)
    word = rng.choice(["SAMPLE", "(c) neardup", "SALE", "copy", "watermark"])
    box = draw.textbbox((0, 0), word, font=font)
    text_width, text_height = box[2] - box[0], box[3] - box[1]
    where = rng.choice(["corner", "middle"])
    if where == "corner":
        position = (picture.width - text_width - 4, picture.height - text_height - 8)
    else:
        position = ((picture.width - text_width) // 2, (picture.height - text_height) // 2)
    colour = (255, 255, 255) if picture.mode == "RGB" else 255
    draw.text(position, word, fill=colour, font=font, stroke_width=1,
              stroke_fill=(0, 0, 0) if picture.mode == "RGB" else 0)
    return result, f"text {where} size={size}px word={word!r}", DEFAULT_JPEG_QUALITY


EDITS: dict[str, Callable[[Image.Image, random.Random], EditResult]] = {
    "resize": resize, "jpeg": jpeg, "crop": crop, "pad": pad, "rotate": rotate, "flip": flip,
    "brightness": brightness, "contrast": contrast, "gray": gray, "blur": blur, "noise": noise,
    "text": text,
}
KINDS = (*EDITS, "combo")


def combo(picture: Image.Image, rng: random.Random) -> EditResult:
    """Two or three different edits in a row (flip and gray left out: they dominate the rest)."""
    choices = rng.sample([kind for kind in EDITS if kind not in ("flip", "gray")], rng.randint(2, 3))
    quality = DEFAULT_JPEG_QUALITY
    parts = []
    for kind in choices:
        picture, description, quality_here = EDITS[kind](picture, rng)
        quality = min(quality, quality_here)
        parts.append(description)
    return picture, "combo " + " + ".join(parts), quality


def apply_edit(kind: str, picture: Image.Image, rng: random.Random, scale: float = 0.05) -> EditResult:
    if kind == "combo":
        return combo(picture, rng)
    if kind == "resize":
        return resize(picture, rng, scale)
    return EDITS[kind](picture, rng)


def parse_kinds(text: str) -> list[str]:
    """`resize,crop` or `all`; raises ValueError naming an unknown kind."""
    kinds = list(KINDS) if text.strip() == "all" else [k.strip() for k in text.split(",") if k.strip()]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown edit {', '.join(unknown) or '(none)'}; choose from"
                         f" {', '.join(KINDS)} or all")
    return kinds
