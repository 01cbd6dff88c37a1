"""Acceptance: one training step on the RTL simulation (SimBackend, ``sim.run_gemm``) gives the same int32
GEMM outputs, the same loss and the same weight update as TorchBackend("cpu"), for shiftquant4 and luq4, on
a small MLP and a small CNN."""

import pytest
import torch
from torch.utils.data import TensorDataset

from host.backends import SimBackend
from host.gemm import record_gemms
from host.nn.models import MLP, SmallCNN
from host.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _step(model_fn, data, recipe, backend):
    torch.manual_seed(0)
    t = Trainer(model_fn(), recipe=recipe, backend=backend, optimizer="sgd", lr=0.5, lr_schedule="constant",
                batch_size=len(data.tensors[1]), seed=3, progress=False)
    with record_gemms() as log:
        hist = t.fit(data, 1)
    return t, hist[0]["train_loss"], log


CASES = {
    "mlp": (lambda: MLP((6,), 3, hidden=8, depth=2), TensorDataset(torch.randn(4, 6), torch.tensor([0, 1, 2, 1]))),
    "cnn": (lambda: SmallCNN((1, 4, 4), 3, width=2, hidden=4),
            TensorDataset(torch.randn(3, 1, 4, 4), torch.tensor([0, 2, 1]))),
}


@pytest.mark.parametrize("recipe", ["shiftquant4", "luq4"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_one_step_on_rtl_equals_cpu(model, recipe):
    model_fn, data = CASES[model]
    sim = SimBackend("icarus")
    t_sim, loss_sim, log_sim = _step(model_fn, data, recipe, sim)
    t_cpu, loss_cpu, log_cpu = _step(model_fn, data, recipe, "cpu")
    assert sim.calls >= len(log_sim) > 0
    assert [r.tag for r in log_sim] == [r.tag for r in log_cpu]
    assert {r.tag.split(".")[-1] for r in log_sim} == {"F", "B", "U"}
    for rs, rc in zip(log_sim, log_cpu):
        assert rs.backend.startswith("sim:") and rc.backend == "torch:cpu"
        assert torch.equal(rs.a, rc.a) and torch.equal(rs.b, rc.b), rs.tag
        assert rs.out.dtype == rc.out.dtype == torch.int32 and torch.equal(rs.out, rc.out), rs.tag
    assert loss_sim == loss_cpu
    for (name, p), (_, q) in zip(t_sim.model.state_dict().items(), t_cpu.model.state_dict().items()):
        if isinstance(p, torch.Tensor):
            assert torch.equal(p, q), name
