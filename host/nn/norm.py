"""L1 normalization layers (ShiftQuant's companion, ALGORITHMS.md §3(a), [PROPOSED] reading).

Thin ``nn.Module`` wrappers over the golden model :func:`host.quant.l1_batch_norm` /
:func:`host.quant.l1_layer_norm` (float forward, analytic backward: no square or square root anywhere),
as drop-ins for ``nn.BatchNorm2d`` / ``nn.LayerNorm`` with ``from_float``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from host import quant as Q

__all__ = ["L1BatchNorm2d", "L1LayerNorm"]


class L1BatchNorm2d(nn.Module):
    """Per-channel L1 batch normalization: ``y = w (x - mu) / (kappa * mean|x - mu| + eps) + b``.

    Statistics over ``(N, H, W)`` in training (running EMA of ``mu`` and ``kappa * sigma_1`` kept in
    ``running_mean`` / ``running_scale``, the latter playing ``sqrt(running_var)``); the running values in
    evaluation. Accepts ``(N, C)`` and ``(N, C, *)`` input.

    Parameters
    ----------
    num_features : int
    eps : float, default 1e-5
    momentum : float, default 0.1
    affine : bool, default True
    kappa : float, default sqrt(pi/2)
        ``kappa * sigma_1`` equals the standard deviation for Gaussian data ([PROPOSED]; alternative 1).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 kappa: float = Q.KAPPA, device=None, dtype=None):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.kappa = num_features, eps, momentum, kappa
        fk = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **fk))
            self.bias = nn.Parameter(torch.zeros(num_features, **fk))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features, **fk))
        self.register_buffer("running_scale", torch.ones(num_features, **fk))

    @classmethod
    def from_float(cls, bn: nn.modules.batchnorm._BatchNorm) -> "L1BatchNorm2d":
        """Replace a BatchNorm: affine parameters copied, ``running_scale = sqrt(running_var)``."""
        q = cls(bn.num_features, bn.eps, bn.momentum if bn.momentum is not None else 0.1, bn.affine,
                device=bn.running_mean.device if bn.running_mean is not None else None)
        with torch.no_grad():
            if bn.affine:
                q.weight.copy_(bn.weight)
                q.bias.copy_(bn.bias)
            if bn.running_mean is not None:
                q.running_mean.copy_(bn.running_mean)
                q.running_scale.copy_(bn.running_var.sqrt())
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Q.l1_batch_norm(x, self.running_mean, self.running_scale, self.weight, self.bias,
                               training=self.training, momentum=self.momentum, eps=self.eps, kappa=self.kappa)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, kappa={self.kappa:.4f}"


class L1LayerNorm(nn.Module):
    """L1 layer normalization over the trailing ``normalized_shape`` dims (drop-in for ``nn.LayerNorm``).

    Parameters
    ----------
    normalized_shape : int or tuple
    eps : float, default 1e-5
    elementwise_affine : bool, default True
    kappa : float, default sqrt(pi/2)
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 kappa: float = Q.KAPPA, device=None, dtype=None):
        super().__init__()
        ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps, self.kappa = ns, eps, kappa
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(ns, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(ns, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_float(cls, ln: nn.LayerNorm) -> "L1LayerNorm":
        q = cls(ln.normalized_shape, ln.eps, ln.elementwise_affine,
                device=ln.weight.device if ln.weight is not None else None)
        if ln.elementwise_affine:
            with torch.no_grad():
                q.weight.copy_(ln.weight)
                if ln.bias is not None:
                    q.bias.copy_(ln.bias)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Q.l1_layer_norm(x, self.normalized_shape, self.weight, self.bias, eps=self.eps, kappa=self.kappa)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, kappa={self.kappa:.4f}"
