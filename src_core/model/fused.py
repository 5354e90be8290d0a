"""Linear layers fused with their activation or residual add, for bfloat16 on CPUs.

PyTorch's own CPU path for ``torch.compile`` (inductor with freezing) calls
oneDNN's fused linear kernels through ``torch.ops.mkldnn._linear_pointwise``;
we call the same op directly, without compiling. It writes the bias, the GELU or
the residual add in the product's epilogue, instead of one more pass over a
tensor of tokens x width each (on the 2-core Xeon with AMX, vit_b's MLP goes
from 18.7 to 11.5 ms per block). Used only where it pays and is safe: bfloat16
inputs and weights, on a CPU, autograd off. Everywhere else (float32, GPUs,
training, a torch built without oneDNN) the same functions run the plain
``nn.Linear`` sequence, so callers have one code path.
"""

from __future__ import annotations

import torch
from torch import nn


def _fused_op():
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


_LINEAR_POINTWISE = _fused_op()


def fusable(x: torch.Tensor, layer: nn.Linear) -> bool:
    """Whether ``layer(x)`` runs through the fused oneDNN kernel."""
    return (
        _LINEAR_POINTWISE is not None
        and x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and layer.weight.dtype == torch.bfloat16
        and not torch.is_grad_enabled()
    )


def _is_exact_gelu(activation: nn.Module) -> bool:
    return isinstance(activation, nn.GELU) and activation.approximate == "none"


def linear_act(x: torch.Tensor, layer: nn.Linear, activation: nn.Module | None = None) -> torch.Tensor:
    """``activation(layer(x))``, fused when the activation is the exact GELU (or absent)."""
    if fusable(x, layer) and (activation is None or _is_exact_gelu(activation)):
        attr = "none" if activation is None else "gelu"
        return _LINEAR_POINTWISE(x, layer.weight, layer.bias, attr, [], "none")
    out = layer(x)
    return out if activation is None else activation(out)


def linear_add(x: torch.Tensor, layer: nn.Linear, residual: torch.Tensor) -> torch.Tensor:
    """``residual + layer(x)``, the add fused into the product."""
    if fusable(x, layer) and residual.dtype == x.dtype and residual.shape[:-1] == x.shape[:-1]:
        return _LINEAR_POINTWISE.binary(x, residual.contiguous(), layer.weight, layer.bias, "add")
    return residual + layer(x)
