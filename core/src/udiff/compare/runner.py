"""``udiff compare`` from start to end: the plan (or the one --out holds), the arms' ``udiff
train`` lines run one after another (each in its own process, exactly as commands.txt says),
then the collection: every arm judged by one judge, the table, the rule, the files."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from ..config import resolve
from ..errors import UdiffError
from ..evaluation.evaluate import Judge
from ..machine import machine
from ..run.files import atomic_write, read_json, write_json
from ..run.layout import RUN_FILE
from ..training.setup import say
from . import decision, measure
from .picture import decision_png
from .plan import MIN_STEPS, PLAN, Plan, Settings, base_config, differences, read, write

MEASURED = "measured"  # OUT/measured/<arm>.json and .png: one arm's numbers and samples


def prepare(s: Settings, out: Path, resume: bool) -> Plan:
    """The plan --out holds (same settings, --resume), or a new one; nothing is written before
    every check has passed."""
    if (out / PLAN).is_file():
        old = read(out)
        diff = differences(old.settings, s)
        if diff:
            raise UdiffError(f"--out {out} holds another comparison (it differs in: "
                             f"{', '.join(diff)}): choose another --out")
        if not resume:
            raise UdiffError(f"--out {out} holds this comparison already: --resume continues "
                             "it, --collect builds its table")
        return old
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UdiffError(f"--out {out} is not an empty folder and holds no comparison: choose "
                         "another --out")
    base = base_config(s)
    shape = measure.shape(base, s.autoencoder_run)
    probe = None
    if s.budget_minutes is not None:
        probe = {b: measure.step_seconds(b, s.presets[b], shape) for b in s.backbones}
        steps = {b: int(s.budget_minutes * 60 / sec) for b, sec in probe.items()}
    else:
        n = s.budget_steps or resolve(None, base).training.max_steps
        steps = dict.fromkeys(s.backbones, n)
    short = {b: n for b, n in steps.items() if n < MIN_STEPS}
    if short:
        b, n = next(iter(short.items()))
        how = (f"in {s.budget_minutes:g} min ({probe[b]:.3f} s per step here)"
               if probe else "")
        raise UdiffError(f"budget too small: {b} would train {n} steps {how}; one validation "
                         f"interval is {MIN_STEPS} steps".replace("  ", " "))
    out.mkdir(parents=True, exist_ok=True)
    return write(out, s, base, steps, probe)


def train_arms(plan: Plan) -> None:
    """Each line of commands.txt, in order: a finished run is kept, a started one resumes."""
    for i, (name, argv) in enumerate(plan.lines, 1):
        run = plan.out / name
        if (run / RUN_FILE).is_file():
            say(f"compare {i}/{len(plan.lines)}: {name} finished before, kept")
            continue
        again = run.exists()
        say(f"compare {i}/{len(plan.lines)}: {name}: {'resuming' if again else 'training'}")
        cmd = [sys.executable, "-m", "udiff", *argv[1:], *(["--resume"] if again else [])]
        code = subprocess.run(cmd).returncode
        if code != 0:
            raise UdiffError(f"arm {name} stopped (exit {code}; its output is above): "
                             "udiff compare --resume continues from its checkpoint")


def fingerprint(run: Path) -> str:
    return hashlib.sha256((run / RUN_FILE).read_bytes()).hexdigest()


def collect(plan: Plan, progress: bool = True) -> dict:
    """Judge every finished arm (once: an arm's numbers are kept while its run is unchanged),
    rank, write decision.md, decision.json, decision.png."""
    from PIL import Image

    s, out = plan.settings, plan.out
    for arm in plan.arms:
        measure.check_complete(out / arm.name, arm.name)
    shape = measure.shape(plan.base, str(plan.autoencoder_dir))
    (out / MEASURED).mkdir(exist_ok=True)
    judge, measured = None, {}
    for i, arm in enumerate(plan.arms, 1):
        run, saved = out / arm.name, out / MEASURED / f"{arm.name}.json"
        if saved.is_file() and read_json(saved, "measurement").get("run") == fingerprint(run):
            measured[arm.name] = read_json(saved, "measurement")
            continue
        say(f"collect {i}/{len(plan.arms)}: judging {arm.name}")
        judge = Judge(run, progress=progress, reference="held") if judge is None else \
            judge.for_run(run)
        numbers, picture = measure.measure(judge, arm, run, s.per_label, progress, shape)
        numbers["run"] = fingerprint(run)
        picture.save(saved.with_suffix(".png"))
        write_json(saved, numbers)
        measured[arm.name] = numbers
    rows = []
    for b in s.backbones:
        say(f"collect: {b}'s memory at {s.target_image_size} px")
        rows.append(decision.summarise(
            b, [measured[a.name] for a in plan.arms if a.backbone == b],
            measure.at_target(b, s.presets[b], s, shape), measure.largest_fitting(b, s, shape),
            measure.options_at_target(b, s.presets[b], s, shape)))
    order, why = decision.rank(rows)
    settings = s.as_dict() | {"target_batch": s.target_batch or shape.batch}
    settings.pop("config")
    sizes = [r["parameters"] for r in rows]
    gap = max(sizes) / min(sizes) - 1
    matched = (f"parameters within {gap:.0%} of each other" + ("" if gap <= 0.10 else
               " (NOT matched within 10%: name matched presets with --preset)"))
    result = {"recommendation": order[0], "ranking": order, "why": why, "rule": decision.RULE,
              "matched_parameters": gap <= 0.10, "parameter_gap": round(gap, 4),
              "backbones": {r["backbone"]: r for r in rows}, "arms": measured,
              "settings": settings, "machine": machine()}
    text = decision.markdown(rows, order, why, settings, machine(), matched)
    atomic_write(out / "decision.md", lambda p: Path(p).write_text(text))
    pictures = {b: Image.open(out / MEASURED / f"{next(a.name for a in plan.arms if a.backbone == b)}.png")
                for b in s.backbones}
    decision_png(rows, order, pictures, s.target_memory, out / "decision.png")
    write_json(out / "decision.json", result)
    say(f"recommendation: {order[0]} ({why[order[0]]}); {out / 'decision.md'}")
    return result


def compare(s: Settings, out: Path, resume: bool = False, plan_only: bool = False,
            progress: bool = True) -> dict | None:
    plan = prepare(s, out, resume)
    if plan_only:
        return None
    train_arms(plan)
    return collect(plan, progress)


def collect_only(out: Path, progress: bool = True) -> dict:
    if not (out / PLAN).is_file():
        raise UdiffError(f"--collect: {out} holds no comparison ({PLAN}): run udiff compare "
                         "--plan-only --out there first")
    plan = read(out)
    finished = [a for a in plan.arms if (out / a.name / RUN_FILE).is_file()]
    if not finished:
        raise UdiffError(f"--collect: no arm in {out} has finished: run the lines of "
                         f"{out / 'commands.txt'} first")
    return collect(plan, progress)
