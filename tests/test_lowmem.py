"""Issue 32: 8-bit AdamW (bitsandbytes) and a LoRA run's frozen base stored as int8/fp8
(optimum-quanto) or bf16 -- counted, trained, resumed exactly, sampled, served and merged; the
options' bad input one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from test_resume import SIGTERM_AT_STEP_5

import udiff
from udiff import plugins
from udiff.bench.cases import Case, batch, modules, training
from udiff.client import Client
from udiff.run.directory import load_component
from udiff.serve.loadtest import start_server
from udiff.training import optimizers
from udiff.weights import lora, quantize

pytest.importorskip("bitsandbytes")
pytest.importorskip("optimum.quanto")
BASE = ["--data", "digits", "--batch-size", "16", "--no-estimate", "--checkpoint-every", "3",
        "--keep-checkpoints", "1"]


def test_8bit_adamw_state_is_under_0_3x_fp32_and_counted_as_estimated():
    counted = {}
    for name in ("adamw", "adamw8bit"):
        case = Case("unet", "bench", 4, latent_size=8, optimizer=name)
        step = training(case)
        step.step(*batch(case))
        counted[name] = optimizers.state_bytes(step.optimizer.optimizer)  # accelerate's inner
        sizes = [p.numel() for p in step.params]
        assert counted[name] == optimizers.expected_bytes(name, sizes)  # what the estimate says
    ratio = counted["adamw8bit"] / counted["adamw"]
    print(f"8-bit AdamW state {counted['adamw8bit']} B / fp32 {counted['adamw']} B = {ratio:.3f}")
    assert ratio <= 0.3


def adapter_grads(precision: str, state: dict) -> dict[str, torch.Tensor]:
    """The adapters' gradients of one loss on the tiny UNet with its base stored at
    ``precision`` (the same fp32 weights each time; B drawn non-zero so A has gradients)."""
    case = Case("unet", "tiny", 4, latent_size=8)
    den, cond, _ = modules(case)
    den.load_state_dict(state)
    den = lora.add(quantize.freeze_base(den, precision), 8, None,
                   lora.targets(plugins.get("denoiser", "unet"), ["attention"]))
    torch.manual_seed(1)
    for n, p in den.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    x0, y = batch(case)
    t = torch.tensor([10, 300, 600, 900])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = den(x0, t, cond(y))
    out.float().pow(2).mean().backward()
    return {n: p.grad for n, p in den.named_parameters() if p.requires_grad}


# measured on this tiny UNet: int8 0.010, bf16 0.008, fp8 (e4m3: 3 mantissa bits) 0.066
TOLERANCE = {"int8": 0.03, "bf16": 0.03, "fp8": 0.15}


@pytest.mark.parametrize("precision", ["int8", "fp8", "bf16"])
def test_adapter_gradients_on_a_stored_base_match_the_fp32_base(precision):
    den, _, _ = modules(Case("unet", "tiny", 4, latent_size=8))
    state = {k: v.clone() for k, v in den.state_dict().items()}
    ref, got = adapter_grads("fp32", state), adapter_grads(precision, state)
    assert got.keys() == ref.keys() and len(ref) > 0
    err = (sum((got[k] - ref[k]).pow(2).sum() for k in ref)
           / sum(ref[k].pow(2).sum() for k in ref)).sqrt().item()
    print(f"{precision}: relative L2 error of the adapter gradients {err:.4f}")
    assert err <= TOLERANCE[precision]
    stored = quantize.freeze_base(modules(Case("unet", "tiny", 4))[0], precision)
    fp32 = quantize.weight_bytes(modules(Case("unet", "tiny", 4))[0])
    assert quantize.weight_bytes(stored) <= (0.3 if precision != "bf16" else 0.51) * fp32


def train_proc(out: Path, *argv: str, sigterm_at_5: bool = False) -> subprocess.Popen:
    code = SIGTERM_AT_STEP_5 if sigterm_at_5 else "import sys; from udiff.cli import main; " \
        "sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "train", *argv, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen) -> str:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return err


def all_weights(run: Path) -> dict[str, torch.Tensor]:
    return {f"{f.parent.name}/{k}": v for f in sorted(run.glob("*/*.safetensors"))
            for k, v in safetensors.torch.load_file(f).items()}


@pytest.fixture(scope="module")
def base(tiny_run, tmp_path_factory) -> Path:
    """A diffusers UNet folder to train LoRA adapters on (the tiny run exported)."""
    out = tmp_path_factory.mktemp("lowmem") / "export"
    assert udiff.cli.main(["export", str(tiny_run), "--out", str(out)]) == 0
    return out / "unet"


@pytest.mark.acceptance  # ~70 s, four training processes: after the suite (.ci/run)
@pytest.mark.parametrize("kind", ["full", "lora-int8"])
def test_resume_with_8bit_adamw_equals_uninterrupted(kind, tiny_run, base, tmp_path):
    argv = [*BASE, "--optimizer", "adamw8bit", "--max-steps", "12"]
    argv += ["--backbone", "dit", "--preset", "tiny", "--autoencoder-steps", "10"] \
        if kind == "full" else ["--backbone", "unet", "--autoencoder", str(tiny_run),
                                "--init-from", str(base), "--lora-rank", "4",
                                "--base-precision", "int8", "--lr", "5e-3"]
    finished(train_proc(tmp_path / "ref", *argv))
    cut = train_proc(tmp_path / "cut", *argv, sigterm_at_5=True)
    _, err = cut.communicate(timeout=600)
    assert cut.returncode != 0 and "continue with --resume" in err, err[-1500:]
    assert "continuing from" in finished(train_proc(tmp_path / "cut", *argv, "--resume"))
    ours, ref = all_weights(tmp_path / "cut"), all_weights(tmp_path / "ref")
    assert ours.keys() == ref.keys()
    assert [k for k in ref if not torch.equal(ours[k], ref[k])] == []
    # the 8-bit state is what the checkpoint holds: uint8 moments (the tiny LoRA's adapters are
    # all under bitsandbytes' 4096-element minimum: 32-bit state)
    (ckpt,) = (tmp_path / "cut" / "checkpoints").iterdir()
    state = safetensors.torch.load_file(ckpt / "optimizer.safetensors")
    assert any(v.dtype == torch.uint8 for v in state.values()) == (kind == "full")


@pytest.mark.acceptance  # ~30 s with a server process; the suite's 15 minutes are full
def test_an_int8_base_lora_run_trains_samples_serves_and_merges(cli, tiny_run, base, tmp_path):
    out = tmp_path / "lora"
    code, _, err = cli("train", *BASE, "--backbone", "unet", "--autoencoder", tiny_run,
                       "--init-from", base, "--lora-rank", "4", "--max-steps", "30", "--lr",
                       "5e-3", "--base-precision", "int8", "--out", out)
    assert code == 0, err
    meta = json.loads((out / "denoiser" / "config.json").read_text())
    assert meta["lora"]["base_precision"] == "int8"
    pipe = udiff.load(out)  # sampled as trained: the base int8, the adapters fp32
    assert quantize.quantized_layers(pipe.denoiser) > 0
    assert all(p.dtype == torch.float32 for n, p in pipe.denoiser.named_parameters()
               if "lora_" in n)
    quantized, _ = pipe.sample_tensor([0, 1], per_label=2, steps=5, seed=3)
    code, _, err = cli("sample", out, "--labels", "0,1", "--per-label", "2", "--steps", "5",
                       "--out", tmp_path / "s.png")
    assert code == 0 and (tmp_path / "s.png").stat().st_size > 0, err

    # merged in fp32: the adapter folded into the base file's own weights
    code, _, err = cli("export", out, "--merge-lora", "--out", tmp_path / "merged")
    assert code == 0, err
    from diffusers import UNet2DConditionModel

    from udiff.run.directory import load_component

    merged = UNet2DConditionModel.from_pretrained(tmp_path / "merged" / "unet").eval()
    full, _ = load_component(out / "denoiser", "denoiser", pipe.context, base_precision="fp32")
    cond = pipe.conditioner(torch.tensor([0, 1]))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 900])
    with torch.no_grad():
        want, q = full.eval()(x, t, cond), pipe.denoiser(x, t, cond)
        got = merged(x, t, encoder_hidden_states=cond.tokens, class_labels=cond.pooled).sample
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # and the int8 base it trained on is close to that fp32 one (its rounding only)
    assert (q - want).abs().max() < 0.05 * want.abs().max()

    proc, port = start_server([out], "--max-images", "4")
    try:
        result = Client(f"http://127.0.0.1:{port}").generate([1], run=out.name, per_label=2,
                                                            steps=5, seed=3)
        assert len(result.images) == 2 and result.images[0].size == (16, 16)
    finally:
        proc.terminate()
        proc.wait(60)
    assert quantized.std() > 0


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_a_frozen_pretrained_autoencoder_is_stored_at_the_base_precision(cli, tmp_path,
                                                                         precision):
    """--autoencoder-from without LoRA: the latents and the run's file stay the source's fp32,
    the autoencoder stage 2 and sampling hold is int8 (a quarter of the bytes) or bf16 (half),
    its decodings within the precision's rounding; export writes the fp32 source back."""
    from diffusers import AutoencoderKL
    from test_pretrained import RUN, layout

    source = layout(AutoencoderKL).eval()
    source.save_pretrained(tmp_path / "vae")
    out = tmp_path / "run"
    code, _, err = cli(*RUN, "--backbone", "unet", "--preset", "tiny", "--no-estimate",
                       "--autoencoder-from", tmp_path / "vae", "--base-precision", precision,
                       "--max-steps", "2", "--out", out)
    assert code == 0, err
    meta = json.loads((out / "autoencoder" / "config.json").read_text())
    assert meta["base_precision"] == precision
    saved = safetensors.torch.load_file(str(out / "autoencoder" / "model.safetensors"))
    want = {f"vae.{k}": v for k, v in source.state_dict().items()}
    assert all(torch.equal(saved[k], v) for k, v in want.items())  # the file: fp32, untouched
    pipe = udiff.load(out)
    stored, (full, _) = pipe.autoencoder, load_component(out / "autoencoder", "autoencoder",
                                                          pipe.context, base_precision="fp32")
    ratio = quantize.weight_bytes(stored) / quantize.weight_bytes(full)
    assert ratio <= {"int8": 0.3, "bf16": 0.51}[precision], ratio
    if precision == "int8":
        assert quantize.quantized_layers(stored) > 0
    z = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        got, ref = stored.decode(z), source.decode(z).sample
    assert got.dtype == torch.float32
    err = ((got - ref).norm() / ref.norm()).item()
    assert 0 < err <= 0.05, err
    code, _, err = cli("export", out, "--out", tmp_path / "exported")
    assert code == 0, err
    vae = AutoencoderKL.from_pretrained(tmp_path / "exported" / "vae")
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in source.state_dict().items())


def test_bad_memory_options_are_one_line_and_write_nothing(cli, tiny_run, base, tmp_path):
    out = tmp_path / "never"
    lora_run = ["train", *BASE, "--backbone", "unet", "--autoencoder", tiny_run, "--init-from",
                base, "--lora-rank", "4", "--max-steps", "3"]
    cli.fails("train", *BASE, "--backbone", "dit", "--preset", "tiny", "--base-precision",
              "int8", "--out", out, match="--base-precision int8 stores frozen weights: it "
              "needs a LoRA run (--lora-rank R --init-from PATH) or a frozen --autoencoder-from")
    cli.fails(*lora_run, "--base-precision", "bf16", "--out", out,
              match="add --mixed-precision bf16")
    cli.fails(*lora_run, "--optimizer", "adamw8bit", "--fsdp", "--out", out,
              match="--optimizer adamw8bit does not shard")
    cli.fails(*lora_run, "--optimizer", "sgd", "--out", out, match="--optimizer")
    assert not out.exists()
    # resuming with another optimizer (its state could not be read back): refused, untouched
    run = tmp_path / "run"
    code, _, err = cli(*lora_run, "--out", run)
    assert code == 0, err
    before = sorted(p.name for p in run.rglob("*"))
    line = cli.fails(*lora_run, "--optimizer", "adamw8bit", "--max-steps", "6", "--resume",
                     "--out", run, match="this differs too")  # a longer run, other state
    assert "optimizer" in line
    assert sorted(p.name for p in run.rglob("*")) == before


def test_a_missing_library_names_the_extra(tmp_path):
    """An install without the lowmem extra: both options say which extra to install."""
    hide = tmp_path / "hidden"
    for name in ("bitsandbytes", "optimum"):
        (hide / name).mkdir(parents=True)
        (hide / name / "__init__.py").write_text(f"raise ImportError('no {name}')\n")
    env = dict(os.environ, PYTHONPATH=f"{hide}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    for flag, value, lib in (("--optimizer", "adamw8bit", "bitsandbytes"),
                             ("--base-precision", "int8", "optimum-quanto")):
        proc = subprocess.run([sys.executable, "-m", "udiff", "train", "--data", "digits",
                               "--lora-rank", "4", "--init-from", str(tmp_path), flag, value,
                               "--out", str(tmp_path / "x")], capture_output=True, text=True,
                              env=env, timeout=300)
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-1500:]
        assert f"{flag} {value} needs {lib}: pip install 'udiff-core[lowmem]'" in lines[0]
    assert not (tmp_path / "x").exists()
