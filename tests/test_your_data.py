"""Issue 29: the user's own folders -- `udiff data`'s report, the plan's data-aware defaults,
held-out validation that never reaches training, early stopping that keeps the best state."""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from conftest import write_folder
from udiff import data as datasets
from udiff.data_report import scan
from udiff.fontset import available, render
from udiff.training import planning

SMALL = ["--preset", "tiny", "--autoencoder-preset", "tiny", "--autoencoder-steps", "10",
         "--batch-size", "16", "--no-estimate"]


def listing(root):
    """Every file under ``root`` with its bytes' hash: what "reads only" must leave as it was."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def problem_folder(root):
    """Label ``many`` (100 images, one copied, one wide), label ``few`` (5 images, one a resized
    JPEG copy of a ``many`` image: filed under two users), a corrupt file and a stray text file."""
    rng = np.random.default_rng(0)
    (root / "many").mkdir(parents=True)
    (root / "few").mkdir()
    for i in range(100):
        arr = (rng.random((8, 8)) > 0.5).astype(np.uint8) * 255  # random blocks: distinct hashes
        Image.fromarray(arr).resize((24, 24), Image.Resampling.NEAREST).save(root / "many" / f"{i:03d}.png")
    shutil.copy(root / "many" / "000.png", root / "many" / "copy.png")
    Image.new("L", (64, 20), 128).save(root / "many" / "wide.png")
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(root / "few" / f"{i}.png")
    copy = io.BytesIO()
    Image.open(root / "many" / "001.png").convert("RGB").resize((36, 36)).save(copy, "JPEG", quality=90)
    (root / "few" / "again.jpg").write_bytes(copy.getvalue())
    (root / "few" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "few" / "notes.txt").write_text("not an image")
    return root


def test_udiff_data_reports_every_problem_and_writes_only_out(cli, tmp_path):
    root = problem_folder(tmp_path / "photos")
    before = listing(root)
    code, out, _ = cli("data", root, "--out", tmp_path / "report", "--json")
    assert code == 0
    report = json.loads(out)
    assert report == json.loads((tmp_path / "report" / "data.json").read_text())
    assert Image.open(tmp_path / "report" / "data.png").size[1] >= 2 * 48  # a row per label
    assert listing(root) == before  # nothing written into DIR
    assert report["labels"]["many"]["images"] == 102 and report["labels"]["few"]["images"] == 5
    assert [u["file"] for u in report["unreadable"]] == [str(root / "few" / "broken.png")]
    assert report["skipped"] == [str(root / "few" / "notes.txt")]
    assert [sorted(g) for g in report["duplicates"]] == [[str(root / "many" / "000.png"),
                                                          str(root / "many" / "copy.png")]]
    across = [p for p in report["near_duplicates"] if p["across_labels"]]
    assert {(p["a"], p["b"]) for p in across} == {(str(root / "few" / "again.jpg"),
                                                   str(root / "many" / "001.png"))}
    assert [c["file"] for c in report["cropped"]] == [str(root / "many" / "wide.png")]
    assert report["cropped"][0]["cut"] == pytest.approx(1 - 20 / 64, abs=1e-3)
    assert report["few_images"] == [{"label": "few", "images": 5}]
    assert report["labels"]["few"]["modes"] == {"L": 4, "RGB": 1}
    # the text report and train's preflight give the same one-line summary
    code, text, _ = cli("data", root)
    assert code == 0 and report["summary"] in text and "1 exact duplicate" in report["summary"]


def test_udiff_data_bad_input_is_one_line_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "report"
    cli.fails("data", tmp_path / "missing", "--out", out, match="no such folder")
    (tmp_path / "empty").mkdir()
    cli.fails("data", tmp_path / "empty", "--out", out, match="no label sub-folders")
    (tmp_path / "a_file").write_text("x")
    cli.fails("data", tmp_path / "a_file", "--out", out, match="not a folder")
    (tmp_path / "junk" / "user").mkdir(parents=True)
    (tmp_path / "junk" / "user" / "x.png").write_bytes(b"no image")
    cli.fails("data", tmp_path / "junk", "--out", out, match="no images in any label folder")
    root = write_folder(tmp_path / "ok", labels=2, per_label=2)
    cli.fails("data", root, "--out", root / "report", match="inside")
    assert not out.exists() and not (root / "report").exists()


def test_the_plan_follows_the_data_and_leaves_what_the_user_gave(tmp_path):
    small = scan(write_folder(tmp_path / "small", labels=3, per_label=40, size=20))
    render(tmp_path / "fonts", size=64, labels=4, per_label=300)
    big = scan(tmp_path / "fonts")
    d_small, _ = planning.choose(small, {}, "cpu")
    d_big, rows = planning.choose(big, {}, "cpu")
    assert d_small["data"] == {"image_size": 16, "channels": 3}  # 20 px: not upscaled to 32
    assert d_big["data"] == {"image_size": 64, "channels": 1}  # grey glyphs
    assert d_small["autoencoder"]["preset"] == "tiny" and d_big["autoencoder"]["preset"] == "tiny8"
    ts, tb = d_small["training"], d_big["training"]
    # 60 epochs of 108 vs 1,080 training images at batch 48: 135 -> the floor of 400, 1,350
    assert (ts["max_steps"], tb["max_steps"]) == (400, 1350)
    assert ts["autoencoder_steps"] == tb["autoencoder_steps"] == 200  # 8 epochs: 18, 180
    assert {f for f, _, _ in rows} >= {"data.image_size", "training.max_steps"}
    mine, rows = planning.choose(big, {"data": {"image_size": 32}, "training": {"max_steps": 7}},
                                 "cpu")
    assert "image_size" not in mine["data"] and "max_steps" not in mine["training"]
    assert mine["autoencoder"]["preset"] == "tiny4"  # follows the size the user gave
    assert ("training.max_steps", "7", "yours") in rows


def test_udiff_train_prints_the_plan_and_records_the_estimate(cli, tmp_path):
    root = write_folder(tmp_path / "faces", labels=2, per_label=10, size=20)
    code, _, err = cli("train", "--data", root, "--preset", "tiny", "--autoencoder-steps", "10",
                       "--max-steps", "10", "--batch-size", "8", "--out", tmp_path / "run")
    assert code == 0, err
    assert "data: 2 labels, 20 images" in err and "plan for" in err and "estimate:" in err
    plan = json.loads((tmp_path / "run" / "run.json").read_text())["plan"]
    chosen = {c["field"]: c for c in plan["choices"]}
    assert chosen["data.image_size"]["value"] == "16" and chosen["training.max_steps"]["reason"] == "yours"
    est = plan["estimate"]
    assert est["seconds"] > 0 and set(est["parts"]) >= {"stage 1", "stage 2", "validation"}
    assert plan["actual_seconds"] > 0
    # both rounded to 0.1 s: a second-long run may differ by a few percent
    assert plan["estimate_error"] == pytest.approx(plan["actual_seconds"] / est["seconds"] - 1, abs=0.1)


def image_hashes(images: torch.Tensor) -> set[str]:
    return {hashlib.sha256(x.numpy().tobytes()).hexdigest() for x in images}


def test_held_out_images_never_reach_training_or_the_classifiers(cli, tmp_path, monkeypatch):
    """Every image stage 1 trains on, stage 2 caches latents of, and the validation and eval
    reference classifiers learn from, by hash: none is held out."""
    from udiff.evaluation import evaluate
    from udiff.training import sources, stages, validation

    root = write_folder(tmp_path / "faces", labels=3, per_label=10)
    seen: dict[str, list] = {"stage 1": [], "stage 2": [], "classifier": []}
    shuffled, images, reference = stages.shuffled, sources.DataLatents.images, evaluate.train_reference

    def spy_shuffled(dataset, *a, **k):
        if dataset.tensors[0].shape[1:] == (3, 16, 16):  # stage 1's images (stage 2's: latents)
            seen["stage 1"].append(dataset.tensors[0])
        return shuffled(dataset, *a, **k)

    def spy_images(self):
        got = images(self)
        seen["stage 2"].append(got[0])
        return got

    def spy_reference(data, *a, **k):
        seen["classifier"].append(data.images)
        return reference(data, *a, **k)

    monkeypatch.setattr(stages, "shuffled", spy_shuffled)
    monkeypatch.setattr(sources.DataLatents, "images", spy_images)
    monkeypatch.setattr(validation, "train_reference", spy_reference)
    monkeypatch.setattr(evaluate, "train_reference", spy_reference)
    run = tmp_path / "run"
    assert cli("train", "--data", root, *SMALL, "--max-steps", "6", "--validate-every", "3",
               "--holdout", "0.2", "--out", run)[0] == 0
    assert cli("eval", run, "--out", tmp_path / "m.json", "--per-label", "2")[0] == 0
    data = datasets.load(str(root), 16, 3)
    held = datasets.splits(data, 0.2, 0.1, 0).held
    assert len(held) == 6  # 2 of each label's 10
    held_hashes = image_hashes(held.images)
    assert len(seen["stage 1"]) == 1 and len(seen["stage 2"]) == 1 and len(seen["classifier"]) == 2
    for what, tensors in seen.items():
        for t in tensors:
            assert not image_hashes(t) & held_hashes, what
    assert image_hashes(seen["stage 2"][0]) | held_hashes == image_hashes(data.images)
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    rows = [r for r in log if r["stage"] == "validation"]
    assert [r["step"] for r in rows] == [3, 6]
    assert all({"loss", "label_accuracy", "fid", "kid"} <= set(r) for r in rows)


def trained_weights(run) -> list[torch.Tensor]:
    """The saved run's trainable parameters, in the trainer's order (Denoising: denoiser, then
    conditioner)."""
    import udiff
    from udiff.training.objective import Denoising

    pipe = udiff.load(run)
    return [p.detach() for p in Denoising(pipe.denoiser, pipe.conditioner).parameters()]


def test_early_stop_on_a_plateau_keeps_the_best_state_and_refuses_resume(cli, tmp_path):
    """lr 1e-30 leaves every float32 weight bitwise unchanged: the held-out loss is flat, so
    patience 2 stops two validations after the first."""
    root = write_folder(tmp_path / "faces", labels=2, per_label=10)
    run = tmp_path / "run"
    code, _, err = cli("train", "--data", root, *SMALL, "--max-steps", "50", "--lr", "1e-30",
                       "--validate-every", "5", "--early-stop", "2", "--early-stop-metric", "loss",
                       "--out", run)
    assert code == 0, err
    result = json.loads((run / "run.json").read_text())
    assert result["early_stop"] | {"best_value": None} == {
        "metric": "loss", "patience": 2, "best_step": 5, "best_value": None, "stopped_at": 15,
        "stopped_early": True}
    assert result["steps"]["denoiser"] == 15
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "validation"] == [5, 10, 15]
    cli.fails("train", "--data", root, *SMALL, "--max-steps", "50", "--lr", "1e-30",
              "--validate-every", "5", "--early-stop", "2", "--early-stop-metric", "loss",
              "--out", run, "--resume", match="stopped early at step 15")


def test_the_saved_denoiser_is_the_best_validated_state(cli, tmp_path):
    root = write_folder(tmp_path / "faces", labels=2, per_label=10)
    run = tmp_path / "run"
    assert cli("train", "--data", root, *SMALL, "--max-steps", "20", "--lr", "0.02",
               "--validate-every", "4", "--early-stop", "100", "--early-stop-metric", "fid",
               "--out", run)[0] == 0
    result = json.loads((run / "run.json").read_text())
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    fids = {r["step"]: r["fid"] for r in rows if r["stage"] == "validation"}
    best_step = min(fids, key=fids.get)
    assert best_step < 20  # lr 0.02 overshoots late: the best is not the last state
    assert result["early_stop"]["best_step"] == best_step and not result["early_stop"]["stopped_early"]
    assert result["early_stop"]["best_value"] == pytest.approx(fids[best_step])
    best = safetensors.torch.load_file(str(run / "best.safetensors"))
    saved = trained_weights(run)
    assert len(saved) == len(best)
    for i, w in enumerate(saved):
        assert torch.equal(w, best[str(i)]), i


def test_validation_and_holdout_bad_input(cli, tmp_path):
    root = write_folder(tmp_path / "faces", labels=2, per_label=3)
    (root / "single").mkdir()
    Image.new("RGB", (16, 16)).save(root / "single" / "only.png")
    out = tmp_path / "run"
    cli.fails("train", "--data", root, *SMALL, "--validate-every", "0", "--early-stop", "3",
              "--out", out,
              match="--early-stop needs validation")
    cli.fails("train", "--data", root, *SMALL, "--out", out,
              match="leaves label 'single' with no training image")
    assert not out.exists()


def test_eval_of_a_folder_that_holds_a_run_says_where_it_is(cli, tmp_path):
    (tmp_path / "demo-run" / "run").mkdir(parents=True)
    (tmp_path / "demo-run" / "run" / "run.json").write_text("{}")
    cli.fails("eval", tmp_path / "demo-run", "--out", tmp_path / "m.json",
              match=f"holds a run: {tmp_path / 'demo-run' / 'run'}")


def test_the_font_set_is_rendered_here_the_same_every_time(tmp_path):
    assert len(available()) >= 20  # matplotlib's faces alone
    names = render(tmp_path / "a", size=32, labels=20, per_label=3)
    render(tmp_path / "b", size=32, labels=20, per_label=3)
    assert len(set(names)) == 20
    a, b = listing(tmp_path / "a"), listing(tmp_path / "b")
    assert list(a.values()) == list(b.values()) and len(a) == 60
    assert Image.open(next((tmp_path / "a").rglob("*.png"))).size == (32, 32)


def test_the_time_probe_changes_nothing_the_run_trains(cli, tmp_path):
    """The probe runs real optimizer steps before training: under a forked RNG, on its own
    modules, and ending on an accumulation boundary, so the run's weights are bitwise the same
    as without it (3 micro-batches per step here)."""
    config = tmp_path / "acc.toml"
    config.write_text("[training]\ngradient_accumulation_steps = 3\n")
    common = ["train", "--config", config, "--data", "digits", "--backbone", "dit", "--preset",
              "tiny", "--autoencoder-steps", "4", "--max-steps", "4", "--batch-size", "12"]
    weights = {}
    for name, extra in (("probed", []), ("plain", ["--no-estimate"])):
        code, _, err = cli(*common, *extra, "--out", tmp_path / name)
        assert code == 0, err
        assert ("estimate:" in err) == (name == "probed")
        weights[name] = safetensors.torch.load_file(tmp_path / name / "denoiser" / "model.safetensors")
    assert all(torch.equal(weights["probed"][k], weights["plain"][k]) for k in weights["plain"])
