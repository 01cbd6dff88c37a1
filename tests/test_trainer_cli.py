"""``python -m host.train``, ``python -m host.demo`` and torchrun data parallel."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from host.train import main

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_help_lists_the_names(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("--recipe", "--compare", "--backend", "--fallback", "shiftquant4", "mnist5k", "transformer"):
        assert word in out


@pytest.mark.parametrize("args,names", [
    (["--recipe", "luq3"], "valid names: ['fp32'"),
    (["--compare", "fp32,bogus"], "unknown recipe 'bogus'"),
    (["--dataset", "cifar"], "valid names: ['mnist5k'"),
    (["--model", "resnet"], "valid names: ['cnn', 'mlp', 'transformer']"),
    (["--backend", "tpu"], "valid names: ['cpu', 'cuda', 'sim', 'board']"),
    (["--set", "gradbits=3"], "unknown recipe field"),
])
def test_bad_names_exit_2_listing_valid_ones(capsys, args, names):
    assert main(args + ["--dataset", "digits"] if "--dataset" not in args else args) == 2
    assert names in capsys.readouterr().err


def test_compare_writes_table_json_and_plot(tmp_path, capsys):
    rc = main(["--compare", "fp32,luq4", "--dataset", "digits", "--epochs", "1", "--batch-size", "128",
               "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "recipe luq4:" in out and "| fp32 |" in out and "| luq4 |" in out
    res = json.loads((tmp_path / "compare.json").read_text())
    assert [r["recipe"] for r in res] == ["fp32", "luq4"]
    for f in ("compare.png", "compare.md", "luq4/metrics.csv", "luq4/checkpoint.pt", "luq4/grad_hist.png"):
        assert (tmp_path / f).is_file(), f


def test_resume_and_board_fallback_from_the_cli(tmp_path, capsys):
    base = ["--recipe", "luq4", "--dataset", "digits", "--batch-size", "128", "--out", str(tmp_path),
            "--no-progress"]
    assert main(base + ["--epochs", "1"]) == 0
    # the board backend's driver is issue 6: every GEMM fails like an unplugged board
    assert main(base + ["--epochs", "2", "--resume", "--backend", "board:socket://127.0.0.1:9"]) == 1
    assert "after epoch 1) is intact" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning, match="restarting epoch 2 on torch:cpu"):
        assert main(base + ["--epochs", "2", "--resume", "--backend", "board:socket://127.0.0.1:9",
                            "--fallback", "cpu"]) == 0
    hist = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2] and hist[1]["backend"] == "torch:cpu"


def test_text_transformer_trains():
    from torch.utils.data import TensorDataset

    from host.data import load_dataset
    from host.nn.models import build_model
    from host.trainer import Trainer
    d = load_dataset("text")
    x, y = d.train.tensors
    torch.manual_seed(0)
    t = Trainer(build_model("transformer", d.input_shape, d.num_classes), recipe="shiftquant4", task="lm",
                batch_size=32, lr=3e-3, progress=False)
    hist = t.fit(TensorDataset(x[:128], y[:128]), 1, val_data=TensorDataset(*[v[:64] for v in d.test.tensors]))
    assert hist[0]["train_loss"] < 4.6 and hist[0]["val_acc"] > 1 / 96        # below ln(96) = 4.56 + noise


@pytest.mark.slow
def test_torchrun_data_parallel(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.fail("torchrun not found next to the interpreter")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "host.train", "--recipe", "luq4",
           "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--out", str(tmp_path), "--no-progress"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["trainer"]["world_size"] == 2
    assert doc["history"][-1]["steps"] == 1438 // 2 // 64 and doc["history"][-1]["val_acc"] > 0.5


@pytest.mark.slow
def test_demo_runs(tmp_path):
    from host.demo import main as demo
    assert demo(["--recipes", "fp32,shiftquant4", "--epochs", "1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "accuracy.md").is_file()
