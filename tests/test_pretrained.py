"""Starting from pretrained weights the tests make themselves (no downloads): --autoencoder-from,
--init-from for every backbone, LoRA through peft, and the bad inputs of that path."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, VQModel
from safetensors.torch import load_file, save_file

import udiff
from udiff import Context, plugins

RUN = ["train", "--data", "digits", "--batch-size", "16", "--scheduler", "ddpm"]  # as DiT's
LATENT = Context(image_channels=1, image_size=16, num_labels=10, latent_channels=4, latent_size=8)


def installed(name: str) -> None:
    if name not in plugins.registry().components["denoiser"]:
        pytest.skip(f"udiff-{name} is not installed")


def layout(cls, **extra):
    torch.manual_seed(0)
    return cls(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
               layers_per_block=1, latent_channels=4, norm_num_groups=8, **extra)


@pytest.mark.parametrize("cls", [AutoencoderKL, VQModel])
@pytest.mark.parametrize("single_file", [False, True])
def test_autoencoder_from_is_frozen_and_equal_to_its_source(cli, tmp_path, cls, single_file):
    source = layout(cls).eval()
    source.register_to_config(scaling_factor=0.5)
    source.save_pretrained(tmp_path / "vae")
    path = tmp_path / "vae"
    if single_file:  # one .safetensors with its config.json beside it
        (tmp_path / "single").mkdir()
        shutil.copy(path / "config.json", tmp_path / "single" / "config.json")
        path = tmp_path / "single" / "ae.safetensors"
        shutil.copy(tmp_path / "vae" / "diffusion_pytorch_model.safetensors", path)
    out = tmp_path / "run"
    code, _, err = cli(*RUN, "--backbone", "unet", "--preset", "tiny", "--autoencoder-from", path,
                       "--max-steps", "2", "--out", out)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert not [r for r in rows if r["stage"] == "autoencoder"]  # stage 1 skipped
    meta = json.loads((out / "autoencoder" / "config.json").read_text())
    assert meta["component"] == {AutoencoderKL: "kl", VQModel: "vq"}[cls]
    assert meta["scaling_factor"] == 0.5  # from the pretrained config
    ae = udiff.load(out).autoencoder
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        want = source.encode(x)
        want = want.latent_dist.mode() if cls is AutoencoderKL else want.latents
        torch.testing.assert_close(ae.encode(x), want, rtol=0, atol=0)
        torch.testing.assert_close(ae.decode(want), source.decode(want).sample, rtol=0, atol=0)


def init_run(cli, tmp_path, tiny_run, backbone, path, *flags, steps="0"):
    out = tmp_path / f"init-{backbone}"
    code, _, err = cli(*RUN, "--backbone", backbone, "--autoencoder", tiny_run, "--init-from", path,
                       "--max-steps", steps, *flags, "--out", out)
    assert code == 0, err
    return udiff.load(out), err


def same_outputs(a, b, cond, seed=0):
    torch.manual_seed(seed)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
    with torch.no_grad():
        torch.testing.assert_close(a(x, t, cond), b(x, t, cond), rtol=0, atol=1e-6)


def test_unet_from_a_diffusers_folder(cli, tmp_path, tiny_run):
    torch.manual_seed(1)
    source = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
        cross_attention_dim=48, attention_head_dim=8, norm_num_groups=16,
        class_embed_type="projection", projection_class_embeddings_input_dim=48).eval()
    source.save_pretrained(tmp_path / "unet")
    pipe, _ = init_run(cli, tmp_path, tiny_run, "unet", tmp_path / "unet")
    assert pipe.conditioner.dim == 48  # the token width follows cross_attention_dim
    cond = pipe.conditioner(torch.tensor([3, 5]))
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
    with torch.no_grad():
        want = source(x, t, encoder_hidden_states=cond.tokens, class_labels=cond.pooled).sample
        torch.testing.assert_close(pipe.denoiser(x, t, cond), want, rtol=0, atol=1e-6)


def dit_source():
    from udiff_dit.model import DiT

    comp = plugins.get("denoiser", "dit")
    torch.manual_seed(2)
    dit = DiT(comp.make_config("tiny"), LATENT).eval()
    for p in dit.parameters():  # DiT zero-initialises its modulation: make every weight count
        if p.requires_grad:  # (not the fixed sine-cosine positions)
            p.data.normal_(0, 0.02)
    return dit


def test_dit_from_an_official_state_dict_equals_the_reference_forward(cli, tmp_path, tiny_run):
    """facebookresearch/DiT weights give exactly the reference forward (its timestep convention
    recorded in the run), with the reference's class table as udiff's label conditioner."""
    installed("dit")
    from reference_dit import ReferenceDiT

    torch.manual_seed(3)
    source = ReferenceDiT(channels=4, size=8, patch=2, hidden=64, depth=2, heads=4).eval()
    for p in source.parameters():  # DiT zero-initialises its modulation: make every
        if p.requires_grad:  # weight count (not the fixed sine-cosine positions)
            p.data.normal_(0, 0.05)
    torch.save(source.state_dict(), tmp_path / "DiT-tiny.pt")
    pipe, err = init_run(cli, tmp_path, tiny_run, "dit", tmp_path / "DiT-tiny.pt", "--preset", "tiny")
    assert "label table reused" in err
    assert torch.equal(pipe.conditioner.embedding.weight, source.y_embedder.embedding_table.weight)
    recorded = json.loads((tmp_path / "init-dit" / "denoiser" / "config.json").read_text())
    assert recorded["config"]["timestep_convention"] == "official"
    torch.manual_seed(0)
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 10, 700]), torch.tensor([1, 9, 10])
    with torch.no_grad():
        want = source(x, t, y)  # y = 10: the null class, as classifier-free guidance asks for it
        got = pipe.denoiser(x, t, pipe.conditioner(y))
        assert (got - want).abs().max() <= 1e-5
        pipe.denoiser.t_embedder.shift = 1  # diffusers' convention on the same weights: not equal
        assert (pipe.denoiser(x, t, pipe.conditioner(y)) - want).abs().max() > 1e-3
    code, _, err = cli("export", tmp_path / "init-dit", "--scheduler", "ddim", "--out", tmp_path / "e")
    assert code == 0, err
    assert "facebookresearch/DiT's timestep frequencies" in err and "differ from udiff's" in err


def test_dit_from_a_diffusers_folder_inverts_the_export(cli, tmp_path, tiny_run):
    installed("dit")
    from udiff_dit.export import to_diffusers

    source = dit_source()
    conditioner = plugins.get("conditioner", "label").build(
        plugins.get("conditioner", "label").make_config(), LATENT.replace(cond_dim=64))
    to_diffusers(source, conditioner).save_pretrained(tmp_path / "transformer")
    pipe, err = init_run(cli, tmp_path, tiny_run, "dit", tmp_path / "transformer", "--preset", "tiny")
    assert "not reused" in err  # 1000 classes in the diffusers table, 10 labels here
    recorded = json.loads((tmp_path / "init-dit" / "denoiser" / "config.json").read_text())
    assert recorded["config"]["timestep_convention"] == "diffusers"
    same_outputs(pipe.denoiser, source, pipe.conditioner(torch.tensor([0, 4])))


def test_flux_from_a_diffusers_folder(cli, tmp_path, tiny_run):
    installed("flux")
    from udiff_flux.model import FluxDenoiser

    comp = plugins.get("denoiser", "flux")
    torch.manual_seed(3)
    source = FluxDenoiser(comp.make_config("tiny"), LATENT).eval()
    for p in source.parameters():
        p.data.normal_(0, 0.02)
    source.transformer.save_pretrained(tmp_path / "transformer")
    pipe, _ = init_run(cli, tmp_path, tiny_run, "flux", tmp_path / "transformer")
    same_outputs(pipe.denoiser, source, pipe.conditioner(torch.tensor([2, 7])))


@pytest.mark.slow
def test_lora_trains_saves_samples_and_merges(cli, tmp_path, tiny_run):
    code, _, err = cli("export", tiny_run, "--out", tmp_path / "base")
    assert code == 0, err
    base = tmp_path / "base" / "unet"
    out = tmp_path / "lora"
    code, _, err = cli(*RUN, "--backbone", "unet", "--autoencoder", tiny_run, "--init-from", base,
                       "--lora-rank", "4", "--max-steps", "30", "--lr", "5e-3", "--out", out)
    assert code == 0, err
    assert not (out / "denoiser" / "model.safetensors").exists()  # the adapter alone
    adapter = out / "denoiser" / "adapter.safetensors"
    base_bytes = (base / "diffusion_pytorch_model.safetensors").stat().st_size
    assert adapter.stat().st_size < 0.05 * base_bytes
    meta = json.loads((out / "denoiser" / "config.json").read_text())
    assert meta["lora"]["rank"] == 4 and len(meta["lora"]["base"]["sha256"]) == 64

    pipe = udiff.load(out)
    params = dict(pipe.denoiser.named_parameters())
    trainable = sum(p.numel() for n, p in params.items() if "lora_" in n)
    assert 0 < trainable < 0.05 * sum(p.numel() for p in params.values())
    # The base is bitwise the pretrained file: only the adapter trained.
    from udiff.weights.lora import base_state

    source = load_file(str(base / "diffusion_pytorch_model.safetensors"))
    ours = base_state(pipe.denoiser)
    assert all(torch.equal(ours[f"unet.{k}"], v) for k, v in source.items())

    # Only the adapters and the conditioner trained: counted from the optimizer, in run.json.
    run = json.loads((out / "run.json").read_text())
    adapter_numel = sum(t.numel() for t in load_file(str(adapter)).values())
    conditioner_numel = sum(t.numel() for t in load_file(
        str(out / "conditioner" / "model.safetensors")).values())
    assert run["parameters"]["trainable"] == adapter_numel + conditioner_numel
    assert run["parameters"]["total"] == sum(p.numel() for p in params.values()) + \
        conditioner_numel

    with_adapter, _ = pipe.sample_tensor([0, 1], per_label=2, steps=5)
    for n, p in params.items():
        if "lora_B" in n:
            p.data.zero_()  # the base alone
    without, _ = pipe.sample_tensor([0, 1], per_label=2, steps=5)
    assert (with_adapter - without).abs().max() > 1e-3

    cli.fails("export", out, "--out", tmp_path / "x", match="--merge-lora")
    code, _, err = cli("export", out, "--merge-lora", "--out", tmp_path / "merged")
    assert code == 0, err
    merged = UNet2DConditionModel.from_pretrained(tmp_path / "merged" / "unet").eval()
    fresh = udiff.load(out)
    cond = fresh.conditioner(torch.tensor([0, 1]))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 900])
    with torch.no_grad():
        want = fresh.denoiser(x, t, cond)
        got = merged(x, t, encoder_hidden_states=cond.tokens, class_labels=cond.pooled).sample
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)

    # The adapter means something only on its base: a changed base is refused.
    weights_file = base / "diffusion_pytorch_model.safetensors"
    changed = load_file(str(weights_file))
    first = next(iter(changed))
    changed[first] = changed[first] + 1e-3
    save_file(changed, str(weights_file))
    cli.fails("sample", out, "--out", tmp_path / "g.png", match="changed since this run's LoRA")


def test_lora_adapters_start_exactly_at_the_base():
    import copy

    from udiff.weights import lora

    comp = plugins.get("denoiser", "unet")
    base = comp.build(comp.make_config("tiny"), Context(latent_channels=4, latent_size=8)).eval()
    adapted = lora.add(copy.deepcopy(base), 4, None, lora.targets(comp, ["attention"])).eval()
    b_weights = [p for n, p in adapted.named_parameters() if "lora_B" in n]
    assert b_weights and all(p.requires_grad for p in b_weights)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    cond = udiff.Conditioning(torch.randn(2, 1, 64), torch.randn(2, 64))
    with torch.no_grad():
        assert torch.equal(adapted(x, t, cond), base(x, t, cond))


class Payload:  # a pickle of this needs a global: refused by weights_only=True
    pass


def test_pretrained_bad_input_is_one_line(cli, tmp_path, tiny_run):
    installed("dit")
    layout(AutoencoderKL).save_pretrained(tmp_path / "vae")
    common = [*RUN, "--autoencoder", tiny_run, "--max-steps", "1"]
    out = tmp_path / "out"
    cli.fails(*common, "--init-from", tmp_path / "nope", "--out", out, match="does not exist")
    line = cli.fails(*common, "--init-from", tmp_path / "vae", "--out", out,
                     match="not a format udiff-unet reads")
    assert "AutoencoderKL" in line
    cli.fails(*RUN, "--autoencoder-from", tmp_path / "nope", "--out", out, match="does not exist")
    big = plugins.get("denoiser", "dit")
    from udiff_dit.model import DiT

    wrong = DiT(big.make_config("tiny"), LATENT.replace(latent_size=16))  # 64 tokens, not 16
    torch.save(wrong.state_dict(), tmp_path / "other-size.pt")
    line = cli.fails(*common, "--backbone", "dit", "--preset", "tiny", "--init-from",
                     tmp_path / "other-size.pt", "--out", out, match="does not fit the model")
    assert "pos_embed" in line
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": Payload()}))
    cli.fails(*common, "--backbone", "dit", "--init-from", evil, "--out", out,
              match="weights_only=True")
    cli.fails(*common, "--lora-rank", "4", "--out", out, match="give --init-from")
    cli.fails(*RUN, "--autoencoder-from", tmp_path / "evil.pt", "--out", out,
              match="no config.json")
    assert not out.exists()
