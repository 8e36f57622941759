"""A frozen base stored in fewer bytes: weight-only int8 or fp8 (optimum-quanto), or bf16.

A LoRA run trains adapters on a base it never updates, so the base's weights only have to be
read: stored as int8 (or fp8 e4m3) with a per-output-channel scale, they take a quarter of their
fp32 bytes, and each quantized layer dequantizes its weight as it runs. optimum-quanto, not
torchao: a UNet's weights are mostly convolutions (68.5% of Stable Diffusion 1.5's), and quanto
quantizes ``Conv2d`` as well as ``Linear`` on the CPU and on CUDA; torchao 0.18's int8 tensor has
no convolution, and its fp8 convolution needs a CUDA kernel package. The adapters stay fp32 (they
are added after quantizing; quanto's layers are ``nn.Linear`` subclasses that peft wraps).

bf16 stores the base in bfloat16; its layers then compute in bf16, so it goes with
``--mixed-precision bf16`` (autocast casts the fp32 adapters and activations to meet it).

A frozen given autoencoder (``--autoencoder-from``, or another run's) is stored the same way
(:func:`frozen_autoencoder`) once it has encoded the latent cache in fp32: stage 2, sampling and
serving then hold it at a quarter (int8/fp8) or half (bf16) of its bytes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UdiffError

PRECISIONS = ("fp32", "bf16", "int8", "fp8")
QUANTIZED = ("int8", "fp8")
EXTRA = "pip install 'udiff-core[lowmem]'"


def require(precision: str) -> None:
    """One line when the library for ``precision`` is missing."""
    if precision in QUANTIZED:
        try:
            import optimum.quanto  # noqa: F401
        except ImportError:
            raise UdiffError(f"--base-precision {precision} needs optimum-quanto: {EXTRA}") from None


def _qtype(precision: str):
    from optimum.quanto import qfloat8_e4m3fn, qint8

    return {"int8": qint8, "fp8": qfloat8_e4m3fn}[precision]


@torch.no_grad()
def freeze_base(module: nn.Module, precision: str) -> nn.Module:
    """Store ``module``'s weights at ``precision``, in place, layer by layer (each layer's fp32
    weight is freed as its quantized copy is made, so the whole model is never held twice).
    Every parameter ends frozen; call before the adapters are added."""
    require(precision)
    module.requires_grad_(False)
    for name, child in list(module.named_modules()):
        if name and next(child.children(), None) is None:
            _store(module, name, child, precision)
    return module


def _store(root: nn.Module, name: str, leaf: nn.Module, precision: str) -> None:
    """One leaf layer at ``precision`` (int8/fp8: Linear and Conv2d; the rest stays fp32)."""
    if precision == "bf16":
        leaf.to(torch.bfloat16)
    elif precision in QUANTIZED and isinstance(leaf, (nn.Linear, nn.Conv2d)) \
            and not _is_quantized(leaf):
        from optimum.quanto import freeze, quantize

        parent, _, attr = name.rpartition(".")
        holder = root.get_submodule(parent) if parent else root
        quantize(holder, weights=_qtype(precision), include=[attr])  # replaces holder.<attr>
        layer = getattr(holder, attr)
        freeze(layer)
        if isinstance(leaf, nn.Conv2d) and leaf.padding_mode == "zeros" and \
                not isinstance(leaf.padding, str):
            layer.forward = _FrozenConv.bind(layer)


class _FrozenConv(torch.autograd.Function):
    """A frozen quantized convolution that keeps its quantized weight for backward. quanto's
    convolution dequantizes the weight and calls the float one, so autograd saves the fp32
    weight of every layer for the input's gradient -- the whole fp32 base again (measured: an
    int8 Stable Diffusion 1.5 UNet's LoRA step peaked at 0.72x the fp32 base's). Here backward
    dequantizes once more instead; the weight needs no gradient (frozen)."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer, ctx.shape, ctx.dtype = layer, x.shape, x.dtype
        w = layer.weight.dequantize().to(x.dtype)
        return nn.functional.conv2d(x, w, layer.bias if layer.bias is None else
                                    layer.bias.to(x.dtype), layer.stride, layer.padding,
                                    layer.dilation, layer.groups)

    @staticmethod
    def backward(ctx, grad):
        m = ctx.layer
        w = m.weight.dequantize().to(grad.dtype)
        x_grad = torch.nn.grad.conv2d_input(ctx.shape, w, grad, m.stride, m.padding,
                                            m.dilation, m.groups)
        return x_grad.to(ctx.dtype), None

    @staticmethod
    def bind(layer):
        return lambda x: _FrozenConv.apply(x, layer)


def _is_quantized(module: nn.Module) -> bool:
    return type(module).__module__.startswith("optimum.quanto")


def quantized_layers(module: nn.Module) -> int:
    return sum(1 for m in module.modules() if _is_quantized(m))


def weight_bytes(module: nn.Module) -> int:
    """Bytes the module's weights and buffers take as stored (quantized data and scales)."""
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        inner = [getattr(t, a) for a in ("_data", "_scale") if hasattr(t, a)]
        total += sum(x.numel() * x.element_size() for x in inner) if inner else \
            t.numel() * t.element_size()
    return total


def build_frozen(build, precision: str) -> nn.Module:
    """``build()`` on the meta device, then leaf by leaf: materialised with its own default
    initialisation and stored at ``precision`` at once -- so the fp32 model never exists whole
    and the peak is the stored base plus one layer (a benchmark's random base, built the way a
    base is read layer by layer from its file). Modules holding buffers are built for real."""
    require(precision)
    if precision == "fp32":
        return build().requires_grad_(False)
    with torch.device("meta"):
        module = build()
    if any(True for _ in module.buffers()):
        return freeze_base(build(), precision)
    with torch.no_grad():
        for name, child in list(module.named_modules()):
            if name and next(child.children(), None) is None:
                if next(child.parameters(recurse=False), None) is not None:
                    child.to_empty(device="cpu", recurse=False)
                    child.reset_parameters()
                _store(module, name, child, precision)
    return module.requires_grad_(False)


def frozen_autoencoder(module: nn.Module, precision: str) -> nn.Module:
    """A frozen autoencoder at ``precision``: int8/fp8 layers as a LoRA base's; bf16 weights
    with ``encode``/``decode`` taking and giving the caller's dtype (they run outside autocast).
    """
    module.eval().requires_grad_(False)
    if precision == "bf16":
        module.to(torch.bfloat16)
        for name in ("encode", "decode"):
            method = getattr(module, name)
            setattr(module, name, lambda x, _m=method: _m(x.to(torch.bfloat16)).to(x.dtype))
        return module
    return module if precision == "fp32" else freeze_base(module, precision)


def reduced(module: nn.Module) -> bool:
    """Whether ``module`` holds quantized or bf16 weights (its file holds the fp32 ones)."""
    return quantized_layers(module) > 0 or any(p.dtype == torch.bfloat16
                                               for p in module.parameters())


def for_inference(module: nn.Module, precision: str) -> nn.Module:
    """A loaded LoRA base as its run trained it, for sampling outside autocast: int8/fp8 stored
    quantized (the serving memory saved too); bf16 rounded to bf16 values, kept in fp32 so the
    fp32 adapters and activations meet it."""
    if precision == "bf16":
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(p.to(torch.bfloat16))
        return module.requires_grad_(False)
    return freeze_base(module, precision)
