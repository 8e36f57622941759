"""Which memory options fit each built-in backbone's largest preset in an 8 GiB GPU at 256 px,
batch 4, bf16 (issue 32): the training step's footprint estimated on fake tensors
(udiff.bench.footprint, allocating nothing) for every option of udiff.compare.measure.OPTIONS.

    python benchmarks/lowmem.py --out benchmarks/results/lowmem-DATE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from udiff import plugins
from udiff.compare.measure import OPTIONS, Shape, options_at_target, parameters
from udiff.compare.plan import Settings

SHAPE = Shape(channels=4, size=32, labels=31, batch=4)  # 31 users' labels, f8 latents of 256 px


def largest(backbone: str) -> str:
    presets = plugins.get("denoiser", backbone).presets
    return max(presets, key=lambda p: parameters(backbone, p, SHAPE))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--backbones", default="unet,dit,flux")
    args = ap.parse_args()
    st = Settings(data="digits", backbones=[], presets={}, target_memory=8 * 2**30,
                  target_image_size=256, target_batch=4,
                  target_precision="bf16")
    rows = {}
    for backbone in args.backbones.split(","):
        preset = largest(backbone)
        print(f"{backbone} {preset} ...", flush=True)
        rows[backbone] = {"preset": preset, "parameters": parameters(backbone, preset, SHAPE),
                          "options": options_at_target(backbone, preset, st, SHAPE)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fits-8gib.json").write_text(json.dumps(
        {"target": "8 GiB, 256 px, batch 4, bf16", "rows": rows}, indent=1))
    lines = ["| option | " + " | ".join(f"{b} {r['preset']} ({r['parameters'] / 1e9:.2f} B)"
                                        for b, r in rows.items()) + " |",
             "| --- |" + " --- |" * len(rows)]
    for name in OPTIONS:
        cells = []
        for r in rows.values():
            o = r["options"][name]
            cells.append("–" if "error" in o else
                         f"{o['peak'] / 2**30:.1f} GiB {'fits' if o['fits'] else 'no'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (args.out / "fits-8gib.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
