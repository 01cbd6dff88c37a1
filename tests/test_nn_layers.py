"""host.nn layers: exact integer GEMMs, float gradients equal PyTorch's, and per recipe the F/B/U GEMMs
consume exactly the quantized operands the recipe specifies (recorded with host.gemm.record_gemms)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from host import quant as Q
from host.backends.torch_backend import b_values
from host.gemm import record_gemms
from host.nn import L1BatchNorm2d, L1LayerNorm, QuantConv2d, QuantLinear, quantize_model
from host.recipes import get_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _conv_cols(x, ks=3, pad=1, stride=1, dil=1):
    cols = F.unfold(x, ks, dilation=dil, padding=pad, stride=stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


# ---------------------------------------------------------------------------------------------------
# fp32 through the same modules: PyTorch's values and gradients
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_fp32_linear_matches_pytorch(bias):
    torch.manual_seed(0)
    ref = nn.Linear(13, 7, bias=bias)
    q = QuantLinear.from_float(ref, "fp32")
    x = torch.randn(2, 5, 13, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = ref(x), q(x2)
    torch.testing.assert_close(y2, y)
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x.grad)
    torch.testing.assert_close(q.weight.grad, ref.weight.grad)
    if bias:
        torch.testing.assert_close(q.bias.grad, ref.bias.grad)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2), (2, (1, 0), 1)])
def test_fp32_conv_matches_pytorch(stride, padding, dilation):
    torch.manual_seed(1)
    ref = nn.Conv2d(3, 5, (3, 2), stride=stride, padding=padding, dilation=dilation)
    q = QuantConv2d.from_float(ref, "fp32")
    x = torch.randn(4, 3, 9, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = ref(x), q(x2)
    torch.testing.assert_close(y2, y, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(q.bias.grad, ref.bias.grad, atol=1e-5, rtol=1e-5)


def test_fp32_model_through_quant_modules_matches_pytorch():
    from host.nn.models import SmallCNN
    torch.manual_seed(2)
    ref = SmallCNN((1, 12, 12), 10)
    q = quantize_model(ref, "fp32", through_quant_modules=True)
    assert sum(isinstance(m, (QuantConv2d, QuantLinear)) for m in q.modules()) == 5
    x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 10, (6,))
    F.cross_entropy(ref(x), y).backward()
    F.cross_entropy(q(x), y).backward()
    for (n, p), (_, p2) in zip(ref.named_parameters(), q.named_parameters()):
        torch.testing.assert_close(p2.grad, p.grad, atol=1e-5, rtol=1e-4, msg=n)


# ---------------------------------------------------------------------------------------------------
# recorded operands, per recipe
# ---------------------------------------------------------------------------------------------------

RECIPES = ["int8", "shiftquant4", "luq4", "luq4-smp2", "luq4-fnt", "psq4", "bhq5", "lbt4", "lbt5", "naive4",
           "naive-log4"]


def _expected_forward(r, x, w, layer):
    """host.quant results for (X, W) under the recipe's forward quantizers."""
    if r.act_quant == "int_sym":
        return Q.int_symmetric(x, r.fwd_bits), Q.int_symmetric(w, r.fwd_bits)
    if r.act_quant == "int_unsigned":
        qa = Q.int_unsigned(x, r.fwd_bits) if float(x.min()) >= 0 else Q.int_symmetric(x, r.fwd_bits)
        return qa, Q.int_symmetric(w, r.fwd_bits)
    if r.act_quant == "sawb":
        return (Q.sawb(x, 4, kind="activation", signed_act_grid=r.sawb_signed_act_grid),
                Q.sawb(w, 4, kind="weight"))
    if r.act_quant == "int8_asym":
        return Q.int8_per_tensor(x, zero_aligned=False), Q.int8_per_tensor(w, zero_aligned=True)
    if r.act_quant == "dsq":
        return (Q.dsq_activation(x, layer.u_a.detach(), r.fwd_bits, signed=bool(layer.dsq_signed)),
                Q.dsq_weight(w, layer.s_w.detach(), r.fwd_bits))
    raise AssertionError(r.act_quant)


def _expected_grad(r, g, path, seed, rows, info):
    """(codes in G_mat layout, format, dequantized G) that the recipe feeds the B or U GEMM."""
    quant = r.grad_quant if path == "B" else r.u_quant
    bits = r.grad_bits if path == "B" else r.u_bits
    if quant == "int_sr":
        q = Q.shiftquant(g, bits, axis="row", e_max=0, seed=seed)
        return q.codes, q.dequantize()
    if quant == "int_rdn":
        q = Q.int_symmetric(g, bits)
        return q.codes, q.dequantize()
    if quant == "shiftquant":
        q = Q.shiftquant(g, bits, axis="col" if path == "B" else "row", e_max=r.shift_e_max, seed=seed)
        return q.codes, q.dequantize()
    if quant == "luq":
        if r.smp_samples > 1:
            q = Q.luq_smp(g, r.smp_samples, max_exp=r.luq_max_exp, seed=seed)
        else:
            q = Q.luq(g, max_exp=r.luq_max_exp, seed=seed, rounding=r.luq_rounding,
                      underflow=None if r.luq_underflow == "stochastic" else r.luq_underflow)
        return q.codes, q.dequantize()
    if quant == "lbt":
        q = Q.lbt(g, bits, gamma=info["gamma"], seed=seed)
        return q.codes, q.dequantize()
    if quant == "psq" and path == "U":
        q = Q.psq(g, bits, axis="col", seed=seed)
        return q.codes, q.dequantize()
    n = g.shape[0] // rows
    if quant == "psq":
        q = Q.psq(g.reshape(n, -1), bits, axis="row", seed=seed)
    else:
        q = Q.bhq(g.reshape(n, -1), bits, seed=seed)
    return q.codes.reshape(g.shape), q.dequantize().reshape(g.shape)


def _rec(log, tag):
    return [g for g in log if g.tag == tag or g.tag.startswith(tag + "#")]


def _check_layer(r, layer, x_in, out, log, conv):
    """Check the recorded F/B/U operands of one layer against host.quant and dW/dX against a float
    reference built from host.quant's own dequantize()."""
    name = layer.qname
    x = x_in.detach()
    qx, qw = _expected_forward(r, x, layer.weight.detach(), layer)
    m = layer.weight.shape[0]
    xc = _conv_cols(qx.codes.float()).to(qx.codes.dtype) if conv else qx.codes.reshape(-1, x.shape[-1])
    wc = qw.codes.reshape(m, -1)
    (f,) = _rec(log, f"{name}.F")
    assert torch.equal(f.a, xc) and torch.equal(f.b, wc.t())
    assert torch.equal(f.out.long(), f.a.long() @ f.b.long())

    lb = layer.last_backward
    g = lb["grad"]
    assert torch.equal(g, out.grad.permute(0, 2, 3, 1).reshape(-1, m) if conv else out.grad.reshape(-1, m))
    info = lb["info"]
    rows = lb["rows_per_sample"]
    exp_b, deq_b = _expected_grad(r, g, "B", info["seed_b"], rows, info["B"])
    exp_u, deq_u = _expected_grad(r, g, "U", info["seed_u"], rows, info["U"])
    if r.bifurcate:
        assert info["seed_b"] != info["seed_u"]
    else:
        assert info["seed_b"] == info["seed_u"] and torch.equal(exp_b, exp_u)     # one sample (§1(b), §4(b))

    recs_b, recs_u = _rec(log, f"{name}.B"), _rec(log, f"{name}.U")
    samples_b = exp_b if exp_b.dim() == 3 else exp_b.unsqueeze(0)
    samples_u = exp_u if exp_u.dim() == 3 else exp_u.unsqueeze(0)
    assert len(recs_b) == len(samples_b) and len(recs_u) == len(samples_u)
    for rec, codes in zip(recs_b, samples_b):
        assert torch.equal(rec.a, wc.t()) and torch.equal(rec.b, codes.t())
        assert torch.equal(rec.out.long(), rec.a.long() @ b_values(rec.b, rec.b_format, rec.b_shift).long())
    for rec, codes in zip(recs_u, samples_u):
        assert torch.equal(rec.a, xc.t()) and torch.equal(rec.b, codes)
        assert torch.equal(rec.out.long(), rec.a.long() @ b_values(rec.b, rec.b_format, rec.b_shift).long())

    # dW = Q_G^U(G)^T Q_A(X) and dX = Q_G^B(G) Q_W(W) from host.quant's dequantized tensors
    xd = _conv_cols(qx.dequantize()) if conv else qx.dequantize().reshape(-1, x.shape[-1])
    dw_ref = (deq_u.double().t() @ xd.double()).float().reshape(layer.weight.shape)
    torch.testing.assert_close(layer.weight.grad, dw_ref, rtol=2e-4, atol=1e-5 * float(dw_ref.abs().max()))
    return deq_b, qw


@pytest.mark.parametrize("recipe", RECIPES)
def test_linear_gemms_consume_recipe_operands(recipe):
    torch.manual_seed(3)
    r = get_recipe(recipe)
    layer = QuantLinear(24, 12, recipe=r, name="fc")
    layer.record = True
    x = torch.relu(torch.randn(16, 24)).requires_grad_(True)
    with record_gemms() as log:
        out = layer(x)
        out.retain_grad()
        (out * torch.randn_like(out)).sum().backward()
    deq_b, qw = _check_layer(r, layer, x, out, log, conv=False)
    dx_ref = (deq_b.double() @ qw.dequantize().double()).float()
    if r.act_quant == "dsq":       # DSQ's STE masks clipped activations (§1(a))
        return
    torch.testing.assert_close(x.grad, dx_ref, rtol=2e-4, atol=1e-5 * float(dx_ref.abs().max()))


@pytest.mark.parametrize("recipe", RECIPES)
def test_conv_gemms_consume_recipe_operands(recipe):
    torch.manual_seed(4)
    r = get_recipe(recipe)
    layer = QuantConv2d(3, 6, 3, padding=1, bias=False, recipe=r, name="conv")
    layer.record = True
    x = torch.relu(torch.randn(4, 3, 6, 5)).requires_grad_(True)
    with record_gemms() as log:
        out = layer(x)
        out.retain_grad()
        (out * torch.randn_like(out)).sum().backward()
    deq_b, qw = _check_layer(r, layer, x, out, log, conv=True)
    if r.act_quant == "dsq":
        return
    cols = (deq_b.double() @ qw.dequantize().reshape(6, -1).double()).float()
    dx_ref = F.fold(cols.reshape(4, 30, -1).transpose(1, 2), (6, 5), 3, padding=1)
    torch.testing.assert_close(x.grad, dx_ref, rtol=2e-4, atol=1e-5 * float(dx_ref.abs().max()))


def test_shiftquant4_activation_grid_follows_the_sign():
    """UINT4 codes for a non-negative (post-ReLU) input, symmetric INT4 once the input has a negative."""
    torch.manual_seed(5)
    layer = QuantLinear(8, 4, recipe="shiftquant4", name="fc")
    for x, lo, hi in ((torch.relu(torch.randn(6, 8)), 0, 15), (torch.randn(6, 8), -7, 7)):
        with record_gemms() as log:
            layer(x).sum().backward()
        (f,) = _rec(log, "fc.F")
        assert int(f.a.min()) >= lo and int(f.a.max()) == hi
        (u,) = _rec(log, "fc.U")
        assert torch.equal(u.a, f.a.t())                    # U consumes the same quantized X
    with pytest.raises(ValueError, match="int_unsigned' is for activations"):
        QuantLinear(8, 4, recipe=get_recipe("shiftquant4", weight_quant="int_unsigned"))(torch.ones(2, 8))


def test_forward_equals_dequantized_product_with_zero_points():
    """StatQuant's asymmetric INT8 forward (zero-point offsets) and a padded conv: the exact integer GEMM
    plus the column-sum corrections equals the float product of host.quant's dequantized tensors."""
    torch.manual_seed(5)
    layer = QuantConv2d(2, 4, 3, padding=1, bias=False, recipe="psq4")
    x = torch.randn(3, 2, 5, 5)        # signed input: the activation zero-point is far from code 0
    y = layer(x)
    qx = Q.int8_per_tensor(x, zero_aligned=False)
    qw = Q.int8_per_tensor(layer.weight.detach(), zero_aligned=True)
    ref = F.conv2d(qx.dequantize().double(), qw.dequantize().double(), padding=1).float()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_lbt_interval_updates_and_checkpoints():
    torch.manual_seed(6)
    layer = QuantLinear(8, 8, recipe="lbt4", name="fc")
    for _ in range(3):
        layer(torch.relu(torch.randn(32, 8))).sum().backward()
    assert layer.interval.calibrated and layer.interval.num_updates == 2
    clone = QuantLinear(8, 8, recipe="lbt4", name="fc")
    clone.load_state_dict(layer.state_dict())
    assert clone.interval.gamma == layer.interval.gamma and int(clone.qstep) == 3
    assert bool(clone.dsq_ready) and torch.equal(clone.s_w, layer.s_w)


def test_quantize_model_edges_and_norms():
    from host.nn.models import SmallCNN
    m = quantize_model(SmallCNN((1, 8, 8), 10), "shiftquant4")
    layers = [mod for mod in m.modules() if isinstance(mod, (QuantConv2d, QuantLinear))]
    assert [lay.edge for lay in layers] == [True, False, False, False, True]
    assert layers[0].effective_recipe().name == "int8" and layers[1].effective_recipe().name == "shiftquant4"
    assert sum(isinstance(mod, L1BatchNorm2d) for mod in m.modules()) == 3
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    assert quantize_model(SmallCNN((1, 8, 8), 10), "fp32").__class__.__name__ == "SmallCNN"


def test_l1_layer_norm_drop_in():
    ln = nn.LayerNorm(6)
    q = L1LayerNorm.from_float(ln)
    x = torch.randn(3, 6)
    torch.testing.assert_close(q(x), Q.l1_layer_norm(x, 6, ln.weight, ln.bias))


def test_bad_recipe_layout_is_refused():
    with pytest.raises(ValueError, match="bifurcate"):
        QuantLinear(4, 4, recipe=get_recipe("shiftquant4", bifurcate=False))


def test_fnt_phase_keeps_only_the_weights_quantized():
    """LUQ FNT (§4): activations and gradients in high precision, the weights still SAWB INT4."""
    from host.nn import set_quant_phase
    torch.manual_seed(7)
    layer = QuantLinear(10, 6, bias=False, recipe="luq4-fnt", name="fc")
    set_quant_phase(layer, "fnt")
    x = torch.randn(5, 10, requires_grad=True)
    with record_gemms() as log:
        y = layer(x)
        y.backward(torch.ones_like(y))
    assert log == []                                   # no integer GEMM: one side is float in every GEMM
    wq = Q.sawb(layer.weight.detach(), 4, kind="weight").dequantize()
    torch.testing.assert_close(y, x.detach() @ wq.t())
    torch.testing.assert_close(x.grad, torch.ones(5, 6) @ wq)
    torch.testing.assert_close(layer.weight.grad, torch.ones(5, 6).t() @ x.detach())


@pytest.mark.parametrize("k,d,p,s", [((3, 3), (1, 1), (1, 1), (1, 1)), ((2, 3), (2, 1), (1, 2), (2, 3)),
                                     ((1, 1), (1, 1), (0, 0), (2, 2)), ((3, 2), (1, 2), (0, 1), (1, 2))])
def test_im2col_equals_unfold_for_any_geometry(k, d, p, s):
    from host.nn.functional import im2col
    t = torch.randn(2, 3, 8, 7)
    ref = F.unfold(t, k, dilation=d, padding=p, stride=s)
    assert torch.equal(im2col(t, k, d, p, s), ref.transpose(1, 2).reshape(-1, ref.shape[1]))
    codes = torch.randint(-8, 8, (2, 3, 8, 7), dtype=torch.int8)
    assert torch.equal(im2col(codes, k, d, p, s).float(), im2col(codes.float(), k, d, p, s))


@pytest.mark.parametrize("producer", ["relu", "batchnorm", "nchw-relu"])
def test_flatten_hands_relu_its_gradient_channels_last(producer, monkeypatch):
    """host.nn.layers.Flatten (what quantize_model puts in place of nn.Flatten): the same output and the same
    gradients as nn.Flatten, bit for bit; the input gradient goes channels-last only to a channels-last
    ReLU output (whose backward gives the same values and layout either way), never to another producer or
    an NCHW tensor, nor with the layout switch off (the reference trajectory of tests/test_step_exact.py)."""
    import host.nn.functional as HF
    from host.nn.layers import Flatten

    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(6, 4, 5, 5, generator=g)
    w = torch.randn(3, 100, generator=g)
    bn = nn.BatchNorm2d(4)

    def run(flatten, switch=True):
        monkeypatch.setattr(HF, "_DX_IN_X_LAYOUT", switch)
        x = x0.clone() if producer == "nchw-relu" else x0.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        h = bn(x) if producer == "batchnorm" else torch.relu(x)
        seen = []
        y = flatten(h)
        h.register_hook(lambda gr: seen.append(gr.is_contiguous(memory_format=torch.channels_last)
                                               and not gr.is_contiguous()))
        (y @ w.t()).square().sum().backward()
        return y, x.grad, bn.weight.grad.clone() if producer == "batchnorm" else None, seen[0]

    ref = run(nn.Flatten())
    for switch in (True, False):
        bn.zero_grad()
        got = run(Flatten(), switch)
        assert torch.equal(got[0], ref[0]) and got[1].stride() == ref[1].stride() and torch.equal(got[1], ref[1])
        assert got[2] is None or torch.equal(got[2], ref[2])
        assert got[3] == (switch and producer == "relu") and not ref[3]
    assert isinstance(quantize_model(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "luq4")[0], Flatten)
