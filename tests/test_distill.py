"""`udiff distill`: a student that samples in few steps, closer to its teacher's many-step samples
than the teacher's own few-step samples, for every backbone x objective; an ordinary run (sample,
eval, serve, export, LoRA); kill and resume exact; bad teachers one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib

import pytest
import safetensors.torch
import torch
from test_resume import wait_for_checkpoint, weights

import udiff
from conftest import TINY
from udiff import plugins
from udiff.cli import main
from udiff.sampling.spec import SamplingSpec
from udiff.weights.lora import fingerprint

# A noise teacher that samples sanely after a test's few hundred steps: v-prediction (a tiny
# epsilon teacher's samples diverge, latent std ~7 against the data's 1: see the pairs warning).
V_TEACHER = '[scheduler]\nname = "ddpm"\n[scheduler.options]\nprediction_type = "v_prediction"\n'
ACCEPTANCE = pytest.mark.acceptance  # the suite keeps one case (15 minutes); .ci/run runs all


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


def teacher_run(cli, tmp_path, backbone: str, objective: str, steps: int = 300):
    if backbone not in plugins.registry().components["denoiser"]:
        pytest.skip(f"udiff-{backbone} is not installed")
    teacher = tmp_path / "teacher"
    config = tmp_path / "teacher.toml"
    config.write_text((V_TEACHER if objective == "ddpm" else '[scheduler]\nname = "flow"\n')
                      + "[sampling]\nsteps = 20\n")  # the teacher's guided pairs: 20 steps
    code, _, err = cli("train", "--data", "digits", "--backbone", backbone, *TINY[:4],
                       "--max-steps", str(steps), "--batch-size", "32", "--config", config,
                       "--out", teacher)
    assert code == 0, err
    return teacher


@pytest.mark.slow
@pytest.mark.parametrize("backbone, objective", [  # the tiny DiT and Flux take ~10 s, the UNet ~70
    ("dit", "flow"), ("flux", "ddpm"),
    pytest.param("unet", "flow", marks=ACCEPTANCE),  # unet x ddpm: the epsilon teacher below
    pytest.param("dit", "ddpm", marks=ACCEPTANCE), pytest.param("flux", "flow", marks=ACCEPTANCE)])
def test_student_is_closer_to_the_teacher_than_its_few_steps(cli, tmp_path, backbone, objective):
    teacher, student = teacher_run(cli, tmp_path, backbone, objective), tmp_path / "student"
    # 512 pairs: with 128 a tiny student does not generalise to new noise (measured: 0.065
    # against the teacher's 1-step 0.080; with 512, 0.032)
    code, _, err = cli("distill", teacher, "--steps", "2", "--guidance", "2", "--pairs", "512",
                       "--max-steps", "300", "--out", student)
    assert code == 0, err
    assert "distill: 512 guided samples of the teacher" in err
    t, s = udiff.load(teacher), udiff.load(student)
    d = tomllib.loads((student / "config.toml").read_text())["distill"]
    few = "few-step" if objective == "flow" else "ddim"
    assert s.sampling == SamplingSpec(few, 2, 1.0)  # what it samples with when not told
    labels = list(range(10))
    reference, _ = t.sample_tensor(labels, 2, steps=d["teacher_steps"], guidance=2.0, seed=7,
                                   sampler=d["teacher_sampler"])  # as the pairs were sampled
    teacher_few, _ = t.sample_tensor(labels, 2, steps=2, guidance=2.0, seed=7, sampler=few)
    student_few, _ = s.sample_tensor(labels, 2, seed=7)  # its own: 2 steps, guidance 1
    d_student, d_teacher = distance(student_few, reference), distance(teacher_few, reference)
    print(f"{backbone} {objective}: student {d_student:.4f} teacher few-step {d_teacher:.4f}")
    assert d_student < d_teacher
    assert student_few.std() > 0.1  # images, not a constant both sides agree on
    if backbone == "unet":  # export writes the student's own sampler (UNet: folders per part)
        code, _, err = cli("export", student, "--format", "diffusers", "--out", tmp_path / "x")
        assert code == 0, err
        sched = json.loads((tmp_path / "x" / "scheduler" / "scheduler_config.json").read_text())
        if objective == "flow":
            assert sched["_class_name"] == "FlowMatchEulerDiscreteScheduler"
            assert "sigmas [1.0, 0.5]" in err  # diffusers' own spacing differs: said
        else:
            assert sched["_class_name"] == "DDIMScheduler"
            assert sched["prediction_type"] == "v_prediction"
            assert sched["timestep_spacing"] == "trailing"


@pytest.mark.slow
@ACCEPTANCE  # the UNet demo (shared with the demo test), its student, 3 evals at 30 per label
def test_the_demo_teacher_distils_to_4_2_and_1_steps(cli, demo, tmp_path):
    """`udiff distill --steps 4` of the UNet demo run (rectified flow, Euler 20 at CFG 2 on
    [0.2, 0.8]): at 4, 2 and 1 steps (guidance 1) label accuracy within 0.02 of the teacher's
    and FID at most 1.5x its FID (the README's bounds, against the teacher's `udiff eval` as
    the demo ran it); the export is diffusers' FlowMatchEuler. The noise objective's student
    (epsilon teacher -> v-prediction, DDIM) is the suite's [dit-ddpm] and [flux-ddpm] above;
    a `udiff bench distill` row equals `udiff eval` exactly: the suite's bench test."""
    proc, out = demo("unet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    taught = json.loads((out / "metrics.json").read_text())
    teacher, student = out / "run", tmp_path / "student"
    assert taught["trained_with"] == "flow" and taught["settings"]["guidance"] == 2
    code, _, err = cli("distill", teacher, "--steps", "4", "--out", student)
    assert code == 0, err
    assert "1024 guided samples of the teacher (20 steps of" in err
    for k in (4, 2, 1):  # `udiff eval` of the student at its own sampler, guidance 1
        code, _, err = cli("eval", student, "--steps", k, "--out", tmp_path / f"m{k}.json")
        assert code == 0, err
        m = json.loads((tmp_path / f"m{k}.json").read_text())
        assert (m["settings"]["scheduler"], m["settings"]["guidance"]) == ("few-step", 1.0)
        print(f"student {k} steps: {m['label_accuracy']:.3f} / FID {m['fid']:.1f} (teacher "
              f"{taught['label_accuracy']:.3f} / {taught['fid']:.1f})")
        assert m["label_accuracy"] >= taught["label_accuracy"] - 0.02, (k, m["label_accuracy"])
        assert m["fid"] <= 1.5 * taught["fid"], (k, m["fid"])
    code, _, err = cli("export", student, "--format", "diffusers", "--out", tmp_path / "x")
    assert code == 0, err
    sched = json.loads((tmp_path / "x" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "FlowMatchEulerDiscreteScheduler"


def test_student_config_records_the_teacher_and_switches_epsilon_to_v(tiny_run):
    from udiff.training.distill import student_config

    cfg = student_config(tiny_run, 4)  # tiny_run: a UNet trained with ddpm (epsilon)
    assert cfg.scheduler.name == "ddpm" and cfg.scheduler.options["prediction_type"] == \
        "v_prediction"
    assert (cfg.sampling.scheduler, cfg.sampling.steps, cfg.sampling.guidance) == ("ddim", 4, 1)
    assert cfg.distill.teacher == str(tiny_run.resolve())
    assert cfg.distill.teacher_sha256 == fingerprint(tiny_run / "denoiser" / "model.safetensors")
    assert (cfg.distill.teacher_sampler, cfg.distill.guidance) == ("dpm++", 6.0)  # family's
    assert cfg.autoencoder.from_run == str(tiny_run.resolve())
    assert cfg.conditioner.options["dropout"] == 0.0
    assert cfg.training.max_steps == 400  # distillation's default, not the teacher's


@pytest.fixture(scope="module")
def student(tmp_path_factory, tiny_run):
    """A LoRA student of the tiny run, 2 steps, built once for the ordinary-run checks."""
    out = tmp_path_factory.mktemp("students") / "student"
    code = main(["distill", str(tiny_run), "--steps", "2", "--pairs", "32",
                           "--max-steps", "10", "--batch-size", "16", "--lora-rank", "4",
                           "--out", str(out)])
    assert code == 0
    return out


def test_a_lora_student_is_an_adapter_on_its_teacher(student, tiny_run):
    meta = json.loads((student / "denoiser" / "config.json").read_text())
    assert not (student / "denoiser" / "model.safetensors").exists()
    assert meta["lora"]["base"] == {"path": str((tiny_run / "denoiser").resolve()),
                                    "sha256": fingerprint(tiny_run / "denoiser")}
    adapter = safetensors.torch.load_file(student / "denoiser" / "adapter.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # it trained


def test_a_student_is_an_ordinary_run(cli, student, tmp_path):
    png = tmp_path / "s.png"
    code, out, err = cli("sample", student, "--labels", "0,1", "--per-label", "2", "--out", png)
    assert code == 0 and png.stat().st_size > 0, err
    code, _, err = cli("eval", student, "--per-label", "2", "--out", tmp_path / "m.json")
    assert code == 0, err
    settings = json.loads((tmp_path / "m.json").read_text())["settings"]
    assert (settings["scheduler"], settings["steps"], settings["guidance"]) == ("ddim", 2, 1.0)
    from udiff.serve import runs

    served = runs.load([student])["student"]
    assert served.describe()["defaults"] == {"steps": 2, "sampler": "ddim", "guidance": 1.0}
    code, _, err = cli("export", student, "--format", "diffusers", "--merge-lora", "--out",
                       tmp_path / "exported")
    assert code == 0, err
    sched = json.loads((tmp_path / "exported" / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["_class_name"], sched["prediction_type"], sched["timestep_spacing"]) == (
        "DDIMScheduler", "v_prediction", "trailing")  # the student's sampler, as diffusers runs it


def test_few_step_is_a_listed_scheduler(cli):
    code, out, _ = cli("plugins", "--all")
    assert code == 0 and "few-step" in out


def test_bad_teachers_are_one_line(cli, tiny_run, student, tmp_path):
    out = tmp_path / "out"
    cli.fails("distill", tmp_path / "nope", "--out", out, match="does not exist")
    incomplete = shutil.copytree(tiny_run, tmp_path / "incomplete")
    (incomplete / "run.json").unlink()
    cli.fails("distill", incomplete, "--out", out, match="incomplete")
    unknown = shutil.copytree(tiny_run, tmp_path / "unknown")
    config = unknown / "config.toml"
    config.write_text(config.read_text().replace('name = "unet"', 'name = "nope"', 1))
    cli.fails("distill", unknown, "--out", out, match="unknown denoiser 'nope'")
    cli.fails("distill", tiny_run, "--steps", "9", "--out", out, match="1 to 8 steps")
    cli.fails("distill", student, "--lora-rank", "4", "--out", out, match="itself a LoRA run")
    cli.fails("distill", tiny_run, "--lora-rank", "4", "--lora-targets", "nope", "--out", out,
              match="--lora-targets nope")
    assert not out.exists()


DISTILL = ["--steps", "2", "--pairs", "32", "--max-steps", "24", "--batch-size", "16",
           "--checkpoint-every", "3", "--keep-checkpoints", "2"]


def distill_proc(teacher, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "udiff", "distill", str(teacher), *DISTILL,
                             "--out", str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_and_resumed_distillation_equals_uninterrupted(tiny_run, tmp_path):
    reference = tmp_path / "reference"
    proc = distill_proc(tiny_run, reference)
    assert proc.wait(timeout=600) == 0, proc.communicate()[1][-2000:]
    out = tmp_path / "run"
    proc = distill_proc(tiny_run, out)
    wait_for_checkpoint(out, "denoiser", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert not (out / "run.json").exists()
    proc = distill_proc(tiny_run, out, "--resume")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert "continuing from 1-denoiser-" in err
    assert "guided samples of the teacher" not in err  # the cached pairs, not sampled again
    ours, ref = weights(out), weights(reference)
    assert max((ours[k] - ref[k]).abs().max().item() for k in ref) <= 1e-6


def test_overwrite_samples_anew_and_a_changed_teacher_is_refused_on_resume(tiny_run, tmp_path,
                                                                           cli):
    teacher = shutil.copytree(tiny_run, tmp_path / "teacher")
    out = tmp_path / "student"
    short = ["--steps", "1", "--max-steps", "2", "--batch-size", "16", "--out", out]
    code, _, err = cli("distill", teacher, "--pairs", "16", *short)
    assert code == 0, err
    code, _, err = cli("distill", teacher, "--pairs", "32", *short, "--overwrite")
    assert code == 0 and "32 guided samples" in err, err
    assert safetensors.torch.load_file(out / "pairs.safetensors")["x0"].shape[0] == 32
    weights_file = teacher / "denoiser" / "model.safetensors"
    state = safetensors.torch.load_file(weights_file)
    safetensors.torch.save_file({k: v + 0.01 for k, v in state.items()}, weights_file)
    longer = [a if a != "2" else "4" for a in short]  # a complete run trained longer: compared
    cli.fails("distill", teacher, "--pairs", "32", *longer, "--resume", match="teacher_sha256")


def test_bench_distill_scores_and_times_students_against_their_teachers(cli, student, tiny_run,
                                                                        tmp_path):
    out = tmp_path / "bench"
    code, _, err = cli("bench", "distill", student, "--per-label", "2", "--out", out)
    assert code == 0, err
    result = json.loads((out / "distill.json").read_text())
    rows = [(r["model"], r["steps"], r["guidance"]) for r in result["rows"]]
    assert rows == [("teacher", 50, 6.0), ("teacher", 2, 6.0), ("teacher", 1, 6.0),
                    ("student", 2, 1.0), ("student", 1, 1.0)]  # teacher as distilled, K..1
    # Speedups are ratios of this run's timings (how large: a benchmark's figure, not a test's).
    teacher, *_, one_step = result["rows"]
    assert teacher["speedup"] == 1.0
    for r in result["rows"]:
        assert r["speedup"] == round(teacher["ms_per_image"] / r["ms_per_image"], 2)
        assert 0 <= r["label_accuracy"] <= 1 and r["ms_per_image"] > 0
    # Both training times, from the runs' own run.json.
    (times,) = result["training"]
    for key, run in (("teacher_seconds", tiny_run), ("distill_seconds", student)):
        assert times[key] == round(json.loads((run / "run.json").read_text())["wall_seconds"], 1)
    assert f"distillation {times['distill_seconds']:.0f} s" in (out / "distill.md").read_text()
    # A row is exactly what `udiff eval` gives at that setting (the student at 1 step).
    code, _, eval_err = cli("eval", student, "--per-label", "2", "--steps", "1", "--out",
                            tmp_path / "m.json")
    assert code == 0, eval_err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["settings"]["guidance"] == one_step["guidance"] == 1.0
    for key in ("label_accuracy", "fid", "kid", "diversity"):
        assert m[key] == one_step[key], key
    assert (out / "distill.png").stat().st_size > 0 and "| student |" in (
        out / "distill.md").read_text()
    assert "udiff bench distill: unet student 1 steps" in err  # progress, a line per row
    cli.fails("bench", "distill", tiny_run, "--out", tmp_path / "b2",
              match="not a distilled student")
