"""`udiff compare`: the memory estimate against torch.profiler, the ranking rule on hand-made
results, the bad inputs, and (acceptance) a real two-backbone comparison killed and resumed,
equal to --plan-only + its commands + --collect."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_backbone_doc import documented_source

from udiff.bench.cases import Case
from udiff.bench.footprint import estimate, profiled
from udiff.compare import decision, measure
from udiff.compare.plan import Settings

TINY_CONFIG = """[training]
autoencoder_steps = 20
batch_size = 16
validate_per_label = 2
checkpoint_every = 25
"""


@pytest.mark.parametrize("backbone", ["unet", "dit", "flux"])
def test_memory_estimate_is_within_10_percent_of_the_profiler(backbone):
    """Fake tensors (nothing allocated) against the real step's allocations, small and bench
    presets at two batch sizes, plus bf16 with gradient checkpointing."""
    cases = [Case(backbone, p, b) for p in ("small", "bench") for b in (8, 32)]
    cases.append(Case(backbone, "small", 8, mixed_precision="bf16", gradient_checkpointing=True))
    for case in cases:
        est, real = estimate(case), profiled(case)
        assert abs(est.peak / real - 1) <= 0.10, (case.id, est.peak, real)
        parts = est.as_dict()
        assert parts["optimizer"] == 2 * parts["gradients"]  # AdamW: two moments per trained weight
        assert parts["activations"] > 0
    # batch grows activations, not the training state
    small, big = estimate(cases[0]), estimate(cases[1])
    assert big.parameters == small.parameters and big.activations > small.activations


def test_the_first_memory_option_that_fits_the_target():
    """Each option estimated on fake tensors at the target: each saves what it says, and the
    decision table names the first (in the order a user reaches for them) that fits."""
    st = Settings(data="digits", backbones=("unet",), presets={}, target_batch=4,
                  target_memory=30 * 2**20)
    options = measure.options_at_target("unet", "tiny", st, measure.Shape(4, 4, 10, 16))
    assert list(options) == list(measure.OPTIONS)
    peak = {name: o["peak"] for name, o in options.items()}
    assert peak["8-bit AdamW"] < peak["AdamW"] and peak["LoRA, fp32 base"] < peak["AdamW"]
    assert peak["LoRA, int8 base"] < peak["LoRA, fp32 base"]
    assert peak["paged 8-bit AdamW + checkpointing"] < peak["8-bit AdamW + checkpointing"]
    first = next(name for name, o in options.items() if o["fits"])
    assert first == "8-bit AdamW + checkpointing" and not options["8-bit AdamW"]["fits"]
    r = row("unet", 5.0) | {"options": options, "largest_fitting": None, "seeds": 1,
                            "loss_spikes": 0, "skipped_nonfinite": 0, "steps": 1,
                            "train_minutes": 0.1, "kid": 0.0, "diversity": 0.1,
                            "near_copy_share": 0.0, "sampling_ms_per_image": 1.0,
                            "peak_memory_here_mib": 1.0, "parameters": 1, "preset": "tiny"}
    settings = st.as_dict() | {"target_batch": 4}
    line = next(x for x in decision.table([r], ["unet"], settings) if "memory option" in x)
    assert f"| {first} (" in line


def row(backbone, fid, acc=0.95, step_ms=10.0, fits=True, spread=None):
    return {"backbone": backbone, "fid": fid, "label_accuracy": acc, "step_ms": step_ms,
            "target": {"fits": fits, "peak": 1}, "fid_spread": spread}


def test_the_ranking_rule_on_hand_made_results():
    # the lowest FID does not win when its training does not fit the target
    order, why = decision.rank([row("a", 5.0, fits=False), row("b", 9.0), row("c", 20.0)])
    assert order == ["b", "c", "a"] and "not fit" in why["a"]
    # accuracy more than 0.05 below the best ranks after the rest, whatever its FID
    order, why = decision.rank([row("a", 5.0, acc=0.80), row("b", 9.0, acc=0.97),
                                row("c", 12.0, acc=0.95)])
    assert order == ["b", "c", "a"] and "below the best" in why["a"]
    # FIDs within 10% tie: the faster step wins; outside 10% the lower FID wins
    assert decision.rank([row("a", 10.0, step_ms=30), row("b", 10.8, step_ms=10)])[0] == ["b", "a"]
    order, why = decision.rank([row("a", 10.0, step_ms=30), row("b", 11.5, step_ms=10)])
    assert order == ["a", "b"]
    assert why["a"].startswith("lowest FID (10.0)") and "above the arms before it" in why["b"]
    # the seed spread widens the tie
    assert decision.rank([row("a", 10.0, step_ms=30, spread=2.0),
                          row("b", 11.5, step_ms=10, spread=2.0)])[0] == ["b", "a"]


def test_bad_input_is_one_line_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "cmp"
    base = ("compare", "--data", "digits", "--out", out)
    cli.fails(*base, "--backbones", "unet", match="at least two backbones")
    cli.fails(*base, "--backbones", "unet,nope", match="unknown denoiser 'nope'")
    cli.fails(*base, "--backbones", "unet,dit", "--budget-steps", "10",
              match="budget too small: unet would train 10 steps")
    cli.fails(*base, "--backbones", "unet,dit", "--preset", "dit=huge", match="no preset 'huge'")
    cli.fails("compare", "--out", out, "--collect", match="holds no comparison")
    assert not out.exists()
    # a plan, then another comparison into the same --out: refused, the plan untouched
    code, text, err = cli(*base, "--backbones", "unet,dit", "--budget-steps", "50", "--plan-only")
    assert code == 0, err
    lines = [x for x in text.splitlines() if x.startswith("udiff train")]
    assert len(lines) == 3 and "autoencoder" in lines[0]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    cli.fails(*base, "--backbones", "unet,flux", "--budget-steps", "50",
              match="holds another comparison (it differs in: backbones, presets)")
    cli.fails(*base, "--backbones", "unet,dit", "--budget-steps", "50",
              match="holds this comparison already: --resume")
    cli.fails("compare", "--out", out, "--collect", match="no arm in")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_third_party_backbone_joins_the_plan(cli, install_plugin, tmp_path):
    """The documented backbone is an arm like the built-ins: its config, its line, its memory."""
    install_plugin("udiff-convnet", "udiff_convnet", documented_source())
    out = tmp_path / "cmp"
    code, text, err = cli("compare", "--data", "digits", "--out", out, "--backbones",
                          "unet,convnet", "--budget-steps", "60", "--plan-only")
    assert code == 0, err
    assert "--out " + str(out / "convnet-seed0") in text
    cfg = (out / "configs" / "convnet-seed0.toml").read_text()
    assert 'name = "convnet"' in cfg and "max_steps = 60" in cfg
    from udiff.compare import measure
    from udiff.compare.plan import read

    plan = read(out)
    shape = measure.shape(plan.base, None)
    got = measure.at_target("convnet", plan.settings.presets["convnet"], plan.settings, shape)
    assert got["peak"] > got["parameters"] > 0 and got["fits"] is True


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def udiff(*argv, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "udiff", *map(str, argv)],
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def quality(result: dict) -> dict:
    return {"ranking": result["ranking"], **{
        name: {k: arm[k] for k in ("fid", "kid", "label_accuracy", "diversity", "steps",
                                   "parameters", "near_copy_share")}
        for name, arm in result["arms"].items()}}


@pytest.mark.acceptance
def test_a_comparison_killed_and_resumed_equals_plan_only_and_collect(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_CONFIG)
    args = ["--data", "digits", "--backbones", "unet,dit", "--preset", "tiny",
            "--budget-steps", "100", "--per-label", "4", "--config", config]
    one = tmp_path / "one"
    proc = udiff("compare", *args, "--out", one)
    checkpoints = one / "dit-seed0" / "checkpoints"
    deadline = time.time() + 400
    while not any(checkpoints.glob("*/COMPLETE")) and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)  # the compare and the arm it runs, at once
    proc.wait()
    assert (one / "unet-seed0" / "run.json").is_file()
    assert not (one / "dit-seed0" / "run.json").exists()
    kept = sha(one / "unet-seed0" / "denoiser" / "model.safetensors")
    again = udiff("compare", *args, "--out", one, "--resume")
    log = again.communicate(timeout=600)[0]
    assert again.returncode == 0, log
    assert "unet-seed0 finished before, kept" in log and "dit-seed0: resuming" in log
    assert "--resume: continuing from" in log and "-denoiser-" in log  # from its checkpoint
    assert sha(one / "unet-seed0" / "denoiser" / "model.safetensors") == kept
    for name in ("decision.md", "decision.json", "decision.png"):
        assert (one / name).stat().st_size > 0
    first = json.loads((one / "decision.json").read_text())
    assert first["recommendation"] in ("unet", "dit") and first["rule"] == decision.RULE
    table = (one / "decision.md").read_text()
    assert "Recommendation (rank)" in table and "Memory on the target" in table
    assert "First memory option that fits the target" in table

    # the same comparison, spread out: --plan-only, each line on its own, --collect
    two = tmp_path / "two"
    plan = udiff("compare", *args, "--out", two, "--plan-only")
    lines = [x for x in plan.communicate(timeout=300)[0].splitlines() if x.startswith("udiff ")]
    assert plan.returncode == 0 and len(lines) == 3
    for line in lines:
        step = udiff(*shlex.split(line)[1:])
        assert step.wait(timeout=600) == 0, step.stdout.read()
    collect = udiff("compare", "--out", two, "--collect")
    assert collect.wait(timeout=600) == 0, collect.stdout.read()
    second = json.loads((two / "decision.json").read_text())
    assert quality(second) == quality(first)
