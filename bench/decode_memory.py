#!/usr/bin/env python3
"""Decode memory: the checker's estimate from an upload's header against the peak it really takes.

    python bench/decode_memory.py [--side 4000]

For each kind of image (PNGs of zeros in 8-bit gray, RGB, RGBA and 16-bit gray, and a noisy JPEG),
a fresh Python process reads the header, computes `limits.decode_cost`, then hashes the upload as
the checker does and reports how far its resident memory rose above what it was before (VmHWM
after resetting it). The estimate should be at or above the measured peak: it is what the decode
budget reserves.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys

from _setup import ROOT  # noqa: F401  (sets the path)

KINDS = ("gray8", "rgb", "rgba", "gray16", "jpeg")


def measure(kind: str, side: int) -> str:
    import numpy as np
    from abuse import png
    from PIL import Image

    from neardup.core.hashing import Recipe, decoder_settings, hash_source
    from neardup.service.limits import decode_cost

    layouts = {"gray8": (8, 0, 1), "rgb": (8, 2, 3), "rgba": (8, 6, 4), "gray16": (16, 0, 1)}
    if kind in layouts:
        data = png(side, side, *layouts[kind])
    else:
        noise = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
        stream = io.BytesIO()
        Image.fromarray(noise).save(stream, "JPEG")
        del noise
        data = stream.getvalue()
    header = Image.open(io.BytesIO(data))
    settings = decoder_settings(Recipe())
    if settings is not None:
        settings(header)
    estimate = decode_cost(header)
    with open("/proc/self/clear_refs", "w") as reset:  # VmHWM starts again from VmRSS
        reset.write("5")
    before = status("VmRSS")
    hash_source(kind, Recipe(), 10**9, data=data)
    peak = status("VmHWM") - before
    return (f"| {kind} | {header.mode} | {estimate / 2**20:,.0f} | {peak / 2**20:,.0f} |"
            f" {'yes' if estimate >= peak else 'NO'} |")


def status(field: str) -> int:
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=4000)
    parser.add_argument("--kind", choices=KINDS, help=argparse.SUPPRESS)  # one measurement
    args = parser.parse_args()
    if args.kind:
        print(measure(args.kind, args.side))
        return 0
    print(f"{args.side} x {args.side} uploads, each hashed in a fresh process")
    print("| image | decoded mode | estimate MB | measured peak MB | estimate covers it |")
    print("|---|---|---:|---:|:---:|")
    for kind in KINDS:
        result = subprocess.run([sys.executable, __file__, "--side", str(args.side), "--kind", kind],
                                capture_output=True, text=True, check=True)
        print(result.stdout.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
