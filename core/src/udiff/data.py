"""Labelled image sets: the embedded digits, or a folder with one sub-folder per label."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import UdiffError

MAX_PIXELS = 64_000_000  # decode bound: refuse decompression bombs instead of exhausting memory


@dataclass
class LabelledImages:
    images: torch.Tensor  # [N, C, S, S] float32 in [-1, 1]
    labels: torch.Tensor  # [N] long
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def split(self, holdout: float, seed: int) -> tuple[LabelledImages, LabelledImages]:
        """A seeded, per-label stratified split: (train, held-out)."""
        keep, held = split_indices(self.labels, holdout, seed)
        return self.subset(keep), self.subset(held)

    def subset(self, index: torch.Tensor) -> LabelledImages:
        return LabelledImages(self.images[index], self.labels[index], self.label_names)


def split_indices(labels: torch.Tensor, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out): ``holdout`` of every label (at least one), seeded."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for k in labels.unique().tolist():
        idx = np.flatnonzero(labels.numpy() == k)
        rng.shuffle(idx)
        mask[idx[: max(1, int(round(len(idx) * holdout)))]] = True
    return torch.from_numpy(np.flatnonzero(~mask)), torch.from_numpy(np.flatnonzero(mask))


@dataclass
class Splits:
    """Who sees which image. Stage 2 (and the reference classifier that judges it) never sees
    ``held``; stage 1 never sees ``held`` nor its own ``autoencoder_held`` (scored by PSNR/SSIM).
    Both splits are :func:`split_indices` with the run's seed, so at equal fractions they are the
    same images."""

    train: LabelledImages  # stage 2's images
    held: LabelledImages | None  # validation's held-out images (None: holdout 0)
    autoencoder_train: LabelledImages
    autoencoder_held: LabelledImages | None


def splits(data: LabelledImages, holdout: float, autoencoder_holdout: float, seed: int) -> Splits:
    """The run's splits (``training.holdout``, ``training.autoencoder_holdout``, seed)."""
    none = torch.zeros(len(data), dtype=torch.bool)
    mask = lambda frac: none.clone().index_fill_(0, split_indices(data.labels, frac, seed)[1], True) \
        if frac > 0 else none  # noqa: E731
    held, ae_held = mask(holdout), mask(autoencoder_holdout)
    part = lambda m: data.subset(torch.nonzero(m)[:, 0])  # noqa: E731
    return Splits(part(~held), part(held) if held.any() else None, part(~(held | ae_held)),
                  part(ae_held) if ae_held.any() else None)


def load(source: str, image_size: int, channels: int | None = None) -> LabelledImages:
    if source == "digits":
        return load_digits(image_size)
    return load_folder(Path(source), image_size, channels or 3)


def load_digits(image_size: int) -> LabelledImages:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 labels; no download)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0  # [N, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return LabelledImages(x.clamp(0, 1) * 2 - 1, torch.from_numpy(d.target).long(),
                          [str(n) for n in d.target_names])


def extensions() -> set[str]:
    """Every file extension Pillow registers a decoder for (PNG, JPEG, WebP, BMP, PGM/PPM, TIFF,
    GIF, ...): what it cannot decode is still refused in one line when read."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def label_folders(root: Path, what: str) -> list[Path]:
    """The label sub-folders of ``root``, sorted; ``what`` names the argument in errors."""
    if not root.exists():
        raise UdiffError(f"{what}: no such folder (or use --data digits)")
    if not root.is_dir():
        raise UdiffError(f"{what}: not a folder of label folders")
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise UdiffError(f"{what}: cannot read the folder ({e.strerror or type(e).__name__})") from None
    if not folders:
        raise UdiffError(f"{what}: no label sub-folders (expected one folder per label)")
    return folders


def no_images(what: str) -> UdiffError:
    return UdiffError(f"{what}: no images in any label folder (any format Pillow reads: .png, "
                      ".jpg, .webp, .bmp, .pgm, .ppm, .tif, .gif, ...)")


def empty_label(folder: Path) -> None:
    # Refusing would make one stray folder block a run; skip it, loudly.
    warnings.warn(f"label folder {folder} holds no images; skipped", stacklevel=3)


def load_folder(root: Path, image_size: int, channels: int) -> LabelledImages:
    folders = label_folders(root, f"--data {root}")
    images, labels, names = [], [], []
    known = extensions()
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in known)
        if not files:
            empty_label(folder)
            continue
        for f in files:
            images.append(read_image(f, image_size, channels))
            labels.append(len(names))
        names.append(folder.name)
    if not names:
        raise no_images(f"--data {root}")
    return LabelledImages(torch.stack(images), torch.tensor(labels), names)


def read_image(path: Path, image_size: int, channels: int) -> torch.Tensor:
    """Decode, convert any mode to L/RGB, resize the short side and center-crop: [C, S, S]."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise UdiffError(f"image {path} is {im.width}x{im.height}: over the decode bound "
                                 f"of {MAX_PIXELS:,} pixels")
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                im = im.point(lambda v: v / 256).convert("L")  # 16-bit grey to 8-bit
            im = im.convert("RGBA").convert("RGB") if im.mode in ("P", "PA", "LA") else im
            im = im.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UdiffError(f"cannot read image {path}: {str(e).splitlines()[0] or type(e).__name__}") from None
    scale = image_size / min(im.size)
    w, h = max(image_size, round(im.width * scale)), max(image_size, round(im.height * scale))
    im = im.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - image_size) // 2, (h - image_size) // 2
    im = im.crop((left, top, left + image_size, top + image_size))
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def augment(images: torch.Tensor, translate: int, hflip: bool,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Random translation (pad by ``translate`` with repeated edges, crop back at a random offset)
    and optional horizontal flip, per image: ``[B, C, S, S]`` -> same shape."""
    b, _, s, _ = images.shape
    if translate:
        padded = F.pad(images, (translate,) * 4, mode="replicate")
        dy, dx = torch.randint(0, 2 * translate + 1, (2, b), generator=generator)
        images = torch.stack([padded[i, :, y:y + s, x:x + s]
                              for i, (y, x) in enumerate(zip(dy.tolist(), dx.tolist(), strict=True))])
    if hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images
