"""``--init-from`` for DiT: a facebookresearch/DiT state dict (its parameter names, which udiff's
DiT keeps; ``.pt``/``.pth`` read with ``weights_only=True``, or ``.safetensors``), or a diffusers
``DiTTransformer2DModel`` folder (the inverse of ``udiff export``). Both carry a class-embedding
table ``[classes + 1, D]`` with the null class last, reused when the label count matches."""

from __future__ import annotations

import re

import torch

from udiff.errors import UdiffError
from udiff.weights.pretrained import NotThisFormat, diffusers_files, read_weights

from .config import SIZES
from .export import NULL_CLASS
from .model import sincos_pos_embed

HEADS = {hidden: heads for _, hidden, heads in SIZES.values()}  # the paper's widths


def architecture(state: dict, config, path) -> dict:
    """DiT options from the weights; the head count (not in the weights) from the paper's table
    for its widths, else from the user's preset/options."""
    w = state["x_embedder.proj.weight"]  # [D, C, p, p]
    hidden, channels, patch = w.shape[0], w.shape[1], w.shape[2]
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    out = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    heads = HEADS.get(hidden, config.num_heads)
    if hidden % heads:
        raise UdiffError(f"--init-from {path}: hidden size {hidden} is not a multiple of "
                         f"{heads} heads; give the head count with --preset or num_heads")
    return {"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": patch,
            "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
            "learn_sigma": out == 2 * channels}


def read_official(path, config, context) -> dict:
    if path.is_dir():
        raise NotThisFormat("a folder, not a state dict file")
    state = dict(read_weights(path))
    if "x_embedder.proj.weight" not in state:
        raise NotThisFormat("no x_embedder.proj.weight: not facebookresearch/DiT's names")
    table = state.pop("y_embedder.embedding_table.weight", None)
    options = architecture(state, config, path) | {"timestep_convention": "official"}
    return {"options": options, "state": state, "label_table": table}


def read_diffusers(path, config, context) -> dict:
    cfg, src = diffusers_files(path, ("DiTTransformer2DModel",))
    depth = cfg["num_layers"]
    state = {"x_embedder.proj.weight": src["pos_embed.proj.weight"],
             "x_embedder.proj.bias": src["pos_embed.proj.bias"]}
    emb = "transformer_blocks.0.norm1.emb."  # diffusers repeats the shared embedders per block
    for k in ("weight", "bias"):
        state[f"t_embedder.mlp.0.{k}"] = src[emb + f"timestep_embedder.linear_1.{k}"]
        state[f"t_embedder.mlp.2.{k}"] = src[emb + f"timestep_embedder.linear_2.{k}"]
        for i in range(depth):
            b, o = f"blocks.{i}.", f"transformer_blocks.{i}."
            state[b + f"adaLN_modulation.1.{k}"] = src[o + f"norm1.linear.{k}"]
            state[b + f"attn.qkv.{k}"] = torch.cat([src[o + f"attn1.to_{x}.{k}"] for x in "qkv"])
            state[b + f"attn.proj.{k}"] = src[o + f"attn1.to_out.0.{k}"]
            state[b + f"mlp.fc1.{k}"] = src[o + f"ff.net.0.proj.{k}"]
            state[b + f"mlp.fc2.{k}"] = src[o + f"ff.net.2.{k}"]
        state[f"final_layer.adaLN_modulation.1.{k}"] = src[f"proj_out_1.{k}"]
        state[f"final_layer.linear.{k}"] = src[f"proj_out_2.{k}"]
    hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    grid = cfg["sample_size"] // cfg["patch_size"]
    state["pos_embed"] = torch.from_numpy(sincos_pos_embed(hidden, grid)).float()[None]
    options = architecture(state, config, path) | {"num_heads": cfg["num_attention_heads"],
                                                   "timestep_convention": "diffusers"}
    table = src[emb + "class_embedder.embedding_table.weight"]  # [1001, D], null at 1000
    return {"options": options, "state": state,
            "label_table": torch.cat([table[:NULL_CLASS], table[NULL_CLASS:NULL_CLASS + 1]])}
