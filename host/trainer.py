"""``host.Trainer``: train a PyTorch model with a recipe's quantized GEMMs on a chosen backend.

::

    from host.trainer import Trainer
    from host.data import load_dataset
    from host.nn.models import build_model

    data = load_dataset("mnist5k")
    model = build_model("cnn", data.input_shape, data.num_classes)
    t = Trainer(model, recipe="shiftquant4", backend="cpu", out_dir="runs/sq4", seed=0)
    t.fit(data.train, epochs=8, val_data=data.test)        # checkpoint every epoch, metrics JSON/CSV
    t.evaluate(data.test)                                   # {"loss": ..., "accuracy": ..., "n": ...}
    t.fit(data.train, epochs=10, val_data=data.test, resume=True)   # continue bit for bit

Reproducibility: the shuffle of epoch ``e`` is ``randperm`` with seed ``(seed, e)``, the quantizers' random
streams are hashes of (seed, layer, step) (:func:`host.nn.quant_seed`), and the learning rate is a function
of the step -- so a run resumed from its epoch-``k`` checkpoint continues bit-identically.

Failure handling: a backend that fails (:class:`host.backends.BackendError`, e.g. a board unplugged)
raises :class:`BackendFailure` naming the epoch/step with the last checkpoint untouched -- or, with
``fallback="cpu"``, the epoch restarts from its start on the fallback backend. A non-finite loss or
gradient raises :class:`TrainingDiverged` naming the step; nothing is written for that epoch.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from host.backends import BackendError, get_backend, use_backend
from host.data import as_tensors
from host.nn import quant_layers, quant_parameters, quantize_model, set_quant_phase, set_quant_seed
from host.recipes import Recipe, get_recipe

__all__ = ["Trainer", "TrainingDiverged", "BackendFailure", "fnt_lr", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT = "tetrad-trainer-1"


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN/Inf; the message names the step."""


class BackendFailure(RuntimeError):
    """The GEMM backend failed mid-run (no fallback configured); the last checkpoint is intact."""


def fnt_lr(t: int, total: int, lr_t: float, lr_base: float, schedule: str = "prose") -> float:
    """LUQ's FNT learning rate at FNT iteration ``t`` (1-based) of ``total`` (ALGORITHMS.md §4, Eq. 17).

    ``"prose"`` ([PROPOSED], the default): rise linearly from ``LR_T`` to ``LR_base`` over ``T/2``
    iterations, then fall back to ``LR_T`` with the same slope. ``"printed"``: Eq. 17 as printed in the
    retrieved copy (``LR_T + (LR_base - LR_T)/(T/2)`` for ``t <= T/2``, then ``LR_T (T - t)/(T/2)``).
    """
    half = total / 2
    if schedule == "printed":
        return lr_t + (lr_base - lr_t) / half if t <= half else lr_t * (total - t) / half
    if t <= half:
        return lr_t + (lr_base - lr_t) * t / half
    return lr_base - (lr_base - lr_t) * (t - half) / half


class Trainer:
    """Train ``model`` with ``recipe`` on ``backend``.

    Parameters
    ----------
    model : nn.Module
        A float model; it is converted with :func:`host.nn.quantize_model` (a copy).
    recipe : str or Recipe, default "fp32"
    backend : str or Backend, default "cpu"
        ``"cpu"``, ``"cuda"``, ``"sim[:simulator]"``, ``"board:URL"`` (:func:`host.backends.get_backend`).
    optimizer : {"adam", "sgd"} or callable, default "adam"
        A name, or ``callable(params) -> torch.optim.Optimizer``. The DSQ learned clips (LBT) get their own
        Adam with ``recipe.qparam_lr`` (the reference's ``q_optimizer``).
    lr, weight_decay, momentum : float
        Optimizer settings (``momentum`` for SGD).
    lr_schedule : {"cosine", "constant"}, default "cosine"
        Over the main (quantized) epochs, down to ``lr * min_lr_ratio``; LUQ's FNT epochs follow Eq. 17.
    device : str or torch.device, optional
        Where the model lives (default: the backend's device).
    seed : int
        Seeds the data order and the quantizers' random streams (not the model's initialization: build
        the model under ``torch.manual_seed``).
    batch_size : int, default 64
    out_dir : path, optional
        Checkpoint (``checkpoint.pt``, every epoch), ``metrics.json``/``metrics.csv``, ``curves.png`` and
        ``grad_hist.png`` go here.
    fallback : str, optional
        Backend to continue on when ``backend`` fails (e.g. ``"cpu"``).
    progress : bool, default True
        tqdm progress bars.
    task : {"classify", "lm"}, default "classify"
        ``lm``: logits ``(B, T, V)`` against targets ``(B, T)``.
    through_quant_modules : bool
        Convert even for ``fp32`` (float GEMMs through the quantized modules).
    plots : bool, default True
        Write ``curves.png`` / ``grad_hist.png`` at the end of :meth:`fit` (with ``out_dir``).
    """

    def __init__(self, model: nn.Module, *, recipe="fp32", backend="cpu", optimizer="adam", lr: float = 1e-3,
                 weight_decay: float = 0.0, momentum: float = 0.9, lr_schedule: str = "cosine",
                 min_lr_ratio: float = 0.01, device=None, seed: int = 0, batch_size: int = 64, out_dir=None,
                 fallback=None, progress: bool = True, task: str = "classify",
                 through_quant_modules: bool = False, plots: bool = True):
        self.recipe: Recipe = get_recipe(recipe)
        self.backend = get_backend(backend)
        self.fallback = None if fallback is None else get_backend(fallback)
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        if task not in ("classify", "lm"):
            raise ValueError(f"task must be 'classify' or 'lm', got {task!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.device = torch.device(device) if device is not None else self.backend.device
        self.seed, self.batch_size, self.lr, self.task = int(seed), batch_size, float(lr), task
        self.lr_schedule, self.min_lr_ratio = lr_schedule, float(min_lr_ratio)
        self.progress, self.plots = progress, plots
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.rank, self.world = 0, 1
        self.model = quantize_model(model, self.recipe, seed=self.seed,
                                    through_quant_modules=through_quant_modules).to(self.device)
        self._init_distributed()
        qp = {id(p) for p in quant_parameters(self.model)}
        params = [p for p in self.model.parameters() if id(p) not in qp]
        self.optimizer = self._make_optimizer(optimizer, params, lr, weight_decay, momentum)
        qparams = quant_parameters(self.model)
        self.qoptimizer = torch.optim.Adam(qparams, lr=self.recipe.qparam_lr) if qparams else None
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.epoch = 0              # completed epochs
        self.global_step = 0
        self.history: list[dict] = []
        self.config = {"optimizer": optimizer if isinstance(optimizer, str) else repr(optimizer), "lr": lr,
                       "weight_decay": weight_decay, "momentum": momentum, "lr_schedule": lr_schedule,
                       "min_lr_ratio": min_lr_ratio, "seed": seed, "batch_size": batch_size,
                       "backend": self.backend.describe(), "device": str(self.device), "task": task,
                       "world_size": self.world}

    # -- setup ---------------------------------------------------------------------------------

    @staticmethod
    def _make_optimizer(opt, params, lr, wd, momentum):
        if callable(opt) and not isinstance(opt, str):
            return opt(params)
        if opt == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd)
        if opt == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)
        raise ValueError(f"unknown optimizer {opt!r}; valid names: ['adam', 'sgd'] or a callable(params)")

    def _init_distributed(self) -> None:
        """Multi-process data parallel when launched by torchrun (``WORLD_SIZE > 1``): gloo on CPU."""
        self.ddp = None
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # each rank draws its own SR bits: the same stream on every rank would correlate their noise
        set_quant_seed(self.model, self.seed, self.rank)
        self.ddp = nn.parallel.DistributedDataParallel(self.model, broadcast_buffers=False)

    @property
    def net(self) -> nn.Module:
        """The module to call for training (the DDP wrapper when distributed)."""
        return self.ddp if self.ddp is not None else self.model

    # -- learning rate ---------------------------------------------------------------------------

    def _lr_at(self, epoch: int, step_in_epoch: int, steps_per_epoch: int, main_epochs: int) -> list[float]:
        r = self.recipe
        if epoch < main_epochs:
            if self.lr_schedule == "constant":
                return list(self.base_lrs)
            t = epoch * steps_per_epoch + step_in_epoch
            total = max(main_epochs * steps_per_epoch, 1)
            c = 0.5 * (1 + math.cos(math.pi * t / total))
            return [b * (self.min_lr_ratio + (1 - self.min_lr_ratio) * c) for b in self.base_lrs]
        # FNT phase (§4 Eq. 17): from the last main-phase lr up to LR_base and back
        end = self._lr_at(main_epochs - 1, steps_per_epoch, steps_per_epoch, main_epochs) if main_epochs else self.base_lrs
        total = r.fnt_epochs * steps_per_epoch
        t = (epoch - main_epochs) * steps_per_epoch + step_in_epoch + 1
        return [fnt_lr(t, total, lt, r.fnt_lr_base if r.fnt_lr_base is not None else b, r.fnt_schedule)
                for lt, b in zip(end, self.base_lrs)]

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"format": _FORMAT, "recipe": self.recipe.as_dict(), "epoch": self.epoch,
                "global_step": self.global_step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "qoptimizer": None if self.qoptimizer is None else self.qoptimizer.state_dict(),
                "history": copy.deepcopy(self.history), "config": dict(self.config)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != _FORMAT:
            raise ValueError(f"not a Tetrad trainer checkpoint (format {state.get('format')!r})")
        if state["recipe"] != self.recipe.as_dict():
            raise ValueError(f"checkpoint was written by recipe {state['recipe']['name']!r} with different "
                             f"settings than this trainer's {self.recipe.name!r}; resume with the same recipe")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.qoptimizer is not None and state["qoptimizer"] is not None:
            self.qoptimizer.load_state_dict(state["qoptimizer"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.history = list(state["history"])

    def save_checkpoint(self, path=None) -> Path:
        """Write the checkpoint atomically (temp file + rename: a crash never leaves a torn file)."""
        path = Path(path) if path is not None else self._ckpt_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, path=None) -> None:
        path = Path(path) if path is not None else self._ckpt_path()
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))

    def _ckpt_path(self) -> Path:
        if self.out_dir is None:
            raise ValueError("no out_dir: pass out_dir= to the Trainer (or an explicit path)")
        return self.out_dir / CHECKPOINT_NAME

    # -- training ----------------------------------------------------------------------------------

    def _loss(self, logits, y):
        if self.task == "lm":
            logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
        loss = F.cross_entropy(logits, y)
        correct = (logits.argmax(-1) == y).sum()
        return loss, correct, y.numel()

    def _calibration_step(self) -> bool:
        r = self.recipe
        return self.global_step == 0 and r.grad_quant == "lbt" and r.lbt_adaptive and r.lbt_calibrate

    def fit(self, train_data, epochs: int, val_data=None, *, resume=None) -> list[dict]:
        """Train until ``epochs`` main epochs (plus the recipe's FNT epochs) are complete.

        Parameters
        ----------
        train_data, val_data : TensorDataset or (inputs, targets)
        epochs : int
            Main (quantized) epochs; LUQ FNT recipes add ``recipe.fnt_epochs`` high-precision epochs.
        resume : bool or path, optional
            Continue from a checkpoint (``True``: ``out_dir/checkpoint.pt``).

        Returns
        -------
        list of dict
            The per-epoch history (also in ``metrics.json``/``metrics.csv`` under ``out_dir``).
        """
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        if resume:
            self.load_checkpoint(None if resume is True else resume)
        x, y = as_tensors(train_data)
        total = epochs + self.recipe.fnt_epochs
        n = len(y)
        local = n // self.world
        steps = local // self.batch_size
        if steps < 1:
            raise ValueError(f"{n} training samples over {self.world} process(es) give no full batch of "
                             f"{self.batch_size}")
        while self.epoch < total:
            snapshot = copy.deepcopy(self.state_dict()) if self.fallback is not None else None
            try:
                with use_backend(self.backend):
                    record = self._run_epoch(x, y, steps, epochs)
            except BackendError as e:
                where = getattr(e, "tetrad_where", "")
                ck = self._ckpt_path() if self.out_dir is not None else None
                last = f"the last checkpoint ({ck}, after epoch {self.epoch}) is intact" if ck and ck.is_file() \
                    else "no checkpoint was written yet"
                if self.fallback is None:
                    raise BackendFailure(f"backend {self.backend.describe()} failed {where}: {e}; {last}. "
                                         f"Resume with resume=True (CLI --resume) or continue on another "
                                         f"backend with fallback='cpu' (CLI --fallback cpu)") from e
                warnings.warn(f"backend {self.backend.describe()} failed {where}: {e}; restarting epoch "
                              f"{self.epoch + 1} on {self.fallback.describe()} ({last})", RuntimeWarning)
                self.load_state_dict(snapshot)
                self.backend, self.fallback = self.fallback, None
                self.config["backend"] = self.backend.describe()
                continue
            if val_data is not None:
                ev = self.evaluate(val_data)
                record.update(val_loss=ev["loss"], val_acc=ev["accuracy"])
            self.history.append(record)
            self.epoch += 1
            if self.rank == 0 and self.out_dir is not None:
                self.save_checkpoint()
                self.write_metrics()
        if self.rank == 0 and self.out_dir is not None and self.plots:
            self.write_plots(train_data)
        return self.history

    def _run_epoch(self, x, y, steps: int, main_epochs: int) -> dict:
        e = self.epoch
        phase = "fnt" if e >= main_epochs else "main"
        set_quant_phase(self.model, phase)
        self.net.train()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + e))
        if self.world > 1:
            perm = perm[self.rank::self.world]
        t0 = time.perf_counter()
        tot_loss = torch.zeros((), dtype=torch.float64)
        tot_correct, tot_n = 0, 0
        # disable=None: a bar on a terminal, nothing when the output is piped to a file
        bar = tqdm(range(steps), desc=f"{self.recipe.name} epoch {e + 1}", leave=False,
                   disable=None if self.progress and self.rank == 0 else True, dynamic_ncols=True)
        lrs = None
        for s in bar:
            lrs = self._lr_at(e, s, steps, main_epochs)
            for g, lr in zip(self.optimizer.param_groups, lrs):
                g["lr"] = lr
            idx = perm[s * self.batch_size:(s + 1) * self.batch_size]
            xb, yb = x[idx].to(self.device), y[idx].to(self.device)
            where = f"at epoch {e + 1}, step {s + 1} (global step {self.global_step + 1})"
            try:
                loss, correct, cnt = self._loss(self.net(xb), yb)
                if not bool(torch.isfinite(loss)):
                    raise TrainingDiverged(f"loss is {float(loss.detach())} {where}; stopping (recipe "
                                           f"{self.recipe.name}, lr {lrs[0]:.3g}); no checkpoint is written "
                                           f"for this epoch")
                self.optimizer.zero_grad(set_to_none=True)
                if self.qoptimizer is not None:
                    self.qoptimizer.zero_grad(set_to_none=True)
                loss.backward()
            except BackendError as err:
                err.tetrad_where = where
                raise
            except ValueError as err:
                if "NaN" in str(err) or "Inf" in str(err):
                    raise TrainingDiverged(f"non-finite gradient {where}: {err}") from err
                raise
            if not self._calibration_step():       # LBT: the first iteration only calibrates gamma (§1(a))
                self.optimizer.step()
                if self.qoptimizer is not None:
                    self.qoptimizer.step()
            self.global_step += 1
            tot_loss += loss.detach().double().cpu() * cnt
            tot_correct += int(correct)
            tot_n += cnt
            if self.progress and s % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        return {"epoch": e + 1, "phase": phase, "train_loss": float(tot_loss) / tot_n,
                "train_acc": tot_correct / tot_n, "lr": lrs[0] if lrs else None,
                "time_s": time.perf_counter() - t0, "steps": steps, "backend": self.backend.describe()}

    @torch.no_grad()
    def evaluate(self, data, batch_size: int = 500) -> dict:
        """Loss and accuracy of the (quantized) model on ``data``: ``{"loss", "accuracy", "n"}``."""
        x, y = as_tensors(data)
        was = self.model.training
        self.model.eval()
        tot_loss, tot_c, tot_n = 0.0, 0, 0
        with use_backend(self.backend):
            for i in range(0, len(y), batch_size):
                xb, yb = x[i:i + batch_size].to(self.device), y[i:i + batch_size].to(self.device)
                loss, correct, cnt = self._loss(self.model(xb), yb)
                tot_loss += float(loss) * cnt
                tot_c += int(correct)
                tot_n += cnt
        self.model.train(was)
        return {"loss": tot_loss / tot_n, "accuracy": tot_c / tot_n, "n": tot_n}

    # -- reports ---------------------------------------------------------------------------------

    def write_metrics(self) -> None:
        """``metrics.json`` (recipe, trainer config, history) and ``metrics.csv`` (history) in ``out_dir``."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        doc = {"recipe": self.recipe.as_dict(), "trainer": self.config, "history": self.history}
        (self.out_dir / "metrics.json").write_text(json.dumps(doc, indent=2))
        keys = ["epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time_s", "steps",
                "backend"]
        with open(self.out_dir / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            for h in self.history:
                w.writerow(h)

    def write_plots(self, train_data=None) -> None:
        """``curves.png`` and, for a quantized recipe, ``grad_hist.png``: one batch's gradient at the first
        non-edge quantized layer with its B-path quantization grid (computed on a copy of the model, so the
        run's state is untouched)."""
        from host.plots import grid_levels, plot_curves, plot_grad_hist
        plot_curves({self.recipe.name: self.history}, self.out_dir / "curves.png")
        if train_data is None or not self.recipe.quantized:
            return
        model = copy.deepcopy(self.model)
        layers = [lay for lay in quant_layers(model) if not lay.edge] or quant_layers(model)
        if not layers:
            return
        layer = layers[0]
        layer.record = True
        model.train()
        x, y = as_tensors(train_data)
        # the exact torch backend gives the same numbers as any other, without e.g. an RTL run
        with use_backend("cuda" if self.device.type == "cuda" else "cpu"):
            loss, _, _ = self._loss(model(x[:self.batch_size].to(self.device)), y[:self.batch_size].to(self.device))
            loss.backward()
        lb = layer.last_backward
        if lb is not None:
            plot_grad_hist(lb["grad"], grid_levels(lb["info"]), self.out_dir / "grad_hist.png",
                           title=f"{self.recipe.name}: output gradient of layer {layer.qname} (B-path grid)")
