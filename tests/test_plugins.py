"""Plugin discovery, the JSON listing, and guarded loading of broken plugins."""

from __future__ import annotations

import json
import os

from conftest import run_udiff
from udiff import plugins

GOOD = '''
from pydantic import BaseModel, ConfigDict
from udiff import hookimpl
from udiff_unet import UNetDenoiser, UNetConfig, PRESETS

@hookimpl
def register_denoisers(register):
    register("unet2", UNetConfig, UNetDenoiser.from_config, PRESETS)
'''


def listing(cli, *flags):
    code, out, _ = cli("plugins", "--json", *flags)
    assert code == 0
    return {p["name"]: p for p in json.loads(out)}


def test_json_lists_unet_plugin_and_hides_builtins(cli):
    found = listing(cli)
    assert found["udiff-unet"]["provides"] == {"denoiser": ["unet"]}
    assert found["udiff-unet"]["error"] is None and found["udiff-unet"]["version"]
    assert not any(name.startswith("udiff.builtins") for name in found)
    assert set(found["udiff-unet"]) == {"name", "version", "provides", "error", "init_formats",
                                        "presets"}
    assert found["udiff-unet"]["presets"] == {"unet": ["tiny", "small", "bench", "sd15"]}
    assert found["udiff-unet"]["init_formats"] == {"unet": ["diffusers UNet2DConditionModel folder"]}


def test_all_shows_builtins_with_every_role(cli):
    provided = {}
    for p in listing(cli, "--all").values():
        for role, names in p["provides"].items():
            provided.setdefault(role, []).extend(names)
    assert {"kl"} <= set(provided["autoencoder"])
    assert {"ddpm", "ddim", "dpm++", "flow"} <= set(provided["scheduler"])
    assert provided["conditioner"] == ["label"] and "unet" in provided["denoiser"]


def test_third_party_plugin_is_discovered(cli, install_plugin):
    install_plugin("udiff-unet2", "udiff_unet2", GOOD)
    assert listing(cli)["udiff-unet2"]["provides"] == {"denoiser": ["unet2"]}


def test_import_error_is_listed_and_host_keeps_working(cli, install_plugin):
    install_plugin("udiff-broken", "udiff_broken", "import no_such_module_xyz\n")
    found = listing(cli)
    assert "ModuleNotFoundError" in found["udiff-broken"]["error"]
    assert found["udiff-unet"]["error"] is None
    line = cli.fails("info", "--backbone", "broken", match="failed to load")
    assert "udiff-broken" in line


def test_hookimpl_signature_mismatch(cli, install_plugin):
    install_plugin("udiff-badsig", "udiff_badsig", '''
        from udiff import hookimpl
        @hookimpl
        def register_denoisers(register, extra_argument):
            pass
    ''')
    assert "extra_argument" in listing(cli)["udiff-badsig"]["error"]
    assert listing(cli)["udiff-unet"]["error"] is None


def test_unknown_hook_name_is_an_error(cli, install_plugin):
    install_plugin("udiff-typo", "udiff_typo", '''
        from udiff import hookimpl
        @hookimpl
        def register_denoiser(register):
            pass
    ''')
    assert "register_denoiser" in listing(cli)["udiff-typo"]["error"]


def test_config_model_not_pydantic(cli, install_plugin):
    install_plugin("udiff-nopyd", "udiff_nopyd", '''
        from udiff import hookimpl
        @hookimpl
        def register_denoisers(register):
            register("nopyd", dict, lambda c, x: None)
    ''')
    assert "pydantic" in listing(cli)["udiff-nopyd"]["error"]


def test_duplicate_name_between_plugins(cli, install_plugin):
    install_plugin("udiff-dup", "udiff_dup", GOOD.replace('"unet2"', '"unet"'))
    found = listing(cli)
    errors = [p["error"] for p in found.values() if p["error"]]
    assert len(errors) == 1 and "duplicate denoiser name 'unet'" in errors[0]
    assert plugins.get("denoiser", "unet")  # the first registration still works


def test_third_party_wins_over_builtin(install_plugin):
    install_plugin("udiff-myddim", "udiff_myddim", '''
        from pydantic import BaseModel
        from udiff import hookimpl
        class C(BaseModel):
            pass
        @hookimpl
        def register_schedulers(register):
            register("ddim", C, lambda c, x: "mine")
    ''')
    assert plugins.get("scheduler", "ddim").plugin == "udiff-myddim"


def test_factory_that_raises_gives_one_line(cli, install_plugin):
    install_plugin("udiff-boom", "udiff_boom", '''
        from pydantic import BaseModel
        from udiff import hookimpl
        class C(BaseModel):
            pass
        def boom(config, context):
            raise RuntimeError("kaboom")
        @hookimpl
        def register_denoisers(register):
            register("boom", C, boom)
    ''')
    line = cli.fails("info", "--backbone", "boom", match="failed to build")
    assert "kaboom" in line and "udiff-boom" in line


def test_disable_plugins_env(cli, install_plugin, monkeypatch):
    install_plugin("udiff-unet2", "udiff_unet2", GOOD)
    monkeypatch.setenv("UDIFF_DISABLE_PLUGINS", "udiff-unet2, other")
    assert "udiff-unet2" not in listing(cli)
    cli.fails("info", "--backbone", "unet2", match="pip install udiff-unet2")


def test_unknown_backbone_lists_names_and_pip_hint(cli):
    line = cli.fails("info", "--backbone", "nope", match="unknown denoiser 'nope'")
    assert "unet" in line and "pip install udiff-nope" in line


def test_broken_plugin_in_real_process(install_plugin):
    site = install_plugin("udiff-broken", "udiff_broken", "raise RuntimeError('bad plugin')\n")
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = run_udiff("plugins", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "warning: plugin udiff-broken disabled" in proc.stderr
    found = {p["name"]: p for p in json.loads(proc.stdout)}
    assert "bad plugin" in found["udiff-broken"]["error"] and found["udiff-unet"]["error"] is None


ALL_ROLES = '''
from udiff import hookimpl
from udiff.builtins import (autoencoder_kl, autoencoders, conditioners, label_conditioner,
                            noise_schedulers, schedulers)

@hookimpl
def register_autoencoders(register):
    register("kl2", autoencoders.KLConfig,
             lambda c, ctx: autoencoder_kl.KLAutoencoder(c, ctx.image_channels),
             autoencoders.KL_PRESETS)

@hookimpl
def register_conditioners(register):
    register("label2", conditioners.LabelConfig, label_conditioner.build)

@hookimpl
def register_schedulers(register):
    register("ddim2", schedulers.NoiseScheduleConfig,
             lambda c, ctx: noise_schedulers.NoiseScheduler(c, noise_schedulers.DDIMScheduler),
             family="noise")
'''


def test_every_role_from_a_third_party_plugin_trains(cli, install_plugin, tmp_path):
    from conftest import TINY

    install_plugin("udiff-roles", "udiff_roles", ALL_ROLES)
    assert listing(cli)["udiff-roles"]["provides"] == {
        "autoencoder": ["kl2"], "scheduler": ["ddim2"], "conditioner": ["label2"]}
    cfg = tmp_path / "c.toml"
    cfg.write_text('[autoencoder]\nname = "kl2"\npreset = "tiny"\n'
                   '[conditioner]\nname = "label2"\n[scheduler]\nname = "ddim2"\n')
    run = tmp_path / "run"
    code, _, err = cli("train", "--config", cfg, "--data", "digits", "--backbone", "unet", *TINY,
                       "--out", run)
    assert code == 0, err
    for part, name in [("autoencoder", "kl2"), ("conditioner", "label2"), ("scheduler", "ddim2")]:
        meta = json.loads((run / part / "config.json").read_text())
        assert (meta["component"], meta["plugin"]) == (name, "udiff-roles")
    code, _, err = cli("sample", run, "--labels", "1", "--per-label", "2", "--steps", "3",
                       "--scheduler", "dpm++", "--out", tmp_path / "g.png")
    assert code == 0, err
