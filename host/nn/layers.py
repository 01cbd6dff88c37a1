"""Drop-in quantized layers: :class:`QuantLinear` and :class:`QuantConv2d` (``from_float`` converts).

A layer owns its quantization state -- the recipe, whether it is an edge (first/last) layer, the per-layer
random-stream counter, SAWB's sticky sign, DSQ's learned clips (parameters) and LBT's interval ``gamma`` --
and runs the three training GEMMs through :mod:`host.nn.functional`. Everything stateful is in the
``state_dict`` (buffers, parameters and ``get_extra_state``), so a checkpoint resumes bit for bit.

Random streams. Each stochastic quantization gets its own seed, a hash of (run seed, rank, layer index,
the layer's training-step counter, B or U path): no generator state to save, and two runs with the same
seeds draw the same bits on every backend (``hw.numerics`` stream).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from hw import numerics as nx
from host import quant as Q
from host.nn.functional import QuantConv2dFunction, QuantLinearFunction, _dx_channels_last
from host.nn.quantizers import check_recipe_layout, forward_operand, grad_operands
from host.recipes import Recipe, get_recipe

__all__ = ["QuantLayer", "QuantLinear", "QuantConv2d", "Flatten", "quant_seed"]

_PURPOSE = {"B": 1, "U": 2}


def quant_seed(base_seed: int, rank: int, layer_index: int, step: int, path: str) -> int:
    """The stream seed of one gradient quantization: a 32-bit hash of its coordinates.

    Uses the contract's mixer (``hw.numerics.rng_mix64``) twice over ``(base_seed, rank, layer, path)``
    and the step, so neighbouring steps/layers get unrelated streams.
    """
    key = ((base_seed & 0xFFFFFFFF) << 32) | ((rank & 0xFF) << 24) | ((layer_index & 0xFFFF) << 8) | _PURPOSE[path]
    return nx.rng_mix64(nx.rng_mix64(key) ^ (step & nx.RNG_MASK64)) & 0xFFFFFFFF


def _copy_parameters(q: nn.Module, mod: nn.Module) -> nn.Module:
    """Copy ``mod``'s weight (and bias) into the quantized twin ``q``; returns ``q``."""
    with torch.no_grad():
        q.weight.copy_(mod.weight)
        if mod.bias is not None:
            q.bias.copy_(mod.bias)
    return q


class QuantLayer(nn.Module):
    """Mixin of the quantized layers (not used on its own).

    Attributes
    ----------
    recipe : Recipe
        The model's recipe; the layer uses :meth:`effective_recipe` (edge layers and the FNT phase differ).
    edge : bool
        First or last layer: quantized with ``recipe.edge_recipe()`` (ALGORITHMS.md §1(b), [PROPOSED]).
    qname : str
        Name used in GEMM tags (``"<qname>.F|B|U"``) and reports.
    qindex : int
        Index used in the random-stream seeds.
    base_seed, rank : int
        Run seed and data-parallel rank (set by the trainer).
    phase : {"main", "fnt"}
        ``"fnt"`` = LUQ's high-precision fine-tuning phase (only the weights stay quantized).
    record : bool
        Keep the last backward's gradient and quantization info in :attr:`last_backward` (tests, plots).
    """

    def _init_quant(self, recipe, edge: bool, name: str, index: int) -> None:
        r = get_recipe(recipe)
        self.recipe: Recipe = r
        self.edge = bool(edge)
        self.qname = name or type(self).__name__
        self.qindex = int(index)
        self.base_seed = 0
        self.rank = 0
        self.phase = "main"
        self.record = False
        self.last_backward: dict | None = None
        eff = self.effective_recipe()
        check_recipe_layout(eff)
        self.register_buffer("qstep", torch.zeros((), dtype=torch.int64))
        self.register_buffer("sawb_neg", torch.zeros((), dtype=torch.bool))
        self.interval = None
        if eff.grad_quant == "lbt" and eff.lbt_adaptive:
            self.interval = Q.LBTInterval(bits=eff.grad_bits, eta=eff.lbt_eta, rho=eff.lbt_rho)
        if "dsq" in (eff.weight_quant, eff.act_quant):
            # learned clips, initialised from the first batch (§1(a): 3 std); trained by their own optimizer
            self.s_w = nn.Parameter(torch.ones(()))
            self.u_a = nn.Parameter(torch.ones(()))
            self.register_buffer("dsq_ready", torch.zeros((), dtype=torch.bool))
            self.register_buffer("dsq_signed", torch.zeros((), dtype=torch.bool))
        else:
            self.s_w = self.u_a = None

    # -- configuration ------------------------------------------------------------------------

    def effective_recipe(self) -> Recipe:
        r = self.recipe.edge_recipe() if self.edge else self.recipe
        if self.phase == "fnt":
            r = r.fnt_recipe()
        return r

    def quant_parameters(self) -> list[nn.Parameter]:
        """The quantizers' own parameters (DSQ clips), optimized separately (LBT ``q_optimizer``)."""
        return [p for p in (self.s_w, self.u_a) if p is not None]

    def extra_repr(self) -> str:
        r = self.effective_recipe()
        return f"{super().extra_repr()}, recipe={r.name}{', edge' if self.edge else ''}"

    def get_extra_state(self):
        return {"phase": self.phase, "interval": None if self.interval is None else self.interval.state_dict()}

    def set_extra_state(self, state):
        self.phase = state.get("phase", "main")
        if self.interval is not None and state.get("interval") is not None:
            self.interval.load_state_dict(state["interval"])

    # -- quantization ---------------------------------------------------------------------------

    def _quantize_inputs(self, x: torch.Tensor, w: torch.Tensor, r: Recipe):
        if r.act_quant == "dsq" or r.weight_quant == "dsq":
            self._init_dsq(x, w, r)
        signed = bool(self.dsq_signed) if self.u_a is not None else False
        x_ste, qx, neg = forward_operand(x, r.act_quant, r.fwd_bits, "act", r, clip=self.u_a, signed=signed,
                                         seen_negative=bool(self.sawb_neg))
        if self.training and neg != bool(self.sawb_neg):
            self.sawb_neg.fill_(neg)
        w_ste, qw, _ = forward_operand(w, r.weight_quant, r.fwd_bits, "weight", r, clip=self.s_w)
        return x_ste, qx, w_ste, qw

    @torch.no_grad()
    def _init_dsq(self, x, w, r: Recipe) -> None:
        if bool(self.dsq_ready):
            return
        signed = bool(x.min() < 0)     # DSQConv_a_mobile: symmetric range when the input has negatives
        self.dsq_signed.fill_(signed)
        self.s_w.copy_(Q.init_weight_clip(w.detach()))
        self.u_a.copy_(Q.init_activation_clip(x.detach(), signed=signed))
        self.dsq_ready.fill_(True)

    def _next_step(self) -> int:
        step = int(self.qstep)
        if self.training and torch.is_grad_enabled():
            self.qstep.add_(1)      # in place, as += is, without Module.__setattr__'s buffer re-registration
        return step

    def quantize_grad(self, g_mat: torch.Tensor, recipe: Recipe, step: int, rows_per_sample: int):
        """Called by the autograd function's backward: the B/U gradient operands for this step."""
        seeds = {p: quant_seed(self.base_seed, self.rank, self.qindex, step, p) for p in ("B", "U")}
        gops = grad_operands(g_mat, recipe, seed_b=seeds["B"], seed_u=seeds["U"],
                             rows_per_sample=rows_per_sample, interval=self.interval)
        if self.record:
            self.last_backward = {"grad": g_mat.detach().clone(), "info": gops.info, "step": step,
                                  "recipe": recipe.name, "rows_per_sample": rows_per_sample}
        return gops


class QuantLinear(QuantLayer, nn.Linear):
    """``nn.Linear`` whose F, B and U GEMMs are quantized per a recipe and run on a backend.

    Parameters
    ----------
    in_features, out_features, bias :
        As ``nn.Linear``.
    recipe : str or Recipe, default "fp32"
    edge : bool, default False
        First/last layer (quantized with the recipe's ``edge`` precision).
    name : str
        Tag of this layer's GEMMs.
    index : int
        Layer index for the random streams.
    """

    def __init__(self, in_features, out_features, bias=True, *, recipe="fp32", edge=False, name="",
                 index=0, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_quant(recipe, edge, name, index)

    @classmethod
    def from_float(cls, mod: nn.Linear, recipe="fp32", *, edge=False, name="", index=0) -> "QuantLinear":
        """A QuantLinear with ``mod``'s weights (copied)."""
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"QuantLinear.from_float expects an nn.Linear, got {type(mod).__name__}")
        q = cls(mod.in_features, mod.out_features, mod.bias is not None, recipe=recipe, edge=edge, name=name,
                index=index, device=mod.weight.device, dtype=mod.weight.dtype)
        return _copy_parameters(q, mod)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.effective_recipe()
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        x_ste, qx, w_ste, qw = self._quantize_inputs(x2, self.weight, r)
        y = QuantLinearFunction.apply(x_ste, w_ste, self, qx, qw, r, self._next_step())
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class QuantConv2d(QuantLayer, nn.Conv2d):
    """``nn.Conv2d`` (``groups=1``, zero padding) with quantized F/B/U GEMMs via im2col.

    Parameters are those of ``nn.Conv2d`` plus ``recipe``, ``edge``, ``name``, ``index`` (see
    :class:`QuantLinear`). ``padding`` must be numeric (or ``"valid"``).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", *, recipe="fp32", edge=False, name="", index=0,
                 device=None, dtype=None):
        if groups != 1:
            raise ValueError(f"QuantConv2d supports groups=1 only, got groups={groups}")
        if padding_mode != "zeros":
            raise ValueError(f"QuantConv2d supports padding_mode='zeros' only, got {padding_mode!r}")
        if padding == "valid":
            padding = 0
        if isinstance(padding, str):
            raise ValueError(f"QuantConv2d needs numeric padding (or 'valid'), got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self._init_quant(recipe, edge, name, index)

    @classmethod
    def from_float(cls, mod: nn.Conv2d, recipe="fp32", *, edge=False, name="", index=0) -> "QuantConv2d":
        """A QuantConv2d with ``mod``'s configuration and weights (copied)."""
        if not isinstance(mod, nn.Conv2d):
            raise TypeError(f"QuantConv2d.from_float expects an nn.Conv2d, got {type(mod).__name__}")
        q = cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                mod.groups, mod.bias is not None, mod.padding_mode, recipe=recipe, edge=edge, name=name,
                index=index, device=mod.weight.device, dtype=mod.weight.dtype)
        return _copy_parameters(q, mod)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"QuantConv2d expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        r = self.effective_recipe()
        x_ste, qx, w_ste, qw = self._quantize_inputs(x, self.weight, r)
        geom = (_pair(self.kernel_size), _pair(self.dilation), _pair(self.padding), _pair(self.stride))
        y = QuantConv2dFunction.apply(x_ste, w_ste, self, qx, qw, r, self._next_step(), geom)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y


def _channels_last(g: torch.Tensor) -> torch.Tensor:
    return g.contiguous(memory_format=torch.channels_last)


class Flatten(nn.Flatten):
    """``nn.Flatten`` (the same output) whose input gradient is handed over channels-last where the input
    is a channels-last tensor from a layout-free backward (``host.nn.functional._DX_IN_X_LAYOUT``: a
    quantized convolution's output through ReLU). Flatten's own backward gives the NCHW gradient, and
    ReLU's backward against its channels-last result then runs about 10x slower than this one copy; its
    result is the same either way (values and layout). :func:`host.nn.quantize_model` swaps ``nn.Flatten``
    for it."""

    @classmethod
    def from_float(cls, mod: nn.Flatten) -> "Flatten":
        return cls(mod.start_dim, mod.end_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and _dx_channels_last(x):
            x.register_hook(_channels_last)       # the gradient of x, before ReLU's backward reads it
        return super().forward(x)
