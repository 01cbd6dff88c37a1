"""``quantize_model(model, recipe)``: swap a float model's GEMM layers (and norms) for quantized ones."""

from __future__ import annotations

import copy

import torch.nn as nn

from host.nn.layers import Flatten, QuantConv2d, QuantLayer, QuantLinear
from host.nn.norm import L1BatchNorm2d, L1LayerNorm
from host.recipes import get_recipe

__all__ = ["quantize_model", "quant_layers", "set_quant_seed", "set_quant_phase", "quant_parameters"]


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def quantize_model(model: nn.Module, recipe, *, inplace: bool = False, through_quant_modules: bool = False,
                   seed: int = 0) -> nn.Module:
    """Convert ``model`` for training with ``recipe``.

    Every ``nn.Linear`` and ``nn.Conv2d`` becomes a :class:`QuantLinear` / :class:`QuantConv2d`
    (``from_float``: weights copied). The first and the last of them, in module-definition order, are the
    *edge* layers quantized at the recipe's ``edge`` precision. With ``recipe.norm == "l1"`` every
    ``BatchNorm1d/2d`` becomes :class:`L1BatchNorm2d` and every ``LayerNorm`` :class:`L1LayerNorm`. Every
    ``nn.Flatten`` becomes :class:`host.nn.layers.Flatten` (the same values; a faster gradient layout).

    Parameters
    ----------
    model : nn.Module
    recipe : str or Recipe
    inplace : bool, default False
        Modify ``model`` instead of a deep copy.
    through_quant_modules : bool, default False
        For the unquantized ``fp32`` recipe the model is returned unchanged (plain PyTorch layers, the
        honest baseline) unless this is set, which converts anyway (the same modules, float GEMMs).
    seed : int
        Run seed of the quantizers' random streams (see :func:`set_quant_seed`).

    Returns
    -------
    nn.Module
    """
    r = get_recipe(recipe)
    m = model if inplace else copy.deepcopy(model)
    if not r.quantized and not through_quant_modules:
        return m
    gemms = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, (nn.Linear, nn.Conv2d))
             and not isinstance(mod, QuantLayer)]
    for i, (name, mod) in enumerate(gemms):
        edge = i in (0, len(gemms) - 1)
        cls = QuantLinear if isinstance(mod, nn.Linear) else QuantConv2d
        _set(m, name, cls.from_float(mod, r, edge=edge, name=name, index=i))
    for name, mod in list(m.named_modules()):
        if type(mod) is nn.Flatten:
            _set(m, name, Flatten.from_float(mod))
    if r.norm == "l1":
        for name, mod in list(m.named_modules()):
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                _set(m, name, L1BatchNorm2d.from_float(mod))
            elif isinstance(mod, nn.LayerNorm):
                _set(m, name, L1LayerNorm.from_float(mod))
    set_quant_seed(m, seed)
    return m


def quant_layers(model: nn.Module) -> list[QuantLayer]:
    """The quantized GEMM layers of a model, in module order."""
    return [mod for mod in model.modules() if isinstance(mod, QuantLayer)]


def set_quant_seed(model: nn.Module, seed: int, rank: int = 0) -> None:
    """Set the run seed (and data-parallel rank) of every quantized layer's random streams."""
    for layer in quant_layers(model):
        layer.base_seed, layer.rank = int(seed), int(rank)


def set_quant_phase(model: nn.Module, phase: str) -> None:
    """``"main"`` or ``"fnt"`` (LUQ high-precision fine-tuning: only the weights stay quantized)."""
    if phase not in ("main", "fnt"):
        raise ValueError(f"phase must be 'main' or 'fnt', got {phase!r}")
    for layer in quant_layers(model):
        layer.phase = phase


def quant_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The quantizers' own learned parameters (DSQ clips)."""
    return [p for layer in quant_layers(model) for p in layer.quant_parameters()]
