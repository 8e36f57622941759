"""``udiff bench distill STUDENT_DIR... --out DIR``: distilled students against their teachers.

For each student (its config names the teacher): the teacher as it samples (its steps, guided),
the teacher at the student's step counts (same sampler family, guided: what the student must
beat), and the student at K, K/2, ..., 1 steps (guidance 1: one forward pass per step). Every
row samples the same labels from the same seeds and is scored by ``udiff eval``'s judge (built
on the teacher's run). Milliseconds per image are timed in this one run, teacher and student on
the same batch, so their ratio is the figure to read (issue 20: >= 4x at the student's K).
Both training times (teacher and distillation) are read from the runs' own ``run.json``.
Writes distill.json, distill.md and distill.png (samples at 1, 2, 4 and the teacher's steps).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from ..config import resolve
from ..errors import UdiffError
from ..evaluation.evaluate import Judge
from ..images import grid
from ..machine import machine
from ..run.directory import complete_run
from ..run.files import prepare_out, read_json, write_json
from ..run.layout import CONFIG, RUN_FILE
from ..sampling import load
from ..sampling.spec import SamplingSpec, teacher_spec
from . import tables

TIMING_BATCH = 16  # images per timed call: a server batch, small enough for 2 cores
SHOWN_LABELS = 4  # rows of the picture


def halvings(k: int) -> list[int]:
    """The step counts a K-step student samples in: K, K/2, ..., 1 (subsets of its schedule)."""
    out = [k]
    while out[-1] > 1:
        out.append(max(1, out[-1] // 2))
    return out


def ms_per_image(pipe, spec: SamplingSpec, repeats: int = 3) -> float:
    """The fastest of ``repeats`` calls on one batch (first call warms up), in ms per image."""
    labels = list(range(min(TIMING_BATCH, len(pipe.label_names))))
    per = max(1, TIMING_BATCH // len(labels))
    spec = spec.but(seed=0)
    pipe.sample_tensor(labels, per, spec)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        pipe.sample_tensor(labels, per, spec)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / (len(labels) * per)


def rows_for(student_dir: str | Path, judge: Judge, per_label: int, seed: int,
             progress: bool) -> tuple[list[dict], list[torch.Tensor]]:
    """Scored rows (teacher, teacher few-step, student per step count) and the pictures'
    columns (the first labels, same noise) for one student."""
    student, teacher = load(student_dir), judge.pipe
    cfg = student.config
    d = cfg.distill
    labels = range(len(judge.data.label_names))
    taught = teacher_spec(d).but(seed=seed)  # as the teacher sampled its pairs
    plan = [("teacher", teacher, taught)]
    plan += [("teacher", teacher, taught.but(sampler=student.sampling.sampler, steps=k))
             for k in halvings(d.steps)]
    plan += [("student", student, student.sampling.but(steps=k, seed=seed))
             for k in halvings(d.steps)]
    rows, columns = [], []
    for who, pipe, spec in plan:
        images, got = pipe.sample_tensor(labels, per_label, spec)
        scores, _ = judge.score(images, got)
        rows.append({"student": str(student_dir), "backbone": cfg.denoiser.name,
                     "trained_with": teacher.scheduler_name, "model": who,
                     "sampler": spec.sampler, "steps": spec.steps, "guidance": spec.guidance,
                     "interval": list(spec.interval) if spec.interval else None,
                     "label_accuracy": scores["label_accuracy"], "fid": scores["fid"],
                     "kid": scores["kid"], "diversity": scores["diversity"],
                     "ms_per_image": round(ms_per_image(pipe, spec), 2)})
        if who == "student" or len(rows) == 1:  # the pictures: teacher as it samples, student
            shown = torch.cat([torch.nonzero(got == k)[:4, 0] for k in range(SHOWN_LABELS)])
            columns.append(images[shown])  # [4 labels x 4, C, H, W], label-major
        if progress:
            r = rows[-1]
            print(f"udiff bench distill: {r['backbone']} {who} {r['steps']} steps: accuracy "
                  f"{r['label_accuracy']:.3f} FID {r['fid']:.1f} {r['ms_per_image']:.1f} ms per "
                  "image", file=sys.stderr, flush=True)
    return rows, columns


def run(student_dirs: list[str], out: str | Path, per_label: int = 30, seed: int = 0,
        overwrite: bool = False, progress: bool = True) -> dict:
    out, judges = Path(out), []
    for s in student_dirs:  # bad students fail before --out is touched
        cfg = resolve(complete_run(s) / CONFIG)
        if cfg.distill is None:
            raise UdiffError(f"run {s} is not a distilled student (its config has no [distill])")
        judges.append(Judge(cfg.distill.teacher, progress=progress, seed=seed))
    prepare_out(out, overwrite)
    rows, pictures, training = [], [], []
    for s, judge in zip(student_dirs, judges, strict=True):
        got, columns = rows_for(s, judge, per_label, seed, progress)
        teacher_ms = got[0]["ms_per_image"]
        for r in got:
            r["speedup"] = round(teacher_ms / r["ms_per_image"], 2)
        rows += got
        pictures.append(columns)
        training.append({"student": str(s), "teacher": str(judge.run_dir),
                         "teacher_seconds": wall_seconds(judge.run_dir),
                         "distill_seconds": wall_seconds(s)})
    result = {"machine": machine(), "per_label": per_label, "seed": seed,
              "fid_features": judges[0].features.name, "rows": rows, "training": training}
    write_json(out / "distill.json", result)
    (out / "distill.md").write_text(markdown(result))
    picture(pictures, rows, out / "distill.png")
    return result


def wall_seconds(run_dir: str | Path) -> float:
    """The wall time a run's training took, as its run.json recorded it."""
    return round(read_json(Path(run_dir) / RUN_FILE, f"run {run_dir}")["wall_seconds"], 1)


def markdown(result: dict) -> str:
    times = "; ".join(f"{Path(t['student']).name}: distillation {t['distill_seconds']:.0f} s, "
                      f"teacher's training {t['teacher_seconds']:.0f} s (run.json)"
                      for t in result.get("training", []))
    return tables.report("distill", result, f"ms per image timed in this run (batch "
                         f"{TIMING_BATCH}); speedup = the teacher's own sampling / this row. "
                         f"{times}", [
        ("backbone", lambda r: f"{r['backbone']} ({r['trained_with']})"),
        ("model", lambda r: r["model"]), ("sampler", lambda r: r["sampler"]),
        ("steps", lambda r: str(r["steps"])), ("guidance", lambda r: f"{r['guidance']:g}"),
        *tables.SCORES, ("ms per image", lambda r: f"{r['ms_per_image']:.1f}"),
        ("speedup", lambda r: f"{r['speedup']:.1f}x")])


def picture(pictures: list[list[torch.Tensor]], rows: list[dict], path: Path) -> None:
    """One band per student: the teacher's samples, then the student's at K ... 1 steps, same
    noise, a row per label."""
    from PIL import Image, ImageDraw

    bands = []
    for columns, student in zip(pictures, dict.fromkeys(r["student"] for r in rows),
                                strict=True):
        mine = [r for r in rows if r["student"] == student]
        titles = [f"teacher {mine[0]['steps']}"] + [f"student {r['steps']}" for r in mine
                                                     if r["model"] == "student"]
        sheets = [grid(c, rows=SHOWN_LABELS) for c in columns]
        w, h = sheets[0].size
        band = Image.new("RGB", (len(sheets) * (w + 8), h + 14), "white")
        draw = ImageDraw.Draw(band)
        for i, (sheet, title) in enumerate(zip(sheets, titles, strict=True)):
            band.paste(sheet.convert("RGB"), (i * (w + 8), 14))
            draw.text((i * (w + 8) + 2, 1), f"{mine[0]['backbone']}: {title}", fill="black")
        bands.append(band)
    out = Image.new("RGB", (max(b.width for b in bands), sum(b.height + 6 for b in bands)),
                    "white")
    y = 0
    for band in bands:
        out.paste(band, (0, y))
        y += band.height + 6
    out.save(path)
