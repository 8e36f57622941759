"""A comparison's plan: its settings, the shared autoencoder and the arms, each an ordinary
``udiff train`` line with its own config file, all kept in ``OUT/compare.json``.

What makes the arms fair: one autoencoder (trained once, or the one given) for all, so only the
backbone differs; presets of matched size (each built-in's ``bench``: within 10%); the same
objective, batch, optimizer, data order, held-out split (``training.split_seed``) and budget
(steps, or the wall time each backbone's step takes here, turned into steps once)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from .. import plugins
from ..config import merge, read_file, resolve
from ..errors import UdiffError
from ..run.files import read_json, write_json

PLAN = "compare.json"
CONFIGS = "configs"
COMMANDS = "commands.txt"
AUTOENCODER = "autoencoder"
MATCHED = "bench"  # the built-ins' presets of matched size (the benchmark harness's)
OBJECTIVE = "flow"  # every built-in's default objective (docs/your-data.md, "Defaults from measurement")
MIN_STEPS = 50  # one validation interval (training.planning's shortest)
SPLIT_SEED = 0

# The arms' shared settings on the digits: the demo's (commands/demo.DEMO) with a held-out split.
DIGITS = {"data": {"source": "digits", "image_size": 16},
          "autoencoder": {"name": "kl", "preset": "tiny"},
          "training": {"autoencoder_steps": 300, "batch_size": 48, "lr": 2e-3,
                       "warmup_steps": 50, "ema_decay": 0.995, "validate_per_label": 8}}


@dataclass(frozen=True)
class Settings:
    """What the user asked for: two comparisons are the same when these are equal."""

    data: str
    backbones: tuple[str, ...]
    presets: dict[str, str | None]
    seeds: int = 1
    budget_steps: int | None = None
    budget_minutes: float | None = None
    per_label: int = 30
    autoencoder_run: str | None = None  # a run whose autoencoder every arm shares
    config: dict | None = None  # the --config file's contents: the arms' shared settings
    target_memory: int = 8 * 2**30
    target_image_size: int = 256
    target_batch: int | None = None  # default: the arms' batch
    target_precision: str = "bf16"
    target_checkpointing: bool = False

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def parse_memory(text: str) -> int:
    """'8GiB', '8GB', '512MiB', '8' (GiB) -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?B)?\s*", text, re.I)
    if not m:
        raise UdiffError(f"--target-memory {text!r}: give a size such as 8GiB or 24GB")
    unit = (m.group(2) or "G").upper()
    base = 1024 if (m.group(3) or "iB").lower() == "ib" else 1000
    return int(float(m.group(1)) * base ** "KMGT".index(unit) * base)


def parse_presets(text: str | None, backbones: tuple[str, ...]) -> dict[str, str | None]:
    """``--preset NAME`` for every arm, or ``unet=small,dit=small``; default: each backbone's
    matched ``bench`` preset where it has one, else its default."""
    named = {}
    for item in (text or "").split(","):
        if "=" in item:
            b, p = (x.strip() for x in item.split("=", 1))
            if b not in backbones:
                raise UdiffError(f"--preset {text}: {b!r} is not among --backbones")
            named[b] = p
        elif item.strip():
            named = dict.fromkeys(backbones, item.strip())
    out = {}
    for b in backbones:
        presets = plugins.get("denoiser", b).presets
        p = named.get(b, MATCHED if MATCHED in presets else None)
        if p is not None and p not in presets:
            raise UdiffError(f"--preset: backbone {b!r} has no preset {p!r} (it has: "
                             f"{', '.join(presets) or 'none'})")
        out[b] = p
    return out


def check_backbones(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if len(names) < 2:
        raise UdiffError(f"--backbones {text}: a comparison needs at least two backbones")
    for n in names:
        try:
            plugins.get("denoiser", n)
        except UdiffError as e:
            raise UdiffError(f"--backbones: {e}") from None
    return names


def base_config(s: Settings) -> dict:
    """The arms' shared config: the demo's on the digits, the data's plan on a folder, the
    --config file over either; one objective and split for every arm."""
    from ..data_report import scan
    from ..training import planning
    from ..training.setup import training_on_cpu

    given = merge(s.config or {}, {"data": {"source": s.data}})
    if s.data == "digits":
        chosen = merge(DIGITS, given)
    else:
        report = scan(s.data, f"--data {s.data}", strict=True)
        device = "cpu" if training_on_cpu(resolve(None, given).training) else "cuda"
        chosen = merge(planning.choose(report, given, device)[0], given)
    # a budget is a budget: no arm stops early; every arm judged on the same held-out images
    return merge(merge({"scheduler": {"name": OBJECTIVE}}, chosen),
                 {"training": {"split_seed": SPLIT_SEED, "early_stop": 0}})


@dataclass(frozen=True)
class Arm:
    name: str  # its run directory under --out
    backbone: str
    preset: str | None
    seed: int
    steps: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def arms(s: Settings, steps: dict[str, int]) -> list[Arm]:
    return [Arm(f"{b}-seed{k}", b, s.presets[b], k, steps[b])
            for b in s.backbones for k in range(s.seeds)]


def validate_every(steps: int) -> int:
    """planning's rule: four validations and one at the end, every 50 steps at least."""
    return max(MIN_STEPS, steps // 4 // 50 * 50)


def arm_config(base: dict, arm: Arm, autoencoder: dict) -> dict:
    cfg = merge(base, {"denoiser": {"name": arm.backbone, "preset": arm.preset, "options": {}},
                       "autoencoder": autoencoder,
                       "training": {"seed": arm.seed, "max_steps": arm.steps,
                                    "validate_every": validate_every(arm.steps)}})
    return resolve(None, cfg).model_dump(mode="json", exclude_none=True)


def autoencoder_config(base: dict, first: Arm) -> dict:
    """Stage 1 only: a run whose denoiser takes no step, there for its autoencoder."""
    cfg = merge(base, {"denoiser": {"name": first.backbone, "preset": first.preset},
                       "training": {"max_steps": 0, "validate_every": 0}})
    return resolve(None, cfg).model_dump(mode="json", exclude_none=True)


def train_line(config: Path, run: Path) -> list[str]:
    return ["udiff", "train", "--config", str(config), "--out", str(run), "--no-estimate"]


@dataclass
class Plan:
    out: Path
    settings: Settings
    arms: list[Arm]
    lines: list[tuple[str, list[str]]]  # (run name, its udiff train argv), in order
    base: dict  # the arms' shared config

    def run_dir(self, name: str) -> Path:
        return self.out / name

    @property
    def autoencoder_dir(self) -> Path:
        return Path(self.settings.autoencoder_run) if self.settings.autoencoder_run else \
            self.out / AUTOENCODER


def write(out: Path, s: Settings, base: dict, steps: dict[str, int],
          probe: dict[str, Any] | None) -> Plan:
    """The configs, the commands file and compare.json (last: it marks a written plan)."""
    planned = arms(s, steps)
    shared = {"from_run": s.autoencoder_run or str(out / AUTOENCODER)}
    configs, lines = out / CONFIGS, []
    configs.mkdir(parents=True, exist_ok=True)
    if not s.autoencoder_run:
        path = configs / f"{AUTOENCODER}.toml"
        path.write_text(tomli_w.dumps(autoencoder_config(base, planned[0])))
        lines.append((AUTOENCODER, train_line(path, out / AUTOENCODER)))
    for arm in planned:
        path = configs / f"{arm.name}.toml"
        path.write_text(tomli_w.dumps(arm_config(base, arm, shared)))
        lines.append((arm.name, train_line(path, out / arm.name)))
    text = ["# udiff compare: one `udiff train` per line, each an ordinary run directory."]
    if lines[0][0] == AUTOENCODER:
        text.append("# The first line trains the shared autoencoder: run it first; the others "
                    "are independent (any order, any machine), then: udiff compare --collect "
                    f"--out {shlex.quote(str(out))}")
    text += [shlex.join(argv) for _, argv in lines]
    (out / COMMANDS).write_text("\n".join(text) + "\n")
    write_json(out / PLAN, {"settings": s.as_dict(), "steps": steps, "probe": probe,
                            "base": base, "arms": [a.as_dict() for a in planned],
                            "lines": [{"run": n, "argv": a} for n, a in lines]})
    return Plan(out, s, planned, lines, base)


def read(out: Path) -> Plan:
    saved = read_json(out / PLAN, "comparison plan")
    s = saved["settings"]
    s = Settings(**(s | {"backbones": tuple(s["backbones"])}))
    return Plan(out, s, [Arm(**a) for a in saved["arms"]],
                [(x["run"], x["argv"]) for x in saved["lines"]], saved["base"])


def differences(a: Settings, b: Settings) -> list[str]:
    return [k for k, v in a.as_dict().items() if b.as_dict()[k] != v]


def config_file(path: str | None) -> dict | None:
    return read_file(path) if path else None
