"""``udiff data``: what a folder of label folders holds, before any training -- per label the
counts, sizes, aspect ratios and modes; files that cannot be read (named); exact duplicates (SHA-256
of the bytes) and near-duplicates (a perceptual hash, within and across labels); images that
center-cropping to a square cuts by more than a quarter; labels under :data:`FEW_IMAGES`. Reads
only. ``udiff train``'s preflight runs the same scan and prints :func:`summary`."""

from __future__ import annotations

import hashlib
import io
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from .data import MAX_PIXELS, empty_label, extensions, label_folders, no_images
from .errors import UdiffError

# Below this many images a label's samples risk being near-copies of its training images: 5 per
# label trained long gives mostly copies, the digits (~180 per label) none (docs/evaluation.md: Memorisation).
FEW_IMAGES = 100
CROP_CUT = 0.25  # center-cropping a w x h image to a square drops 1 - min/max of it
# imagehash's pHash on a 16x16 DCT (256 bits): a resized, re-encoded JPEG copy differs by <= 10
# bits, distinct glyphs of one font by > 12 (measured on `udiff.fontset`; docs/your-data.md).
HASH_SIZE, NEAR = 16, 12
SHOWN = 8  # thumbnails per label in data.png


def scan(root: str | Path, what: str | None = None, strict: bool = False) -> dict:
    """The report as JSON-ready values; a missing, empty or unreadable folder is a UdiffError
    (``what`` names the argument in it). ``strict`` (training): an image that cannot be read
    is refused, as training would refuse it, instead of reported."""
    import imagehash

    root = Path(root)
    what = what or f"udiff data {root}"
    folders = label_folders(root, what)
    known = extensions()
    labels, unreadable, skipped, by_sha, hashes = {}, [], [], defaultdict(list), []
    short_sides = []
    for folder in folders:
        sizes, modes, cropped = [], Counter(), []
        try:
            files = sorted(p for p in folder.iterdir() if p.is_file())
        except OSError as e:
            unreadable.append({"file": str(folder), "error": e.strerror or type(e).__name__})
            continue
        for f in files:
            if f.suffix.lower() not in known:
                skipped.append(str(f))
                continue
            try:
                raw = f.read_bytes()
                with Image.open(io.BytesIO(raw)) as im:
                    if im.width * im.height > MAX_PIXELS:
                        raise ValueError(f"{im.width}x{im.height} is over the decode bound")
                    im.load()
                    w, h, mode = im.width, im.height, im.mode
                    hashes.append((str(f), folder.name, imagehash.phash(im, HASH_SIZE).hash.ravel()))
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
                error = str(e).splitlines()[0] or type(e).__name__
                if strict:
                    raise UdiffError(f"cannot read image {f}: {error}") from None
                unreadable.append({"file": str(f), "error": error})
                continue
            by_sha[hashlib.sha256(raw).hexdigest()].append(str(f))
            sizes.append((w, h))
            short_sides.append(min(w, h))
            modes[mode] += 1
            cut = 1 - min(w, h) / max(w, h)
            if cut > CROP_CUT:
                cropped.append({"file": str(f), "size": [w, h], "cut": round(cut, 3)})
        if not sizes and not any(u["file"].startswith(f"{folder}/") for u in unreadable):
            empty_label(folder)
        labels[folder.name] = describe(sizes, modes, cropped)
    if not any(v["images"] for v in labels.values()):
        raise no_images(what)
    report = {
        "root": str(root), "labels": labels,
        "images": sum(v["images"] for v in labels.values()),
        "short_side_median": statistics.median(short_sides),
        "modes": dict(sum((Counter(v["modes"]) for v in labels.values()), Counter())),
        "unreadable": unreadable, "skipped": skipped,
        "duplicates": [group for group in by_sha.values() if len(group) > 1],
        "near_duplicates": near_duplicates(hashes, {f for g in by_sha.values() for f in g[1:]}),
        "cropped": [c for v in labels.values() for c in v.pop("cropped_files")],
        "few_images": [{"label": k, "images": v["images"]} for k, v in labels.items()
                       if v["images"] < FEW_IMAGES],
        "settings": {"near_duplicate_bits": NEAR, "hash_bits": HASH_SIZE ** 2,
                     "crop_cut": CROP_CUT, "few_images": FEW_IMAGES},
    }
    report["summary"] = summary(report)
    return report


def describe(sizes: list[tuple[int, int]], modes: Counter, cropped: list[dict]) -> dict:
    """One label's counts: sizes (min/median/max of width and height), aspect w/h, modes."""
    if not sizes:
        return {"images": 0, "modes": {}, "cropped": 0, "cropped_files": []}
    ws, hs = [w for w, _ in sizes], [h for _, h in sizes]
    aspect = [w / h for w, h in sizes]
    return {"images": len(sizes),
            "width": {"min": min(ws), "median": statistics.median(ws), "max": max(ws)},
            "height": {"min": min(hs), "median": statistics.median(hs), "max": max(hs)},
            "short_side_median": statistics.median(min(w, h) for w, h in sizes),
            "aspect": {"min": round(min(aspect), 3), "max": round(max(aspect), 3)},
            "modes": dict(modes), "cropped": len(cropped), "cropped_files": cropped}


def near_duplicates(hashes: list[tuple[str, str, np.ndarray]], exact: set[str]) -> list[dict]:
    """Pairs whose pHashes differ by at most :data:`NEAR` bits (exact copies left out: they are
    listed as duplicates), with whether the two files are under different labels."""
    keep = [h for h in hashes if h[0] not in exact]
    if len(keep) < 2:
        return []
    bits = np.stack([h[2] for h in keep]).astype(np.float32)  # [N, 256] of 0/1
    pairs = []
    for i in range(0, len(bits), 1024):  # Hamming distances a block of rows at a time
        block = bits[i:i + 1024]
        dist = block @ (1 - bits).T + (1 - block) @ bits.T  # [B, N]
        for a, b in zip(*np.nonzero(dist <= NEAR), strict=True):
            a += i
            if a < b:
                pairs.append({"a": keep[a][0], "b": keep[b][0], "bits": int(dist[a - i, b]),
                              "across_labels": keep[a][1] != keep[b][1]})
    return pairs


def summary(r: dict) -> str:
    """The report in one line (``udiff train`` prints it before training)."""
    modes = sorted(r["modes"])
    across = sum(p["across_labels"] for p in r["near_duplicates"])
    copies = sum(len(g) - 1 for g in r["duplicates"])
    return (f"data: {len(r['labels'])} labels, {r['images']:,} images (median short side "
            f"{r['short_side_median']:g} px, {'/'.join(modes)}); {len(r['unreadable'])} "
            f"unreadable, {copies} exact duplicate(s), {len(r['near_duplicates'])} near-duplicate "
            f"pair(s) ({across} across labels), {len(r['cropped'])} image(s) lose over "
            f"{CROP_CUT:.0%} to center-cropping, {len(r['few_images'])} label(s) under "
            f"{FEW_IMAGES} images")


def contact_sheet(r: dict, thumb: int = 48) -> Image.Image:
    """``data.png``: a row per label -- its name and count, then up to 8 of its images."""
    root, label_w, pad = Path(r["root"]), 200, 4
    rows = list(r["labels"].items())
    sheet = Image.new("RGB", (label_w + SHOWN * (thumb + pad) + pad, len(rows) * (thumb + pad) + pad),
                      "white")
    draw = ImageDraw.Draw(sheet)
    bad = {u["file"] for u in r["unreadable"]}
    for i, (name, v) in enumerate(rows):
        y = pad + i * (thumb + pad)
        flag = " (few)" if v["images"] < FEW_IMAGES else ""
        draw.text((pad, y + thumb // 3), f"{name[:24]}: {v['images']}{flag}", fill="black")
        shown = 0
        for p in sorted((root / name).iterdir()):
            if shown == SHOWN:
                break
            if str(p) in bad or not p.is_file():
                continue
            try:
                with Image.open(p) as im:
                    im = im.convert("RGB")
                    im.thumbnail((thumb, thumb))
            except (OSError, ValueError, Image.DecompressionBombError):
                continue  # not an image (skipped, as the report says)
            sheet.paste(im, (label_w + pad + shown * (thumb + pad), y))
            shown += 1
    return sheet
