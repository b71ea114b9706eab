"""The training loop: one run into one run directory (`rundir.RunDir`), complete and resumable.

`train` decides what to do with the folder (new, resume, done), builds a `Trainer`, writes
config.json and runs it. `Trainer.run` reads top to bottom: resume (or start), then per step
`train_step`; at each sample point `sample_point` (metrics, evaluation, NaN check) and, at
checkpoint points, a checkpoint; at the end summary.json (`run_summary`). Around it: the device and
compile policy (`device`), the reference run that lr_scaled follows (`reference`), the BN views
(`views`), the checkpoint's contents (`checkpoint`), bar / TensorBoard / signals (`console`);
the lr rules (schedule, the article's conv lr factor) live in `nn.optim`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnwd.errors import BnwdError, DivergenceError
from bnwd.nn.exact import weight_decay_as_lr
from bnwd.nn.models import resnet
from bnwd.nn.monitor import MomentumStats, Monitor
from bnwd.nn.optim import lr_factor, make_optimizer, param_groups, step_lr
from bnwd.run import checkpoint
from bnwd.run import config as C
from bnwd.run.console import Progress, TensorBoard, caught_signals
from bnwd.run.data import Cifar10, TrainLoader, run_data, test_batches
from bnwd.run.device import Forward, Placement, loss_and_grad, pick_device
from bnwd.run.reference import ReferenceNorms
from bnwd.run.rundir import (
    RunDir,
    atomic_write,
    jsonable,
    load_checkpoint,
    peak_rss_mb,
    plateau,
    save_checkpoint,
    write_metrics,
)
from bnwd.run.views import BNViews

__all__ = ["Interrupted", "ReferenceNorms", "Trainer", "pick_device", "prepare_run_dir", "train"]


class Trainer:
    def __init__(
        self,
        cfg: C.Config,
        out: str | Path,
        data: str | Path | None = None,
        progress: bool = True,
        dataset: Cifar10 | None = None,
    ):
        self.cfg, self.rd, self.progress = cfg, RunDir(out), progress
        self.out = self.rd.path
        self.res = C.resolved(cfg)
        self.place = Placement.of(cfg)
        self.device = self.place.device
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

        self.data = run_data(dataset, data, self.device, cfg.train_subset, cfg.test_subset, cfg.batch_size)
        self.loader = TrainLoader(self.data, cfg.batch_size, cfg.seed)
        spe = self.spe = self.loader.steps_per_epoch
        self.total_steps = max(1, round(cfg.epochs * spe))
        self.sample_every = max(1, round(cfg.sample_every * spe))
        # Evaluations and checkpoints happen at sample points, every k-th one.
        self.eval_every = self.sample_every * max(1, round(cfg.eval_every / cfg.sample_every))
        self.ckpt_every = self.sample_every * max(1, round(cfg.checkpoint_every / cfg.sample_every))
        drops = [m for m in cfg.lr_milestones if 0 < m < cfg.epochs]
        self.stage1_end = min(drops) if drops else cfg.epochs

        torch.manual_seed(cfg.seed)
        model = resnet(cfg.depth, width=cfg.width, bn_momentum=self.res["bn_momentum_used"], bn_eps=cfg.bn_eps)
        self.model = model.to(self.device, memory_format=self.place.memory_format)
        self.forward = Forward(self.model, cfg, self.device)
        wd = {"conv": self.res["conv_weight_decay"], "bn": cfg.weight_decay, "head": cfg.weight_decay}
        self.opt = make_optimizer(
            param_groups(self.model, wd), cfg.optimizer, cfg.lr, cfg.momentum, (cfg.momentum, cfg.adam_beta2)
        )
        self.adam = cfg.optimizer != "sgd"
        self.conv = next(g for g in self.opt.param_groups if g["name"] == "conv")
        with torch.no_grad():
            torch._foreach_mul_(self.conv["params"], cfg.conv_init_scale)
        sq = [float(p.detach().double().pow(2).sum()) for p in self.conv["params"]]
        self.init_conv_sqsum = sum(sq)
        self.init_layer_sqnorm = dict(zip(self.conv["param_names"], sq))

        # lr_exact: the baseline's conv L2 goes into the group, then the transform (hooks on the
        # optimizer) turns it into an lr schedule; eps / s_t^2 keeps it exact with BN eps, and
        # statistics rescaling (lr_exact only) removes the moving-average lag at inference.
        # lr_scaled: the conv gradients (SGD) or lr (Adam) times S / S_ref (`apply_lr_factor`).
        self.wd_as_lr, self.reference = None, None
        scaling = self.res["conv_lr_scaling"]
        if scaling == "exact":
            self.conv["weight_decay"] = cfg.conv_weight_decay
            self.wd_as_lr = weight_decay_as_lr(
                self.opt, ["conv"], model=self.model, rescale_bn_eps=True, rescale_bn_stats=self.res["rescale_bn_stats"]
            )
        elif scaling in ("article", "reference"):
            self.reference = ReferenceNorms(scaling, cfg, self.init_conv_sqsum, self.conv["param_names"])
        # The factor of the last step (device tensor, one per conv layer), for the log and the monitor.
        self.factor = torch.ones(len(self.conv["params"]), dtype=torch.float32, device=self.device)
        every, layers = self.sample_every, "auto" if cfg.log_layers else "none"
        self.monitor = Monitor(self.model, self.opt, sample_every=every, halflife=every, layers=layers)
        self.conv_index = self.monitor.index_of(self.conv["params"])
        self.momentum_stats = MomentumStats(self.opt, "conv") if cfg.optimizer == "sgd" else None
        self.views = BNViews(self.model, cfg, self.res, self.loader, self.place)
        self.step = 0
        self.win = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, images
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        # A stop: a signal's name, or a leg's end (`train(stop_step=, stop_after=)`): stop as a
        # SIGTERM would (checkpoint a whole step, exit 130) once `step` >= stop_step steps are done
        # or at the monotonic `deadline`; neither is part of the run's config.
        self._stop_signal, self.stop_step, self.deadline = None, None, None

    # ------------------------------------------------------------ checkpoint
    def parts(self) -> dict[str, Any]:
        """The stateful parts, under their checkpoint keys (the exact transform's state is in the optimizer's)."""
        v = self.views
        return {"model": self.model, "optimizer": self.opt, "monitor": self.monitor, "shadow_bn": v.shadow,
                "shadow_comp": v.comp, "momentum_stats": self.momentum_stats}  # fmt: skip

    def state(self) -> dict:
        return checkpoint.capture(
            self.parts(),
            step=self.step,
            window=self.win.cpu(),
            config=self.cfg.to_dict(),
            lr_factor=self.factor.cpu(),
            torch_rng=torch.get_rng_state(),
        )

    def load_state(self, st: dict) -> None:
        checkpoint.restore(self.parts(), st, self.cfg, self.rd.ckpt)
        self.factor = st["lr_factor"].to(self.device)
        self.step = int(st["step"])
        self.win = st["window"].to(self.device)
        torch.set_rng_state(st["torch_rng"])

    # ------------------------------------------------------------ one step
    def set_lr(self, step: int) -> float:
        lr = step_lr(step, self.spe, self.cfg.lr, self.cfg.lr_milestones, self.cfg.lr_gamma)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    @torch.no_grad()
    def apply_lr_factor(self, step: int) -> None:
        """The article's lr scaling (`optim.lr_factor`): SGD multiplies the conv gradients, so the
        factor enters the momentum buffer as in the article's code; Adam-type optimizers get
        the factor on the conv group's lr (a gradient factor would cancel in m / sqrt(v))."""
        params = self.conv["params"]
        sq = torch.stack(torch._foreach_norm(params)).float().square()
        ref = self.reference.at(step / self.spe)
        if self.reference.per_layer:
            f = lr_factor(sq, torch.as_tensor(ref, dtype=sq.dtype, device=sq.device))
        else:
            f = lr_factor(sq.sum(), float(ref), adam=self.adam).expand(len(params))
        self.factor = f
        if self.adam:
            self.conv["lr"] = self.conv["lr"] * float(f[0])
        else:
            torch._foreach_mul_([p.grad for p in params], list(f.unbind()))
            self.monitor.set_lr_scale(self.conv_index, f)

    def train_step(self, step: int) -> None:
        x, y = self.loader.batch(step)
        x = self.place.input(x)
        self.model.train()
        self.forward.mark_step()
        loss, logits = self.forward.run(lambda fwd: loss_and_grad(fwd, x, y, self.opt, self.place))
        if self.reference is not None:
            self.apply_lr_factor(step)
        self.opt.step()
        with torch.no_grad():
            ld = loss.detach()
            self.bad_step.copy_(torch.where((self.bad_step < 0) & ~torch.isfinite(ld), step, self.bad_step))
            n = torch.tensor(float(len(y)), dtype=torch.float64, device=self.device)
            self.win += torch.stack([ld.double() * len(y), (logits.argmax(1) == y).sum().double(), n])

    @torch.no_grad()
    def evaluate(self, model: nn.Module | None = None) -> tuple[float, float]:
        """Test loss and accuracy with the running BN statistics (of `model`, default the trained
        one). Eager: on a copy with BN folded into the convs (`ResNetV1.folded`, the same
        function); compiled: on the compiled model."""
        forward = self.forward if model is None and self.forward.compiled else (model or self.model).eval().folded()
        self.model.eval()
        tot = torch.zeros(3, dtype=torch.float64, device=self.device)
        for x, y in test_batches(self.data, 1000):
            with self.place.autocast():
                logits = forward(self.place.input(x)).float()
            n = torch.tensor(float(len(y)), dtype=torch.float64, device=self.device)
            loss = F.cross_entropy(logits, y, reduction="sum").double()
            tot += torch.stack([loss, (logits.argmax(1) == y).sum().double(), n])
        loss, correct, n = tot.tolist()
        return loss / n, correct / n

    # ------------------------------------------------------------ sample points
    def sample_point(self, step: int, lr: float, evaluate: bool, ckpt_path: Path) -> dict:
        """The metrics row of the window that ends at `step` (and the test set when `evaluate`)."""
        bad = int(self.bad_step)
        if bad >= 0:
            raise DivergenceError(
                f"loss became NaN/inf at step {bad} (epoch {bad / self.spe:.2f}); the last good checkpoint "
                f"{ckpt_path if ckpt_path.exists() else '(none yet)'} is intact; lower lr or check the data"
            )
        row: dict[str, Any] = {"step": step, "epoch": step / self.spe, "lr": lr}
        loss_sum, correct, n = self.win.tolist()
        self.win.zero_()
        row["train_loss"] = loss_sum / max(n, 1)
        row["train_acc"] = correct / max(n, 1)
        if self.wd_as_lr is not None:
            s = float(self.wd_as_lr.scale["conv"])
            row["lr_factor"] = 1.0 / (s * s)
            row["decay_scale"] = s
        else:
            row["lr_factor"] = float(self.factor.mean())
        m = self.monitor.sample()
        m.pop("step", None)
        row.update(m)
        if self.momentum_stats is not None:
            row.update(self.momentum_stats.sample())
        if evaluate:
            row["test_loss"], row["test_acc"] = self.evaluate()
            last = step == self.total_steps
            row.update(self.views.evaluations(self.evaluate, step, step / self.spe, self.stage1_end, last))
        return row

    # ------------------------------------------------------------ main
    def resume_or_start(self) -> None:
        if self.rd.ckpt.exists():
            self.load_state(load_checkpoint(self.rd.ckpt))
            # Keep exactly the sample points up to the checkpoint: later ones are recomputed.
            write_metrics(self.rd.metrics, [r for r in self.rd.rows() if r.get("step", 0) <= self.step])
        else:
            atomic_write(self.rd.metrics, "")

    def _stopping(self) -> bool:
        """A stop is asked for: a signal, or the leg's `stop_step` / `deadline` reached."""
        if not self._stop_signal:
            if self.stop_step is not None and self.step >= self.stop_step:
                self._stop_signal = f"stop_step={self.stop_step}"
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                self._stop_signal = "stop_after"
        return bool(self._stop_signal)

    def _checkpoint(self, mf) -> None:
        mf.flush()  # the metrics rows up to the checkpoint are on disk before it
        os.fsync(mf.fileno())
        save_checkpoint(self.rd.ckpt, self.state())

    def run(self) -> dict:
        self.resume_or_start()
        tb = TensorBoard(self.cfg.tensorboard, self.rd.path / "tb", self.step)
        start, t0 = self.step, time.time()
        bar = Progress(
            self.progress, f"{self.cfg.variant} s{self.cfg.seed}", self.total_steps, start, self.cfg.batch_size
        )
        try:
            with caught_signals(lambda name: setattr(self, "_stop_signal", name)), open(self.rd.metrics, "a") as mf:
                while self.step < self.total_steps:
                    ref = self.reference
                    if ref is not None and not ref.wait_for(self.step / self.spe, self._stopping):
                        self._checkpoint(mf)  # stopped while waiting for the reference: a whole step
                        raise Interrupted(self._stop_signal, self.step, self.total_steps)
                    lr = self.set_lr(self.step)
                    self.train_step(self.step)
                    self.step += 1
                    s, last = self.step, self.step == self.total_steps
                    bar.tick()
                    sample = s % self.sample_every == 0 or last
                    if sample:
                        row = self.sample_point(s, lr, s % self.eval_every == 0 or last, self.rd.ckpt)
                        mf.write(json.dumps(jsonable(row)) + "\n")
                        mf.flush()
                        tb.log(row)
                        bar.show(row)
                    stop = not last and self._stopping()
                    if (sample and s % self.ckpt_every == 0) or last or stop:
                        self._checkpoint(mf)
                    if stop:
                        raise Interrupted(self._stop_signal, s, self.total_steps)
        finally:
            bar.close()
            tb.close()
            self.monitor.remove()
            if self.momentum_stats is not None:
                self.momentum_stats.remove()
            self.views.remove()
        summary = run_summary(self, self.rd.rows(), time.time() - t0, start)
        self.rd.write_summary(summary)
        return summary


class Interrupted(BnwdError):
    exit_code = 130

    def __init__(self, sig: str, step: int, total: int):
        self.where = f"stopped by {sig} at step {step}/{total}; checkpoint written"  # the CLI adds what to type
        super().__init__(f"{self.where}, continue with the same command plus --resume")


# ---------------------------------------------------------------- the run's files


def run_summary(t: Trainer, rows: list[dict], wall: float, start: int) -> dict:
    """summary.json of a finished run: its last rows, the plateau, the initial norms, the speed."""
    last, evals, cfg = rows[-1], [r for r in rows if "test_acc" in r], t.cfg
    return {
        "variant": cfg.variant,
        "seed": cfg.seed,
        "preset": cfg.preset,
        "steps": t.total_steps,
        "epochs": t.total_steps / t.spe,
        "steps_per_epoch": t.spe,
        "final_test_acc": evals[-1]["test_acc"],
        "final_test_loss": evals[-1]["test_loss"],
        "plateau_test_acc": plateau(rows, cfg.lr_milestones, cfg.epochs),
        "final_train_loss": last["train_loss"],
        "final_train_acc": last["train_acc"],
        "final_conv_sqsum": last.get("conv_sqsum"),
        "initial_conv_sqsum": t.init_conv_sqsum,
        "initial_layer_sqnorm": t.init_layer_sqnorm,
        "best_test_acc": max(r["test_acc"] for r in evals),
        "wall_s": wall,
        "images_per_s": (t.total_steps - start) * cfg.batch_size / max(wall, 1e-9),
        "device": str(t.device),
        "peak_rss_mb": peak_rss_mb(),  # of the whole process (several runs in one reproduce)
        "finished": True,
    }


def config_doc(t: Trainer) -> dict:
    """config.json: the config, what the variant resolved to, and what the data gave."""
    return {
        **t.cfg.to_dict(),
        "resolved": t.res,
        "steps_per_epoch": t.spe,
        "total_steps": t.total_steps,
        "n_train": t.data.n_train,
        "n_test": t.data.n_test,
        # S(0), for an lr_scaled run that reads this one while it trains (`ReferenceNorms`)
        "initial_conv_sqsum": t.init_conv_sqsum,
        "initial_layer_sqnorm": t.init_layer_sqnorm,
    }


# ---------------------------------------------------------------- entry


def prepare_run_dir(cfg: C.Config, out: Path, resume: bool, force: bool) -> str:
    """'new', 'resume' or 'done' for the folder `out` (`RunDir.prepare`); `train` writes config.json."""
    return RunDir(out).prepare(cfg, resume, force)


def train(
    cfg: C.Config,
    out: str | Path,
    data: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    dataset: Cifar10 | None = None,
    stop_step: int | None = None,
    stop_after: float | None = None,
) -> dict:
    """Train one run into `out` (see module docstring); returns the summary dict.

    `stop_step` / `stop_after` (s from this call) end a leg of the run: at that step or time it
    checkpoints and raises `Interrupted` (exit 130) as on SIGTERM; `resume=True` continues it."""
    deadline = None if stop_after is None else time.monotonic() + stop_after
    rd = RunDir(out)
    what = rd.prepare(cfg, resume, force)
    if what == "done":
        return rd.read_summary()
    rd.clear_failed()  # this attempt may succeed; readers wait for it again
    threads = torch.get_num_threads()
    try:  # `threads=` is process-wide in torch: give the caller its setting back
        trainer = Trainer(cfg, rd.path, data, progress=progress, dataset=dataset)
        trainer.stop_step, trainer.deadline = stop_step, deadline
        doc = config_doc(trainer)
        if what == "new" or rd.read_config() != json.loads(json.dumps(doc)):
            rd.write_config(doc)  # once: a resumed run's is already there
        return trainer.run()
    finally:
        torch.set_num_threads(threads)
