"""`udiff distill` (issue 20, in progress): a student that samples in few steps, closer to its
teacher's many-step samples than the teacher's own few-step samples; bad teachers are one line."""

from __future__ import annotations

import shutil

import pytest
import torch

import udiff
from conftest import TINY
from udiff import plugins
from udiff.plugins import defaults


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


@pytest.mark.slow
@pytest.mark.parametrize("backbone, objective", [("unet", "ddpm"), ("unet", "flow")])
def test_student_is_closer_to_the_teacher_than_its_few_steps(cli, tmp_path, backbone, objective):
    if backbone not in plugins.registry().components["denoiser"]:
        pytest.skip(f"udiff-{backbone} is not installed")
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    code, _, err = cli("train", "--data", "digits", "--backbone", backbone, *TINY[:4],
                       "--max-steps", "400", "--batch-size", "32", "--scheduler", objective,
                       "--out", teacher)
    assert code == 0, err
    code, _, err = cli("distill", teacher, "--steps", "2", "--guidance", "2", "--pairs", "128",
                       "--max-steps", "400",
                       "--out", student)
    assert code == 0, err
    t, s = udiff.load(teacher), udiff.load(student)
    labels = list(range(10))
    sampler, guidance = defaults.sampler(t.scheduler_name, None, 2.0)  # as the pairs were
    reference, _ = t.sample_tensor(labels, 2, 20, guidance, seed=7, scheduler=sampler)
    few = "few-step" if objective == "flow" else "ddim"
    teacher_few, _ = t.sample_tensor(labels, 2, 2, guidance, seed=7, scheduler=few)
    student_few, _ = s.sample_tensor(labels, 2, 2, 1.0, seed=7, scheduler=few)
    d_student, d_teacher = distance(student_few, reference), distance(teacher_few, reference)
    print(f"{backbone} {objective}: student {d_student:.4f} teacher few-step {d_teacher:.4f}")
    assert d_student < d_teacher


def test_bad_teachers_are_one_line(cli, tiny_run, tmp_path):
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
    assert not out.exists()
