"""Issue 28: one sampling spec (a run's `[sampling]` is a complete default), run files read once
by `udiff eval` and `udiff serve`, commands from plugins, the benchmark harness behind its extra."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import tomllib

import numpy as np
import pytest
import tomli_w
from PIL import Image

import udiff
from udiff import plugins
from udiff.errors import UdiffError
from udiff.hookspecs import hookimpl
from udiff.sampling.spec import SamplingSpec

OWN = {"scheduler": "ddim", "steps": 3, "guidance": 2.5, "guidance_interval": [0.3, 0.9],
       "guidance_rescale": 0.5}


@pytest.fixture
def own_sampling(tiny_run, tmp_path):
    """A copy of the tiny run whose config's [sampling] names every field."""
    run = tmp_path / "own"
    shutil.copytree(tiny_run, run)
    cfg = tomllib.loads((run / "config.toml").read_text())
    cfg["sampling"] = OWN
    (run / "config.toml").write_text(tomli_w.dumps(cfg))
    return run


def test_a_runs_sampling_table_is_a_complete_default(tiny_run, own_sampling, cli, tmp_path):
    pipe = udiff.load(own_sampling)
    assert pipe.sampling == SamplingSpec("ddim", 3, 2.5, (0.3, 0.9), 0.5, 0)
    # the defaults of one run are the explicit choices on another with the same weights
    told = udiff.load(tiny_run).spec(sampler="ddim", steps=3, guidance=2.5, interval=(0.3, 0.9),
                                      rescale=0.5)
    assert told == pipe.sampling and told != udiff.load(tiny_run).sampling
    assert (pipe.sample_tensor([1, 4], 2)[0] == udiff.load(tiny_run).sample_tensor(
        [1, 4], 2, told)[0]).all()
    # `udiff sample` without flags, and with each flag naming the same values
    cli("sample", own_sampling, "--labels", "1", "--per-label", "2", "--out", tmp_path / "a.png")
    cli("sample", tiny_run, "--labels", "1", "--per-label", "2", "--scheduler", "ddim",
        "--steps", "3", "--guidance", "2.5", "--guidance-interval", "0.3,0.9",
        "--guidance-rescale", "0.5", "--out", tmp_path / "b.png")
    a, b = (np.asarray(Image.open(tmp_path / f"{x}.png")) for x in "ab")
    assert a.shape == b.shape and (a == b).all()
    # an override replaces one field and keeps the rest
    assert pipe.spec(steps=5) == SamplingSpec("ddim", 5, 2.5, (0.3, 0.9), 0.5, 0)
    with pytest.raises(UdiffError, match="cannot sample"):
        pipe.spec(sampler="flow")  # the other objective family


def test_the_server_resolves_a_request_over_the_runs_spec(own_sampling):
    pytest.importorskip("fastapi")
    from udiff.serve.runs import load
    from udiff.serve.schema import GenerateRequest, Limits

    served = load([own_sampling])["own"]
    work = served.work(GenerateRequest(labels=[0], seed=4), Limits())
    assert work.spec == SamplingSpec("ddim", 3, 2.5, (0.3, 0.9), 0.5, 4)
    work = served.work(GenerateRequest(labels=[0], seed=4, guidance_rescale=0.0, steps=2),
                       Limits())
    assert work.spec == SamplingSpec("ddim", 2, 2.5, (0.3, 0.9), 0.0, 4)


# Counts every read of a file under the run: Python's `open` (audit hook) and safetensors'
# readers (they open files from Rust, unseen by the hook).
COUNT = """
import collections, json, sys
from pathlib import Path
import safetensors.torch

run = Path(sys.argv[1]).resolve()
reads = collections.Counter()
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, Path)) and "r" in str(args[1] or "r"):
        path = Path(args[0]).resolve()
        if run in path.parents:
            reads[str(path.relative_to(run))] += 1
sys.addaudithook(hook)
for name in ("load_file", "load_model", "safe_open"):
    original = getattr(safetensors.torch, name, None)
    if original is None:
        continue
    def wrapped(*a, _original=original, **k):
        path = Path(a[1] if len(a) > 1 and not isinstance(a[0], (str, Path)) else a[0]).resolve()
        if run in path.parents:
            reads[str(path.relative_to(run))] += 1
        return _original(*a, **k)
    setattr(safetensors.torch, name, wrapped)
"""


def reads_of(script: str, *argv) -> dict:
    proc = subprocess.run([sys.executable, "-c", COUNT + textwrap.dedent(script), *map(str, argv)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_udiff_eval_reads_each_run_file_once(tiny_run, tmp_path):
    reads = reads_of("""
        from udiff.cli import main
        assert main(["eval", str(run), "--per-label", "2", "--out", sys.argv[2]]) == 0
        print(json.dumps(reads))
    """, tiny_run, tmp_path / "m.json")
    assert {"run.json", "config.toml", "denoiser/model.safetensors",
            "autoencoder/model.safetensors", "scheduler/config.json"} <= set(reads)
    assert {k: v for k, v in reads.items() if v != 1} == {}


def test_udiff_serve_reads_each_run_file_once_and_a_request_none(tiny_run, tmp_path):
    pytest.importorskip("fastapi")
    twin = tmp_path / "twin"  # a second run with the same files: its modules are shared
    shutil.copytree(tiny_run, twin)
    reads = reads_of("""
        from udiff.serve.jobs import Job
        from udiff.serve.runs import load
        from udiff.serve.schema import GenerateRequest, Limits
        from udiff.serve.worker import Worker
        runs = load([run, sys.argv[2]])
        loaded = dict(reads)
        reads.clear()
        for name in runs:
            job = Job(runs[name].work(GenerateRequest(labels=[0, 1], seed=1), Limits()))
            Worker(runs, None).execute([job])
            assert job.status == "succeeded", job.error
        print(json.dumps({"loaded": loaded, "request": dict(reads)}))
    """, tiny_run, twin)
    assert reads["request"] == {}
    assert {"run.json", "config.toml", "denoiser/model.safetensors"} <= set(reads["loaded"])
    assert {k: v for k, v in reads["loaded"].items() if v != 1} == {}


def test_a_student_loads_its_teacher_once_and_encodes_no_data(tiny_run, tmp_path):
    reads = reads_of("""
        from udiff.cli import main
        assert main(["distill", str(run), "--steps", "2", "--pairs", "16", "--max-steps", "2",
                     "--batch-size", "16", "--out", sys.argv[2]]) == 0
        print(json.dumps(reads))
    """, tiny_run, tmp_path / "student")
    assert reads["autoencoder/model.safetensors"] == 1  # the teacher's, taken by the student
    assert reads["conditioner/model.safetensors"] == 1
    # the denoiser: loaded once; its SHA-256 taken for the student's config and checked again
    # before the pairs are sampled (a teacher that changed in between is refused)
    assert reads["denoiser/model.safetensors"] == 3
    assert (tmp_path / "student" / "pairs.safetensors").is_file()
    assert not (tmp_path / "student" / "latents.safetensors").exists()  # no data encoded


def test_a_reused_autoencoder_is_loaded_once_with_init_from(tiny_run, tmp_path):
    reads = reads_of("""
        from udiff.cli import main
        out = Path(sys.argv[2])
        assert main(["export", str(run), "--out", str(out / "base")]) == 0
        reads.clear()
        assert main(["train", "--data", "digits", "--batch-size", "16", "--backbone", "unet",
                     "--autoencoder", str(run), "--init-from", str(out / "base" / "unet"),
                     "--max-steps", "2", "--out", str(out / "run")]) == 0
        print(json.dumps(reads))
    """, tiny_run, tmp_path)
    assert reads["autoencoder/model.safetensors"] == 1
    assert "denoiser/model.safetensors" not in reads  # --init-from is the exported folder


class Hello:
    """A command from a plugin: `udiff hello NAME`."""

    NAME, HELP = "hello", "say hello"

    @staticmethod
    def add_arguments(p):
        p.add_argument("name", help="who")

    @staticmethod
    def main(args):
        print(f"hello {args.name}")
        return 0


class Commands:
    @hookimpl
    def register_commands(self, register):
        register(Hello)


class Clashing:
    @hookimpl
    def register_commands(self, register):
        command = type("Train", (Hello,), {"NAME": "train"})
        register(command)


class Broken:
    @hookimpl
    def register_commands(self, register):
        register(object())  # no NAME, HELP, add_arguments, main


class Failing:
    @hookimpl
    def register_commands(self, register):
        command = type("Boom", (Hello,), {"NAME": "boom", "main": staticmethod(
            lambda args: 1 / 0)})
        register(command)


def test_a_plugin_adds_a_command_and_a_broken_one_stops_nothing(cli):
    plugins.register_plugin(Commands(), "udiff-hello")
    plugins.register_plugin(Failing(), "udiff-boom")
    code, out, _ = cli("hello", "world")
    assert code == 0 and "hello world" in out
    listing = {p["name"]: p for p in json.loads(cli("plugins", "--json")[1])}
    assert listing["udiff-hello"]["provides"] == {"command": ["hello"]}
    line = cli.fails("boom", "x", match="command 'boom' from plugin udiff-boom failed")
    assert "ZeroDivisionError" in line
    plugins.reset()
    plugins.register_plugin(Clashing(), "udiff-clash")
    plugins.register_plugin(Broken(), "udiff-broken")
    code, out, err = cli("plugins", "--json")  # the built-in commands are untouched
    assert code == 0 and json.loads(out)
    assert "plugin udiff-broken disabled" in err and "lacks NAME" in err
    assert "command 'train' from plugin udiff-clash not added" in err
    code, _, err = cli("train", "--data", "nope", "--out", "x")  # still udiff's own train
    assert code == 2 and "nope" in err.splitlines()[-1]


def test_bench_perf_without_its_extra_is_one_line(tmp_path):
    code = ("import sys; sys.modules['pytest_benchmark'] = None; from udiff.cli import main; "
            f"sys.exit(main(['bench', 'perf', '--quick', '--out', {str(tmp_path / 'b')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "udiff: error: udiff bench perf needs the benchmark harness (pytest_benchmark is not "
        "installed): pip install 'udiff-core[bench]'"]
    assert not (tmp_path / "b").exists()


def test_the_core_runtime_needs_no_pytest():
    from importlib.metadata import requires

    runtime = [r for r in requires("udiff-core") if "extra ==" not in r]
    assert not [r for r in runtime if r.startswith("pytest")]
    bench = [r.split(";")[0].strip() for r in requires("udiff-core") if 'extra == "bench"' in r]
    assert {r.split(">")[0] for r in bench} == {"pytest", "pytest-benchmark"}


@pytest.mark.parametrize("argv, match", [
    ((), "required: perf|serve|guidance|distill"),
    (("nope", "--out", "x"), "invalid choice: 'nope'"),
])
def test_bench_without_a_known_sub_command_is_one_line(cli, argv, match):
    cli.fails("bench", *argv, match=match)
