"""A second per-label image set that no one here drew: glyphs of the TrueType fonts on this machine,
one font per label ("user"), written as a folder of label folders of grey PNGs. Each user writes
two characters of their own in their own face (as each of 31 users photographs their own
subject): labels differ in content and in hand, as the digits do.

Matplotlib ships 21 usable faces (DejaVu Sans/Serif/Mono in four styles, STIX General in four,
five Computer Modern); Debian's ``fonts-dejavu`` adds ten more. Each image is one of its label's
characters in the label's font, rendered large, jittered (size, position, a small rotation) and reduced to
``size`` pixels, so a label holds varied images of one hand. Nothing is downloaded; the same
arguments give the same files.

    python -m udiff.fontset fonts/ --size 32 --labels 20 --per-label 120
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CHARS = "ABDEFGHKMNPQRSTWYabdefghkmnpqrtwy2345689&?"  # legible in every face, few look-alikes
# Faces whose letters are symbols or fragments (math extensions, size variants, private use).
NOT_TEXT = ("cmex", "cmsy", "STIXSiz", "STIXNonUni", "Display", "MathTeX", "LastResort")
SCALE = 4  # drawn at 4x and reduced: anti-aliased strokes


def available() -> list[Path]:
    """Every text font file found, one per face name: matplotlib's (on every machine) first,
    then the system's, each sorted."""
    import matplotlib

    roots = [Path(matplotlib.get_data_path()) / "fonts" / "ttf", Path("/usr/share/fonts")]
    faces: dict[str, Path] = {}
    for root in roots:
        for path in sorted(root.rglob("*.ttf")) if root.is_dir() else []:
            if not any(bad in path.name for bad in NOT_TEXT):
                faces.setdefault(path.stem, path)
    return list(faces.values())


def glyph(font: ImageFont.FreeTypeFont, char: str, size: int, rng: random.Random) -> Image.Image:
    """One character, white on black, centred with jitter: an ``L`` image ``size`` x ``size``."""
    big = size * SCALE
    canvas = Image.new("L", (big * 2, big * 2), 0)
    ImageDraw.Draw(canvas).text((big, big), char, fill=255, font=font, anchor="mm")
    canvas = canvas.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BICUBIC)
    box = canvas.getbbox() or (0, 0, 2 * big, 2 * big)
    glyph_img = canvas.crop(box)
    fit = big * rng.uniform(0.62, 0.78) / max(glyph_img.size)  # the glyph's long side
    w, h = max(1, round(glyph_img.width * fit)), max(1, round(glyph_img.height * fit))
    glyph_img = glyph_img.resize((w, h), Image.Resampling.LANCZOS)
    out = Image.new("L", (big, big), 0)
    slack = lambda n: int((big - n) / 2 + rng.uniform(-0.06, 0.06) * big)  # noqa: E731
    out.paste(glyph_img, (slack(w), slack(h)))
    return out.resize((size, size), Image.Resampling.LANCZOS)


def render(out: str | Path, size: int = 32, labels: int = 20, per_label: int = 120,
           seed: int = 0) -> list[str]:
    """Write ``out/<font>/<i>.png``: ``labels`` fonts x ``per_label`` glyphs. -> the fonts used."""
    fonts = available()
    if len(fonts) < labels:
        raise SystemExit(f"only {len(fonts)} text fonts on this machine; ask for --labels "
                         f"{len(fonts)} or fewer (Debian: apt-get install fonts-dejavu)")
    chosen = fonts[:labels]
    out = Path(out)
    for k, path in enumerate(chosen):
        folder = out / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        font = ImageFont.truetype(str(path), size * SCALE)
        rng = random.Random(seed * 1_000_003 + k)
        own = CHARS[2 * k % len(CHARS)] + CHARS[(2 * k + 1) % len(CHARS)]
        for i in range(per_label):
            glyph(font, own[i % 2], size, rng).save(folder / f"{i:04d}.png")
    return [p.stem for p in chosen]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m udiff.fontset", description=__doc__.split("\n")[0])
    p.add_argument("out", help="folder to write (one sub-folder per font)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--labels", type=int, default=20, help="fonts, one per label (default 20)")
    p.add_argument("--per-label", type=int, default=120, help="images per font (default 120)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = render(args.out, args.size, args.labels, args.per_label, args.seed)
    print(f"{len(names)} labels x {args.per_label} images of {args.size} px in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
