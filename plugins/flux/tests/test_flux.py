"""Flux: FLUX.1-dev's size on the meta device, diffusers' packing, conformance, export, flags."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import FluxTransformer2DModel

import udiff
from udiff import Context, plugins
from udiff.cli import main
from udiff.errors import UdiffError
from udiff.testing import check_denoiser
from udiff_flux.model import image_ids, pack, unpack

TINY = ["--preset", "tiny", "--autoencoder-steps", "20", "--max-steps", "20", "--batch-size", "16"]


def build(preset: str, context: Context):
    comp = plugins.get("denoiser", "flux")
    return comp.build(comp.make_config(preset), context)


def test_dev_parameter_count_without_allocating():
    # FLUX.1-dev's transformer on its 16-channel VAE latents (1024^2 images: 128^2 latents).
    with torch.device("meta"):
        m = build("dev", Context(latent_channels=16, latent_size=128))
    assert all(p.is_meta for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) == 11_901_408_320
    assert (m.cond_dim, m.pooled_dim) == (4096, 768)
    cfg = m.transformer.config
    assert (cfg.num_layers, cfg.num_single_layers, cfg.num_attention_heads,
            cfg.attention_head_dim, cfg.guidance_embeds) == (19, 38, 24, 128, True)


def test_dev_conditioner_gets_a_pooled_table_of_its_width():
    with torch.device("meta"):
        m = build("dev", Context(latent_channels=16, latent_size=128))
        ctx = Context(num_labels=31).for_denoiser(m)
        lab = plugins.get("conditioner", "label")
        cond = lab.build(lab.make_config(), ctx)(torch.tensor([0, 30]))
    assert cond.tokens.shape == (2, 1, 4096) and cond.pooled.shape == (2, 768)


def test_packing_follows_flux_pipeline_layout():
    # FluxPipeline._pack_latents' layout (importing the pipeline needs transformers): token
    # r * (W/2) + q holds the 2x2 patch at (2r, 2q), channel-major: feature c * 4 + 2i + j.
    x = torch.randn(2, 4, 8, 6)
    packed = pack(x)  # [2, 12, 16]
    assert packed.shape == (2, 12, 16)
    for r, q, c, i, j in [(0, 0, 0, 0, 0), (1, 2, 3, 1, 0), (3, 1, 2, 0, 1), (2, 2, 1, 1, 1)]:
        assert packed[1, r * 3 + q, c * 4 + 2 * i + j] == x[1, c, 2 * r + i, 2 * q + j]
    torch.testing.assert_close(unpack(packed, 8, 6), x, rtol=0, atol=0)
    ids = image_ids(8, 6)  # [12, 3] = (0, row, col)
    assert ids.shape == (12, 3) and ids[:, 0].eq(0).all()
    assert ids[5].tolist() == [0.0, 1.0, 2.0] and ids[-1].tolist() == [0.0, 3.0, 2.0]


def test_odd_latent_size_is_refused():
    comp = plugins.get("denoiser", "flux")
    with pytest.raises(UdiffError, match="must be even"):
        comp.build(comp.make_config("tiny"), Context(latent_channels=4, latent_size=7))


def test_rope_axes_must_fill_the_head():
    comp = plugins.get("denoiser", "flux")
    with pytest.raises(UdiffError, match="axes_dims_rope"):
        comp.make_config("tiny", {"axes_dims_rope": [4, 4, 4]})


def test_conformance_with_both_objectives():
    report = check_denoiser("flux")
    assert report["plugin"] == "udiff-flux" and report["preset"] == "tiny"
    assert set(report["losses"]) == {"ddpm", "flow"}


def test_listed_with_flow_as_default(capsys):
    assert main(["plugins", "--json"]) == 0
    found = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert found["udiff-flux"]["provides"] == {"denoiser": ["flux"]}
    assert found["udiff-flux"]["error"] is None
    assert plugins.get("denoiser", "flux").meta.default_scheduler == "flow"


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("flux") / "run"
    assert main(["train", "--data", "digits", "--backbone", "flux", *TINY, "--mixed-precision",
                 "bf16", "--gradient-checkpointing", "--out", str(run)]) == 0
    return run


def test_bf16_checkpointed_run_trains_with_flow_and_samples(flux_run):
    assert json.loads((flux_run / "scheduler" / "config.json").read_text())["component"] == "flow"
    images, _ = udiff.load(flux_run).sample_tensor([3], per_label=2, steps=4, guidance=2.0)
    assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()


def test_export_transformer_loads_with_from_pretrained(flux_run, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    out = tmp_path / "export"
    assert main(["export", str(flux_run), "--format", "diffusers", "--out", str(out)]) == 0
    pipe = udiff.load(flux_run)
    transformer = FluxTransformer2DModel.from_pretrained(out / "transformer").eval()
    assert FlowMatchEulerDiscreteScheduler.from_pretrained(out / "scheduler").config.shift == 1.0
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([250.0, 900.0])
    cond = pipe.conditioner(torch.tensor([1, 7]))
    with torch.no_grad():
        ours = pipe.denoiser(x, t, cond)
        theirs = transformer(hidden_states=pack(x), encoder_hidden_states=cond.tokens,
                             pooled_projections=cond.pooled, timestep=t / 1000,
                             img_ids=image_ids(8, 8), txt_ids=torch.zeros(1, 3)).sample
    torch.testing.assert_close(ours, unpack(theirs, 8, 8))
