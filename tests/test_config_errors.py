"""Bad input gets one line on stderr, exit code 2, and nothing already written is destroyed."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import TINY, run_udiff


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("toml, field", [
    ("[training]\nlr = 'fast'\n", "training.lr"),
    ("[training]\nspeed = 3\n", "training.speed: unknown key"),
    ("[training]\nlr = -0.1\n", "training.lr"),
    ("[data]\nimage_size = 4\n", "data.image_size"),
    ("bogus = 1\n", "bogus: unknown key"),
])
def test_config_errors_name_the_field(cli, tmp_path, toml, field):
    cfg = write(tmp_path / "c.toml", toml)
    cli.fails("train", "--config", cfg, "--out", tmp_path / "run", match=field)
    assert not (tmp_path / "run").exists()


def test_component_option_errors_name_the_field(cli, tmp_path):
    cfg = write(tmp_path / "c.toml", "[denoiser]\nname = 'unet'\noptions = {layers_per_block = 0}\n")
    cli.fails("train", "--config", cfg, "--out", tmp_path / "run",
              match="denoiser.layers_per_block")


def test_config_file_missing_or_invalid(cli, tmp_path):
    cli.fails("train", "--config", tmp_path / "nope.toml", "--out", tmp_path / "r",
              match="does not exist")
    cfg = write(tmp_path / "c.toml", "[training\n")
    cli.fails("train", "--config", cfg, "--out", tmp_path / "r", match="not valid TOML")


@pytest.mark.parametrize("flag, value, match", [
    ("--backbone", "nope", "pip install udiff-nope"),
    ("--preset", "huge", "unknown preset 'huge'"),
    ("--scheduler", "euler9", "unknown scheduler 'euler9'"),
])
def test_unknown_component(cli, tmp_path, flag, value, match):
    args = ["train", "--data", "digits", "--backbone", "unet", flag, value, "--out", tmp_path / "r"]
    cli.fails(*args, match=match)


def test_data_missing_empty_no_images_corrupt(cli, tmp_path):
    out = tmp_path / "run"
    cli.fails("train", "--data", tmp_path / "missing", "--out", out, match="no such folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    cli.fails("train", "--data", empty, "--out", out, match="no label sub-folders")
    (empty / "alice").mkdir()
    (empty / "alice" / "notes.txt").write_text("hi")
    with pytest.warns(UserWarning, match="holds no images; skipped"):
        cli.fails("train", "--data", empty, "--out", out, match="no images")
    (empty / "alice" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    line = cli.fails("train", "--data", empty, "--out", out, match="cannot read image")
    assert "a.png" in line
    assert not out.exists()


def test_folder_dataset_converts_modes(tmp_path):
    from udiff.data import load_folder

    for label, mode in [("a", "L"), ("a", "RGBA"), ("b", "P"), ("b", "I;16"), ("b", "RGB")]:
        folder = tmp_path / label
        folder.mkdir(exist_ok=True)
        Image.new(mode, (40, 30), 7).save(folder / f"{mode.replace(';', '')}.png")
    d = load_folder(tmp_path, 16, 3)
    assert d.images.shape == (5, 3, 16, 16) and d.label_names == ["a", "b"]
    assert d.images.min() >= -1 and d.images.max() <= 1


def test_out_holding_a_run_is_refused(cli, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text("precious = true\n")
    cli.fails("train", "--data", "digits", "--backbone", "unet", *TINY, "--out", out,
              match="already holds a run")
    assert (out / "config.toml").read_text() == "precious = true\n"


def test_sample_errors(cli, tiny_run, tmp_path):
    cli.fails("sample", tiny_run, "--labels", "0,42", "--out", tmp_path / "g.png",
              match="label 42 out of range")
    cli.fails("sample", tmp_path / "nowhere", "--out", tmp_path / "g.png", match="does not exist")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    cli.fails("sample", incomplete, "--out", tmp_path / "g.png", match="incomplete")
    assert not (tmp_path / "g.png").exists()


def test_run_whose_plugin_is_missing(cli, tiny_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    meta = json.loads((run / "denoiser" / "config.json").read_text())
    meta.update(component="hypernet", plugin="udiff-hypernet")
    (run / "denoiser" / "config.json").write_text(json.dumps(meta))
    cli.fails("sample", run, "--out", tmp_path / "g.png", match="pip install udiff-hypernet")


def test_tampered_weights(cli, tiny_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    weights = run / "denoiser" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    cli.fails("sample", run, "--out", tmp_path / "g.png", match="cannot load weights")


def test_real_process_one_line_exit_2(tmp_path):
    proc = run_udiff("train", "--data", "digits", "--backbone", "nope", "--out", tmp_path / "r")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    proc = run_udiff("train", "--bogus-flag")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
