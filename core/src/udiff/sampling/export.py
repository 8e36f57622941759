"""``udiff export RUN_DIR --format diffusers --out DIR``: folders stock diffusers loads.

A backbone opts in with ``to_diffusers(conditioner) -> (model, subfolder, pipeline class or
None)``; the autoencoder with ``to_diffusers(scaling_factor)``. With a pipeline class the folder
is a whole pipeline (``DiTPipeline.from_pretrained(DIR)``); otherwise each component folder
loads with its own ``from_pretrained``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import diffusers

from ..errors import UdiffError
from ..plugins.contract import AutoencoderExport, DenoiserExport
from ..run.directory import component_of, load_component
from ..run.files import prepare_out, read_json
from ..run.layout import COMPONENT_CONFIG
from ..weights import quantize
from ..weights.lora import merged_state
from .pipeline import load


def export_diffusers(run_dir: str | Path, out: str | Path, scheduler: str | None = None,
                     overwrite: bool = False, merge_lora: bool = False) -> Path:
    pipe = load(run_dir)
    name = type(pipe.denoiser).__name__
    den_meta = read_json(Path(run_dir) / "denoiser" / COMPONENT_CONFIG, f"run {run_dir}")
    if den_meta.get("lora"):
        if not merge_lora:
            raise UdiffError(f"{run_dir} holds a LoRA adapter: pass --merge-lora to fold it into "
                             "its base for export")
        pipe.denoiser = merged(pipe, den_meta)
    for part, module, able in (("denoiser", pipe.denoiser, DenoiserExport),
                               ("autoencoder", pipe.autoencoder, AutoencoderExport)):
        if not isinstance(module, able):
            raise UdiffError(f"{part} {type(module).__name__} has no diffusers counterpart; "
                             "export supports backbones that implement to_diffusers()")
    try:
        model, subfolder, pipeline_cls = pipe.denoiser.to_diffusers(pipe.conditioner)
    except ValueError as e:
        raise UdiffError(f"cannot export {name}: {e}") from None
    autoencoder = pipe.autoencoder
    if quantize.reduced(autoencoder):  # exported as its file holds it (fp32), as the base is
        autoencoder, _ = load_component(pipe.run_dir / "autoencoder", "autoencoder", pipe.context,
                                        base_precision="fp32")
    vae = autoencoder.to_diffusers(pipe.scaling_factor)
    name = scheduler or pipe.sampling.sampler  # the run's own (a student's few-step sampler)
    sampler = pipe.scheduler(name).sampler
    if name == "few-step":  # diffusers' FlowMatchEuler spaces K steps its own way
        k = pipe.sampling.steps
        print(f"udiff export: this student samples in {k} steps on sigmas "
              f"{[round(1 - i / k, 4) for i in range(k)]}: pass them as "
              "scheduler.set_timesteps(sigmas=...) (diffusers' default spacing differs)",
              file=sys.stderr)
    out = Path(out)
    prepare_out(out, overwrite)
    if pipeline_cls is not None:
        id2label = {str(i): name for i, name in enumerate(pipe.label_names)}
        exported = getattr(diffusers, pipeline_cls)(**{subfolder: model}, vae=vae,
                                                    scheduler=sampler, id2label=id2label)
        exported.register_to_config(id2label=id2label)  # into model_index.json, as on the Hub
        exported.save_pretrained(out)
    else:
        model.save_pretrained(out / subfolder)
        vae.save_pretrained(out / "vae")
        sampler.save_pretrained(out / "scheduler")
    return out


def merged(pipe, meta):
    """A plain denoiser (no adapter modules) holding base + adapter, as export needs. The
    adapter folds into the base as its file holds it, in fp32, whatever ``--base-precision``
    the run trained with: merging into dequantized int8/fp8 weights would write their rounding
    error into every weight of the export."""
    comp, config, _ = component_of(pipe.run_dir / "denoiser", "denoiser")
    adapted = pipe.denoiser
    if meta["lora"].get("base_precision", "fp32") != "fp32":
        adapted, _ = load_component(pipe.run_dir / "denoiser", "denoiser", pipe.context,
                                    base_precision="fp32")
    plain = comp.build(config, pipe.context)
    plain.load_state_dict(merged_state(adapted))
    return plain.eval()
