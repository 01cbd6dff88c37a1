"""host.trainer.Trainer: fit/evaluate, bit-identical resume, metrics and plots, failure handling."""

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from host.backends import BackendError, TorchBackend
from host.data import load_dataset
from host.nn.models import SmallCNN
from host.trainer import BackendFailure, Trainer, TrainingDiverged, fnt_lr

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits")
    # a small slice keeps each epoch to a few steps
    x, y = d.train.tensors
    xt, yt = d.test.tensors
    return TensorDataset(x[:192], y[:192]), TensorDataset(xt[:100], yt[:100])


def _model(seed=0):
    torch.manual_seed(seed)
    return SmallCNN((1, 8, 8), 10, width=4, hidden=16)


def _trainer(recipe, out=None, **kw):
    kw.setdefault("batch_size", 32)
    kw.setdefault("plots", False)
    kw.setdefault("lr", 3e-3)
    return Trainer(_model(), recipe=recipe, seed=7, out_dir=out, progress=False, **kw)


def _same_state(a: Trainer, b: Trainer):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sb[k]), k
        else:
            assert sa[k] == sb[k], k


@pytest.mark.parametrize("recipe", ["luq4", "lbt4", "shiftquant4"])
def test_resume_is_bit_identical(tmp_path, digits, recipe):
    train, test = digits
    full = _trainer(recipe, tmp_path / "full")
    full.fit(train, 2, val_data=test)
    part = _trainer(recipe, tmp_path / "part", backend=FlakyBackend(ok_calls=_mid_epoch_2(recipe, train)))
    with pytest.raises(BackendFailure):               # the same run killed in epoch 2; the epoch-1
        part.fit(train, 2, val_data=test)             # checkpoint is on disk
    resumed = _trainer(recipe, tmp_path / "part")
    resumed.fit(train, 2, val_data=test, resume=True)
    _same_state(full, resumed)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_metrics_checkpoint_and_plots(tmp_path, digits):
    train, test = digits
    t = _trainer("luq4", tmp_path, plots=True)
    hist = t.fit(train, 2, val_data=test)
    assert [h["epoch"] for h in hist] == [1, 2] and all(0 <= h["val_acc"] <= 1 for h in hist)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["recipe"]["name"] == "luq4" and len(doc["history"]) == 2
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("epoch,phase,train_loss")
    for f in ("checkpoint.pt", "curves.png", "grad_hist.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    ev = t.evaluate(test)
    assert ev["n"] == 100 and ev["accuracy"] == pytest.approx(hist[-1]["val_acc"])


def test_resume_refuses_another_recipe(tmp_path, digits):
    train, _ = digits
    _trainer("luq4", tmp_path).fit(train, 1)
    with pytest.raises(ValueError, match="recipe"):
        _trainer("shiftquant4", tmp_path).fit(train, 2, resume=True)


def test_nan_loss_stops_naming_the_step(digits):
    train, _ = digits
    x, y = train.tensors
    x = x.clone()
    x[101, 0, 0, 0] = float("nan")                  # find its step through the epoch's shuffle
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(7 * 1_000_003))
    step = int((perm == 101).nonzero()) // 32 + 1
    for recipe in ("fp32", "shiftquant4"):        # fp32: NaN loss; quantized: the quantizer refuses NaN
        t = _trainer(recipe)
        with pytest.raises(TrainingDiverged, match=f"epoch 1, step {step} "):
            t.fit(TensorDataset(x, y), 1)


class FlakyBackend(TorchBackend):
    """A CPU backend that fails (like an unplugged board) after ``ok_calls`` GEMMs."""

    def __init__(self, ok_calls):
        super().__init__("cpu")
        self.left = ok_calls
        self.name = "flaky"

    def gemm(self, *args, **kw):
        self.left -= 1
        if self.left < 0:
            raise BackendError("device disconnected")
        return super().gemm(*args, **kw)

    def describe(self):
        return "flaky-board"


def _mid_epoch_2(recipe, train) -> int:
    """Backend GEMM calls that end in the middle of epoch 2: 1.5 epochs' worth, counted on a run (how
    many GEMMs reach the backend depends on which ones run as exact CPU convolutions instead)."""
    counter = FlakyBackend(ok_calls=10 ** 9)
    _trainer(recipe, backend=counter).fit(train, 1)
    return (10 ** 9 - counter.left) * 3 // 2


def test_backend_failure_keeps_checkpoint_and_fallback_continues(tmp_path, digits):
    train, test = digits
    ok_calls = _mid_epoch_2("luq4", train)
    t = _trainer("luq4", tmp_path, backend=FlakyBackend(ok_calls=ok_calls))
    t.fit(train, 1)                                   # epoch 1 fine
    ck = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(BackendFailure, match=r"flaky-board failed at epoch 2, step \d+ .*after epoch 1\) is intact"):
        t.fit(train, 3)
    assert (tmp_path / "checkpoint.pt").read_bytes() == ck

    ref = _trainer("luq4", tmp_path / "ref")
    ref.fit(train, 3)
    fb = _trainer("luq4", tmp_path / "fb", backend=FlakyBackend(ok_calls=ok_calls), fallback="cpu")
    with pytest.warns(RuntimeWarning, match="restarting epoch 2 on torch:cpu"):
        fb.fit(train, 3)
    _same_state(ref, fb)                             # the failed epoch was redone from its start on CPU
    assert [h["backend"] for h in fb.history] == ["flaky-board", "torch:cpu", "torch:cpu"]


def test_fnt_phase_and_schedule(digits):
    train, _ = digits
    t = _trainer("luq4-fnt")
    hist = t.fit(train, 1)
    assert [h["phase"] for h in hist] == ["main", "fnt"]
    assert fnt_lr(5, 10, 0.1, 1.0) == pytest.approx(1.0) and fnt_lr(10, 10, 0.1, 1.0) == pytest.approx(0.1)
    assert fnt_lr(1, 10, 0.1, 1.0) == pytest.approx(0.28)
    assert fnt_lr(8, 10, 0.1, 1.0, "printed") == pytest.approx(0.1 * 2 / 5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="valid names"):
        _trainer("fp33")
    with pytest.raises(ValueError, match="valid names"):
        _trainer("fp32", backend="tpu")
    with pytest.raises(ValueError, match="valid names"):
        _trainer("fp32", optimizer="lion")


def test_lm_curves_plot_mean_and_band_over_seeds(tmp_path):
    """The character-Transformer figure: one line per recipe over seeds, written as a PNG."""
    from host.plots import plot_lm_curves
    runs = [[{"epoch": e, "train_loss": 3.0 - 0.1 * e - s, "val_loss": 3.1 - 0.1 * e} for e in (1, 2, 3)]
            for s in (0.0, 0.05)]
    path = plot_lm_curves({"fp32": runs, "luq4": runs[:1]}, tmp_path / "lm.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
