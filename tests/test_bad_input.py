"""The image-file part of the bad-input corpus: each bad file is named in one line, exit 2, and
--out is never created; odd but valid images are converted, not refused."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from udiff.data import load_folder


def png_bytes(size=(20, 20), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 64).convert(mode).save(buf, format="PNG")  # noise: a long IDAT
    return buf.getvalue()


def claimed_size_png(width: int, height: int) -> bytes:
    """A valid PNG header (correct CRC) that claims width x height: decoding it would need
    gigabytes, so the loader must refuse it from the header alone."""
    raw = bytearray(png_bytes())
    ihdr = raw.index(b"IHDR")
    raw[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    raw[ihdr + 17: ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr: ihdr + 17])))
    return bytes(raw)


CASES = {
    "truncated.png": lambda: png_bytes()[: len(png_bytes()) // 2],
    "not-an-image.png": lambda: b"name,label\nalice,3\n",
    "zero-byte.jpg": lambda: b"",
    "garbage.webp": lambda: bytes(range(256)) * 4,
    "huge.png": lambda: claimed_size_png(60000, 60000),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_image_file_is_named_in_one_line(cli, tmp_path, name):
    data = tmp_path / "data"
    (data / "alice").mkdir(parents=True)
    (data / "alice" / "ok.png").write_bytes(png_bytes())
    (data / "alice" / name).write_bytes(CASES[name]())
    line = cli.fails("train", "--data", data, "--max-steps", "1", "--autoencoder-steps", "1",
                     "--out", tmp_path / "run", match=name)
    if name == "huge.png":
        assert "pixels" in line  # refused from the header (decode bound), not by running out
    assert not (tmp_path / "run").exists()


def test_small_and_odd_images_are_converted(tmp_path):
    for label, mode, size in [("a", "L", (8, 6)), ("a", "LA", (30, 30)), ("b", "P", (17, 40)),
                              ("b", "I;16", (20, 20)), ("b", "RGBA", (5, 5))]:
        (tmp_path / label).mkdir(exist_ok=True)
        Image.new(mode, size, 3).save(tmp_path / label / f"{mode.replace(';', '')}.png")
    d = load_folder(tmp_path, 16, 1)
    assert d.images.shape == (5, 1, 16, 16)  # smaller than image_size: upscaled, not refused
