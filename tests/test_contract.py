"""The typed plugin contract and what the host checks of a third-party backbone: registration
keys, the prediction's shape, factories and forwards that raise, a run whose plugin broke, a
backbone that does not learn."""

from __future__ import annotations

import json
import textwrap

import pytest
from test_backbone_doc import documented_source

from conftest import TINY
from udiff import plugins
from udiff.testing import check_denoiser

CONVNET = documented_source()


def variant(name: str, *edits: tuple[str, str]) -> str:
    """The docs' convnet registered as ``name``, with ``(old, new)`` source edits."""
    source = CONVNET.replace('register("convnet"', f'register("{name}"')
    for old, new in edits:
        assert old in source, old
        source = source.replace(old, new)
    return source


def listing(cli) -> dict:
    code, out, _ = cli("plugins", "--json")
    assert code == 0
    return {p["name"]: p for p in json.loads(out)}


REGISTER = '''
from pydantic import BaseModel
from udiff import hookimpl

class C(BaseModel):
    pass

@hookimpl
def register_{role}s(register):
    register("thing", C, lambda c, ctx: None, {key})
'''


@pytest.mark.parametrize("role, key, message", [
    ("denoiser", "default_schedular='flow'",
     "unknown registration key 'default_schedular' (did you mean 'default_scheduler'?)"),
    ("scheduler", "famliy='flow'", "unknown registration key 'famliy' (did you mean 'family'?)"),
    ("scheduler", "family='diffusion'", "family: Input should be 'noise' or 'flow'"),
    ("denoiser", "init_formats={'x': 42}", "init_formats needs callables or 'module:attribute'"),
    ("denoiser", "lora_targets=['to_q']", "lora_targets: Input should be a valid dictionary"),
    ("conditioner", "dropout=0.1", "unknown registration key 'dropout'"),
])
def test_mistyped_registration_is_a_listed_error(cli, install_plugin, role, key, message):
    install_plugin("udiff-typo", "udiff_typo", REGISTER.format(role=role, key=key))
    found = listing(cli)
    assert message in found["udiff-typo"]["error"], found["udiff-typo"]["error"]
    assert found["udiff-typo"]["provides"] == {} and found["udiff-unet"]["error"] is None


def test_lazy_factory_reference_that_does_not_import_is_one_line(cli, install_plugin, tmp_path):
    install_plugin("udiff-lazy", "udiff_lazy", REGISTER.format(
        role="denoiser", key="").replace("lambda c, ctx: None", "'udiff_nowhere.model:Net'"))
    assert listing(cli)["udiff-lazy"]["provides"] == {"denoiser": ["thing"]}
    line = cli.fails("info", "--backbone", "thing", match="failed to build")
    assert "No module named 'udiff_nowhere'" in line


@pytest.mark.parametrize("name, edit, message", [
    ("croppy", ("        return self.out(h)", "        return self.out(h)[:, :, 1:]"),
     "forward returned a prediction of shape [2, 4, 7, 8]; expected [2, 4, 8, 8]"),
    ("raisy", ("        h = self.inp(x)", "        raise RuntimeError('kaboom in forward')"),
     "forward raised RuntimeError: kaboom in forward"),
    ("brokenfactory", ("        super().__init__()", "        raise ValueError('no such width')"),
     "failed to build: ValueError: no such width"),
])
def test_backbone_bugs_are_one_line_before_anything_is_written(cli, install_plugin, tmp_path,
                                                               name, edit, message):
    install_plugin(f"udiff-{name}", f"udiff_{name}", variant(name, edit))
    out = tmp_path / "run"
    line = cli.fails("train", "--data", "digits", "--backbone", name, *TINY, "--out", out,
                     match=message)
    assert f"udiff-{name}" in line
    assert not out.exists()


def test_sampling_a_run_whose_plugin_broke_names_the_load_error(cli, install_plugin, tmp_path):
    site = install_plugin("udiff-convnet", "udiff_convnet", CONVNET)
    run = tmp_path / "run"
    code, _, err = cli("train", "--data", "digits", "--backbone", "convnet", *TINY, "--out", run)
    assert code == 0, err
    (site / "udiff_convnet.py").write_text("raise ImportError('broken on purpose')\n")
    import sys

    sys.modules.pop("udiff_convnet", None)
    plugins.reset()
    assert "udiff-convnet" in listing(cli) and "broken on purpose" in listing(cli)[
        "udiff-convnet"]["error"]  # loaded (and warned about) once; sampling then says why
    line = cli.fails("sample", run, "--out", tmp_path / "g.png", match="failed to load")
    assert "udiff-convnet" in line and "broken on purpose" in line and "not installed" not in line


def test_conformance_fails_a_backbone_that_does_not_learn(install_plugin):
    bad = "        nn.init.normal_(self.out.weight, std=0.5)  # left at a random init\n"
    install_plugin("udiff-badinit", "udiff_badinit", variant(
        "badinit", ("        self.blocks = nn.ModuleList(Block(w) for _ in range(config.depth))\n",
                    "        self.blocks = nn.ModuleList(Block(w) for _ in range(config.depth))\n"
                    + bad)))
    with pytest.raises(AssertionError, match="did not learn a small fixed denoising task"):
        check_denoiser("badinit")


def test_pillow_formats_are_data(tmp_path):
    from PIL import Image

    from udiff.data import load_folder

    for i, ext in enumerate((".pgm", ".ppm", ".tif", ".gif", ".png")):
        folder = tmp_path / f"label{i % 2}"
        folder.mkdir(exist_ok=True)
        Image.new("L" if ext == ".pgm" else "RGB", (12, 10), 40 * i).save(folder / f"im{ext}")
    (tmp_path / "label0" / "notes.txt").write_text("not an image")
    data = load_folder(tmp_path, 8, 3)
    assert len(data) == 5 and data.label_names == ["label0", "label1"]
    assert tuple(data.images.shape) == (5, 3, 8, 8)


def test_pillow_extension_that_does_not_decode_is_one_line(cli, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.tif").write_bytes(b"II*\x00garbage")
    cli.fails("train", "--data", tmp_path, "--out", tmp_path / "r", match="cannot read image")


# The flags every command had before the CLI was generated from the config (udiff 0.1, stop 13).
FLAGS = {
    "plugins": "--all --json",
    "train": "--data --backbone --preset --scheduler --config --image-size --autoencoder-preset "
             "--max-steps --autoencoder-steps --autoencoder --autoencoder-from --init-from "
             "--lora-rank --lora-targets --batch-size --lr --mixed-precision "
             "--gradient-checkpointing --compile --attention --device --seed --out --overwrite "
             "--resume --checkpoint-every --keep-checkpoints --max-nonfinite --validate-every "
             "--log-with --num-processes --fsdp",
    "info": "--backbone --preset --scheduler --config --image-size --autoencoder-preset --labels "
            "--json",
    "sample": "run_dir --labels --per-label --steps --scheduler --guidance --seed --device "
              "--compile --out",
    "eval": "run_dir --per-label --steps --scheduler --guidance --seed --inception-weights --out",
    "export": "run_dir --format --scheduler --merge-lora --out --overwrite",
    "bench": "bench",  # issue 28: its sub-commands (BENCH)
    "demo": "--backbone --preset --seed --out --overwrite",
}
# Flags added since, each by an issue that asked for it (17: serve, bench serve).
ADDED = {"train": "--grace-seconds --validate-per-label --holdout --early-stop "
                  "--early-stop-metric --no-estimate "  # 29: validation, early stop, the probe
                  "--optimizer --base-precision "  # 32: the memory options
                  "--plan-only",  # 33: the studio's plan before it starts a run
         "sample": "--guidance-interval --guidance-rescale",  # 19
         "eval": "--guidance-interval --guidance-rescale",
         "serve": "--keys-file --audit-log --audit-max-bytes",  # 31: keys, the audit log
         "distill": "--optimizer --base-precision"}  # 32
NEW = {"serve": "run_dirs --host --port --token-file --max-batch-images --max-queue --max-steps "
                "--max-images --device --grace-seconds",
       "distill": "run_dir --steps --guidance --pairs --lora-rank --lora-targets --max-steps "
                  "--batch-size --lr --mixed-precision --compile --attention --device --seed "
                  "--checkpoint-every --keep-checkpoints --grace-seconds --max-nonfinite "
                  "--log-with --out --overwrite --resume",  # 20
       "data": "dir --out --json",  # 29
       "compare": "--data --out --backbones --budget-steps --budget-minutes --seeds --preset "
                  "--per-label --autoencoder --config --target-memory --target-image-size "
                  "--target-batch --target-precision --target-checkpointing --resume "
                  "--plan-only --collect",  # 30
       "keys": "keys",  # 31: its sub-commands (KEYS)
       "studio": "--root --host --port --keys-file --device"}  # 33
# `udiff bench`'s sub-commands (issue 28), each with the flags it had as a target (17, 19, 20).
BENCH = {"perf": "--backbones --preset --batches --quick --device --strict --out --overwrite",
         "serve": "run_dir --concurrency --seconds --quick --strict --out --overwrite",
         "guidance": "run_dirs --scales --intervals --per-label --out --overwrite",
         "distill": "run_dirs --per-label --out --overwrite"}
KEYS = {"add": "name --file --runs --labels --requests-per-minute --images-per-day "  # 31
                "--admin",  # 33: may use udiff studio
        "remove": "name --file", "list": "--file"}


def test_every_command_keeps_its_flags_and_each_has_help():
    import argparse

    from udiff.cli import build_parser

    def commands(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    def check(parser, flags: str, name: str) -> None:
        actions = [a for a in parser._actions if a.dest != "help"]
        assert {a.option_strings[0] if a.option_strings else a.dest for a in actions} == set(
            flags.split()), name
        assert [a.dest for a in actions if not a.help] == [], name

    sub = commands(build_parser())
    assert set(sub.choices) == set(FLAGS) | set(NEW)
    for name, parser in sub.choices.items():
        check(parser, {**FLAGS, **NEW}[name] + " " + ADDED.get(name, ""), name)
    bench = commands(sub.choices["bench"])
    assert set(bench.choices) == set(BENCH)
    for name, parser in bench.choices.items():
        check(parser, BENCH[name], f"bench {name}")
    keys = commands(sub.choices["keys"])
    assert set(keys.choices) == set(KEYS)
    for name, parser in keys.choices.items():
        check(parser, KEYS[name], f"keys {name}")


def test_flag_help_and_defaults_come_from_the_config():
    from udiff.cli import build_parser
    from udiff.config import TrainingConfig

    text = textwrap.dedent(build_parser()._subparsers._group_actions[0].choices["train"]
                           .format_help())
    field = TrainingConfig.model_fields["max_nonfinite"]
    assert " ".join(field.description.rstrip(".").split()) in " ".join(text.split())
    assert f"(default: {field.default})" in " ".join(text.split())
