"""udiff DiT -> diffusers ``DiTTransformer2DModel`` (what stock ``DiTPipeline`` runs).

diffusers keeps the timestep and class embedders inside every block's AdaLayerNormZero, so the
shared embedders are copied into each block; its pipeline uses class 1000 as the null label, so
udiff's null row goes there. Its timestep embedding is fixed to diffusers' convention (frequencies
divided by half - 1): a DiT made with facebookresearch/DiT's (half) runs slightly differently as
diffusers' class, and the export says by how much.
"""

from __future__ import annotations

import sys

import torch
from diffusers import DiTTransformer2DModel

NULL_CLASS = 1000  # hard-coded by diffusers' DiTPipeline


def to_diffusers(dit, conditioner) -> DiTTransformer2DModel:
    if conditioner.num_labels > NULL_CLASS or conditioner.tokens != 1:
        raise ValueError(f"diffusers' DiT takes at most {NULL_CLASS} labels with one token each")
    hidden, heads = dit.cond_dim, dit.blocks[0].attn.num_heads
    model = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=hidden // heads,
        in_channels=dit.in_channels, out_channels=dit.out_channels, num_layers=len(dit.blocks),
        sample_size=int(dit.x_embedder.num_patches ** 0.5) * dit.patch_size,
        patch_size=dit.patch_size, activation_fn="gelu-approximate", attention_bias=True,
        num_embeds_ada_norm=NULL_CLASS, norm_type="ada_norm_zero",
        norm_elementwise_affine=False, norm_eps=1e-6,
    )
    src = dit.state_dict()
    table = torch.zeros(NULL_CLASS + 1, hidden)  # [1001, D]
    ours = conditioner.embedding.weight.detach()  # [K + 1, D], null last
    table[: conditioner.num_labels] = ours[:-1]
    table[NULL_CLASS] = ours[-1]
    dst = {"pos_embed.proj.weight": src["x_embedder.proj.weight"],
           "pos_embed.proj.bias": src["x_embedder.proj.bias"]}
    for i in range(len(dit.blocks)):
        b, o = f"blocks.{i}.", f"transformer_blocks.{i}."
        emb = o + "norm1.emb."
        for k in ("weight", "bias"):
            dst[emb + f"timestep_embedder.linear_1.{k}"] = src[f"t_embedder.mlp.0.{k}"]
            dst[emb + f"timestep_embedder.linear_2.{k}"] = src[f"t_embedder.mlp.2.{k}"]
            dst[o + f"norm1.linear.{k}"] = src[b + f"adaLN_modulation.1.{k}"]
            q, kk, v = src[b + f"attn.qkv.{k}"].chunk(3, dim=0)
            dst.update({o + f"attn1.to_q.{k}": q, o + f"attn1.to_k.{k}": kk,
                        o + f"attn1.to_v.{k}": v})
            dst[o + f"attn1.to_out.0.{k}"] = src[b + f"attn.proj.{k}"]
            dst[o + f"ff.net.0.proj.{k}"] = src[b + f"mlp.fc1.{k}"]
            dst[o + f"ff.net.2.{k}"] = src[b + f"mlp.fc2.{k}"]
        dst[emb + "class_embedder.embedding_table.weight"] = table
    for k in ("weight", "bias"):
        dst[f"proj_out_1.{k}"] = src[f"final_layer.adaLN_modulation.1.{k}"]
        dst[f"proj_out_2.{k}"] = src[f"final_layer.linear.{k}"]
    missing, unexpected = model.load_state_dict(dst, strict=False)
    missing = [k for k in missing if not k.endswith("pos_embed.pos_embed")]  # a fixed buffer
    if missing or unexpected:
        raise RuntimeError(f"DiT export mapping is incomplete: {missing[:3]} {unexpected[:3]}")
    model.eval()
    if dit.timestep_convention == "official":
        print(convention_note(dit, model, conditioner), file=sys.stderr)
    return model


@torch.no_grad()
def convention_note(dit, model: DiTTransformer2DModel, conditioner) -> str:
    """One line: what diffusers' fixed timestep convention changes for an official-convention DiT,
    measured on a seeded probe (the same weights, both forwards)."""
    gen = torch.Generator().manual_seed(0)
    size = model.config.sample_size
    x = torch.randn(4, dit.in_channels, size, size, generator=gen)  # [4, C, H, W]
    t, y = torch.tensor([0, 250, 500, 999]), torch.tensor([0, 0, 0, 0])
    ours = dit(x, t, conditioner(y))  # [4, C', H, W]
    theirs = model(x, timestep=t, class_labels=y).sample
    gap = (theirs - ours).abs().max().item() / ours.abs().max().item()
    return ("udiff export: note: this DiT uses facebookresearch/DiT's timestep frequencies (divided "
            "by half); diffusers' DiTTransformer2DModel divides by half - 1, so the exported model's "
            f"outputs differ from udiff's by up to {gap:.2%} of their largest value on a probe "
            "(its samples are close to, not equal to, udiff's)")
