"""The training loop: one run into one run directory (`runs`), complete and resumable.

`Trainer.run` reads top to bottom: resume (or start), then per step `train_step`; at each
sample point `sample_point` (metrics, evaluation, NaN check) and, at checkpoint points, a
checkpoint; at the end `finish` (summary). The lr rules (schedule, the article's conv lr
factor) live in `optim`, the run folder in `runs`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnwd.errors import BnwdError, CheckpointError, ConfigError, DivergenceError, one_line
from bnwd.nn.bnstats import ShadowBNStats, precise_stats
from bnwd.nn.models import resnet
from bnwd.nn.monitor import MomentumStats, Monitor
from bnwd.nn.optim import article_epoch, article_piecewise, lr_factor, make_optimizer, param_groups, step_lr
from bnwd.run import config as C
from bnwd.run.data import Cifar10, TrainLoader, load_cifar10, test_batches
from bnwd.run.rundir import (
    CKPT,
    CONFIG,
    FAILED,
    METRICS,
    SUMMARY,
    atomic_write,
    jsonable,
    load_checkpoint,
    peak_rss_mb,
    plateau,
    read_json,
    read_metrics,
    save_checkpoint,
    write_metrics,
)

# ---------------------------------------------------------------- device


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda asked for but torch sees no CUDA GPU (CPU-only torch build or no driver); use --device cpu"
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


# ---------------------------------------------------------------- the article's conv lr factor


class ReferenceNorms:
    """S_ref(epoch): the baseline's sum of squared conv weights, globally or per conv layer.

    `article`: S(0) / p(article_epoch(epoch)), the article's piecewise fit with its lr stages
    mapped onto the run's; `reference`: interpolated from a baseline run's metrics. The baseline
    may still be training when `cfg.reference_wait` > 0 (`reproduce` runs lr_scaled beside it):
    S_ref between two sample points needs the later one, so `at` waits until the baseline has
    written it. The rows read are the rows a finished baseline holds, so the factor is the same.
    """

    POLL_S = 0.2  # s between looks at an unfinished reference

    def __init__(self, mode: str, cfg: C.Config, s0: float, names: list[str]):
        self.mode, self.cfg, self.s0, self.names = mode, cfg, s0, names
        self.per_layer = mode == "reference" and cfg.reference_mode == "layer"
        self.finished = True
        if mode == "reference":
            self.run = Path(cfg.reference)
            self.finished = (self.run / SUMMARY).exists()
            if not self.finished and not cfg.reference_wait:
                raise ConfigError(
                    f"reference={self.run} is not a finished baseline run (needs metrics.jsonl and summary.json)"
                )
            self._wait(lambda: self._load(self.run), "while lr_scaled waited for its start")

    def _load(self, run: Path) -> bool:
        """Read the reference's rows; False while an unfinished one has not written its start."""
        self.finished = (run / SUMMARY).exists()
        if self.finished and not (run / METRICS).exists():
            raise ConfigError(f"reference={run} is not a finished baseline run (needs metrics.jsonl and summary.json)")
        if not (run / CONFIG).exists():
            if self.finished:
                raise ConfigError(f"reference={run} has no config.json; it is not a run directory")
            return False
        doc = read_json(run / CONFIG)
        if doc.get("variant") != "baseline":
            raise ConfigError(f"reference={run} is a {doc.get('variant')!r} run; it must be a baseline run")
        # S(0): in summary.json, and in config.json from a run's start on (older runs: summary only)
        init = read_json(run / SUMMARY) if self.finished else doc
        if "initial_conv_sqsum" not in init and not self.finished:
            return False
        rows = read_metrics(run / METRICS)
        if not rows:
            if self.finished:
                raise ConfigError(f"reference={run} has an empty metrics.jsonl")
            return False
        # Sample points sit at the ends of windows; epoch 0 is the reference's initial norm.
        self.epoch = np.array([0.0] + [r["epoch"] for r in rows])
        if self.per_layer:
            missing = [n for n in self.names if f"sqnorm/conv/{n}" not in rows[0]]
            if missing:
                raise ConfigError(
                    f"reference={run} has no per-layer norms for {missing[0]} "
                    "(was it trained with log_layers=false or another model?)"
                )
            first = [init.get("initial_layer_sqnorm", {}).get(n, rows[0][f"sqnorm/conv/{n}"]) for n in self.names]
            self.ref = np.array([first] + [[r[f"sqnorm/conv/{n}"] for n in self.names] for r in rows])
        else:
            s0 = init.get("initial_conv_sqsum") or rows[0]["conv_sqsum"]
            self.ref = np.array([s0] + [r["conv_sqsum"] for r in rows])
        return True

    def _wait(self, ready, what: str, stopped=None) -> bool:
        """Poll `ready()` until true (True), or until `stopped()` (False). Gives up when the
        reference is marked failed (`runs.FAILED`, written by the pool that ran it) or its files
        stay unchanged for `reference_wait` s."""
        last, since = None, time.monotonic()
        while not ready():
            if stopped is not None and stopped():
                return False
            if (self.run / FAILED).exists():
                why = (self.run / FAILED).read_text().strip()
                raise BnwdError(f"reference={self.run} failed ({why}); lr_scaled cannot go on without it")
            stamp = [_stamp(self.run / CONFIG), _stamp(self.run / METRICS)]
            if stamp != last:
                last, since = stamp, time.monotonic()
            elif time.monotonic() - since > self.cfg.reference_wait:
                raise BnwdError(
                    f"reference={self.run} is not finished and wrote nothing for {self.cfg.reference_wait:g} s "
                    f"{what}; is it still training? (reference_wait= sets how long to wait)"
                )
            time.sleep(self.POLL_S)
        return True

    def wait_for(self, epoch: float, stopped=None) -> bool:
        """Wait until `at(epoch)` can be answered: True, or False if `stopped()` came first (the
        trainer calls this between steps, so that a stop while waiting checkpoints a whole step)."""
        if self.mode == "article" or self.finished or epoch <= self.epoch[-1]:
            return True
        has = lambda: self._load(self.run) and (self.finished or self.epoch[-1] >= epoch)  # noqa: E731
        return self._wait(has, f"while lr_scaled waited for epoch {epoch:.3f}", stopped)

    def at(self, epoch: float) -> np.ndarray | float:
        if self.mode == "article":
            cfg = self.cfg
            return self.s0 / article_piecewise(article_epoch(epoch, cfg.lr_milestones, cfg.epochs))
        self.wait_for(epoch)
        if self.per_layer:
            return np.array([np.interp(epoch, self.epoch, self.ref[:, i]) for i in range(self.ref.shape[1])])
        return float(np.interp(epoch, self.epoch, self.ref))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


# ---------------------------------------------------------------- the run

PRECISE_SEED = 7_919  # offset of the precise view's batch stream from the run's seed


class Trainer:
    def __init__(
        self,
        cfg: C.Config,
        out: str | Path,
        data: str | Path | None = None,
        progress: bool = True,
        dataset: Cifar10 | None = None,
    ):
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.res = C.resolved(cfg)
        self.device = pick_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        cuda = self.device.type == "cuda"
        self.amp = cfg.amp == "bf16" or (cfg.amp == "auto" and cuda)  # see config.Config.amp
        self.channels_last = cfg.channels_last != "off"  # see config.Config.channels_last

        ds = dataset if dataset is not None else load_cifar10(data)
        if cfg.train_subset or cfg.test_subset:
            ds = ds.subset(cfg.train_subset, cfg.test_subset, seed=0)
        self.data = ds.to(self.device)
        if cfg.batch_size > self.data.n_train:
            raise ConfigError(
                f"batch_size={cfg.batch_size} is larger than the training set ({self.data.n_train} images)"
            )
        self.loader = TrainLoader(self.data, cfg.batch_size, cfg.seed)
        spe = self.spe = self.loader.steps_per_epoch
        self.total_steps = max(1, round(cfg.epochs * spe))
        self.sample_every = max(1, round(cfg.sample_every * spe))
        # Evaluations and checkpoints happen at sample points, every k-th one.
        self.eval_every = self.sample_every * max(1, round(cfg.eval_every / cfg.sample_every))
        self.ckpt_every = self.sample_every * max(1, round(cfg.checkpoint_every / cfg.sample_every))

        torch.manual_seed(cfg.seed)
        model = resnet(cfg.depth, width=cfg.width, bn_momentum=self.res["bn_momentum_used"], bn_eps=cfg.bn_eps)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=fmt)
        # The precise view's statistics are recomputed on a copy (taken before any hook is attached)
        # from a batch stream of its own, so training and resume do not see them.
        self.views = cfg.bn_views != "off"
        self.stats_model = copy.deepcopy(self.model) if self.views else None
        self.precise_loader = TrainLoader(self.data, cfg.batch_size, cfg.seed + PRECISE_SEED) if self.views else None
        drops = [m for m in cfg.lr_milestones if 0 < m < cfg.epochs]
        self.stage1_end = min(drops) if drops else cfg.epochs
        self.forward = self._compiled(cfg, cuda)
        wd = {"conv": self.res["conv_weight_decay"], "bn": cfg.weight_decay, "head": cfg.weight_decay}
        self.groups = param_groups(self.model, wd)
        self.opt = make_optimizer(self.groups, cfg.optimizer, cfg.lr, cfg.momentum, (cfg.momentum, cfg.adam_beta2))
        self.adam = cfg.optimizer != "sgd"
        self.conv = next(g for g in self.opt.param_groups if g["name"] == "conv")
        with torch.no_grad():
            torch._foreach_mul_(self.conv["params"], cfg.conv_init_scale)
        sq = [float(p.detach().double().pow(2).sum()) for p in self.conv["params"]]
        self.init_conv_sqsum = sum(sq)
        self.init_layer_sqnorm = dict(zip(self.conv["param_names"], sq))

        self.reference: ReferenceNorms | None = None
        self.wrapper = None
        scaling = self.res["conv_lr_scaling"]
        if scaling == "exact":
            from bnwd.nn.exact import WeightDecayAsLR

            # The baseline's conv L2 goes into the group, then the wrapper turns it into an lr schedule.
            self.conv["weight_decay"] = cfg.conv_weight_decay
            # eps / s_t^2 keeps the transform exact with BN eps; statistics rescaling (lr_exact only)
            # removes the moving-average lag at inference.
            self.wrapper = WeightDecayAsLR(
                self.opt,
                groups=["conv"],
                model=self.model,
                rescale_bn_eps=True,
                rescale_bn_stats=self.res["rescale_bn_stats"],
            )
        elif scaling in ("article", "reference"):
            self.reference = ReferenceNorms(scaling, cfg, self.init_conv_sqsum, self.conv["param_names"])
        self.stepper = self.wrapper if self.wrapper is not None else self.opt
        # The factor of the last step (device tensor, one per conv layer), for the log and the monitor.
        self.factor = torch.ones(len(self.conv["params"]), dtype=torch.float32, device=self.device)
        self.monitor = Monitor(
            self.model,
            self.opt,
            sample_every=self.sample_every,
            halflife=self.sample_every,
            layers="auto" if cfg.log_layers else "none",
        )
        self.conv_index = self.monitor.index_of(self.conv["params"])
        self.momentum_stats = MomentumStats(self.opt, "conv") if cfg.optimizer == "sgd" else None
        # bn098: lr_scaled keeps it at every evaluation (it is the lr_scaled_bn098 run); the views
        # add it, and the norm-compensated shadow, for every variant trained at the article's momentum.
        own_m = self.res["bn_momentum_used"]
        shadow = self.res["bn098_view"] or (self.views and own_m != C.bn098_momentum(cfg.bn_momentum))
        self.shadow = ShadowBNStats(self.model, C.bn098_momentum(cfg.bn_momentum)) if shadow else None
        self.comp = ShadowBNStats(self.model, own_m, convs=self.model.bn_inputs()) if self.views else None
        self.step = 0
        self.win = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, images
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.tb = None
        self._stop_signal: str | None = None
        # A leg of a run split across machines or time slots (`train(stop_step=, stop_after=)`):
        # stop as a SIGTERM would (checkpoint a whole step, exit 130) once `step` >= stop_step
        # steps are done or at the monotonic `deadline`; neither is part of the run's config.
        self.stop_step: int | None = None
        self.deadline: float | None = None

    def _compiled(self, cfg: C.Config, cuda: bool):
        """The model's forward, compiled when `compile` says so (config.Config.compile)."""
        self.compile_auto, self.cudagraphs = cfg.compile == "auto", False
        if cfg.compile == "off" or (cfg.compile == "auto" and not cuda):
            return self.model
        mode = cfg.compile_mode if cfg.compile_mode != "auto" else ("reduce-overhead" if cuda else "default")
        self.cudagraphs = mode in ("reduce-overhead", "max-autotune") and cuda
        # dynamic=False: the train batch and the eval batch each get their own static graph
        return torch.compile(self.model, mode=None if mode == "default" else mode, dynamic=False)

    def _eager_fallback(self, e: Exception) -> None:
        """compile=auto: a model that fails to compile trains eagerly, with a warning."""
        warnings.warn(f"torch.compile failed ({one_line(e, 200)}); training eagerly", stacklevel=2)
        self.forward = self.model
        self.compile_auto = False

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward of an evaluation batch: its graph compiles at the first evaluation, and under
        compile=auto a failure there also falls back to eager."""
        if self.forward is self.model or not self.compile_auto:
            return self.forward(x)
        try:
            return self.forward(x)
        except Exception as e:  # a compile error of the eval graph
            self._eager_fallback(e)
            return self.model(x)

    # ------------------------------------------------------------ state
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.stepper.state_dict(),
            "monitor": self.monitor.state_dict(),
            "step": self.step,
            "window": self.win.cpu(),
            "config": self.cfg.to_dict(),
            "lr_factor": self.factor.cpu(),
            "shadow_bn": self.shadow.state_dict() if self.shadow else None,
            "shadow_comp": self.comp.state_dict() if self.comp else None,
            "momentum_stats": self.momentum_stats.state_dict() if self.momentum_stats else None,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state(self, st: dict) -> None:
        saved = st.get("config")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{self.out / CKPT} holds no config; it is not a bnwd checkpoint")
        try:
            other = C.Config(**saved)
        except TypeError:
            raise CheckpointError(f"{self.out / CKPT} was written with an incompatible config") from None
        d = C.diff(other, self.cfg)
        if d:
            raise CheckpointError(
                f"{self.out / CKPT} belongs to another config ({'; '.join(d[:3])}); use --force to start over"
            )
        try:
            self.model.load_state_dict(st["model"])
            self.stepper.load_state_dict(st["optimizer"])
            self.monitor.load_state_dict(st["monitor"])
            if self.shadow:
                self.shadow.load_state_dict(st["shadow_bn"])
            if self.comp:
                self.comp.load_state_dict(st["shadow_comp"])
            if self.momentum_stats:
                self.momentum_stats.load_state_dict(st["momentum_stats"])
            self.factor = st["lr_factor"].to(self.device)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(
                f"{self.out / CKPT} does not fit this model/optimizer ({str(e).splitlines()[0][:160]})"
            ) from None
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
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.model.train()
        if self.forward is not self.model and self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are dead
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.forward(x)
                loss = F.cross_entropy(logits.float(), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        except Exception as e:  # a compile error surfaces at the first call; nothing was updated yet
            if self.forward is self.model or not self.compile_auto:
                raise
            self._eager_fallback(e)
            return self.train_step(step)
        if self.reference is not None:
            self.apply_lr_factor(step)
        self.stepper.step()
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
        if model is None and self.forward is not self.model:
            forward = self._eval_forward
        else:
            forward = (model or self.model).eval().folded()
        self.model.eval()
        tot = torch.zeros(3, dtype=torch.float64, device=self.device)
        for x, y in test_batches(self.data, 1000):
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = forward(x).float()
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
        if self.wrapper is not None:
            sc = self.wrapper.scale
            s = float(sc["conv"]) if isinstance(sc, dict) else float(sc)
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
            views = self.views and (step / self.spe <= self.stage1_end + 1e-9 or step == self.total_steps)
            views = views or self.cfg.bn_views == "all"
            if self.shadow is not None and (views or self.res["bn098_view"]):
                with self.shadow.swapped():
                    row["test_loss_bn098"], row["test_acc_bn098"] = self.evaluate()
            if views:
                with self.comp.swapped():
                    row["test_loss_comp"], row["test_acc_comp"] = self.evaluate()
                row["test_loss_precise"], row["test_acc_precise"] = self.evaluate(self.precise_model(step))
        return row

    @torch.no_grad()
    def precise_model(self, step: int) -> nn.Module:
        """The model with BN statistics recomputed at the current weights from `precise_batches`
        augmented training batches (`bnstats.precise_stats`), drawn from a stream of their own
        as a pure function of `step`: the same at a resumed step."""
        m = self.stats_model
        m.load_state_dict(self.model.state_dict())
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format

        def batches():
            for i in range(self.cfg.precise_batches):
                yield self.precise_loader.batch(step + i)[0].contiguous(memory_format=fmt)

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return precise_stats(m, batches())

    # ------------------------------------------------------------ main
    def resume_or_start(self, metrics_path: Path, ckpt_path: Path) -> None:
        if ckpt_path.exists():
            self.load_state(load_checkpoint(ckpt_path))
            # Keep exactly the sample points up to the checkpoint: later ones are recomputed.
            write_metrics(metrics_path, [r for r in read_metrics(metrics_path) if r.get("step", 0) <= self.step])
        else:
            atomic_write(metrics_path, "")

    def _stopping(self) -> bool:
        """A stop is asked for: a signal, or the leg's `stop_step` / `deadline` reached."""
        if not self._stop_signal:
            if self.stop_step is not None and self.step >= self.stop_step:
                self._stop_signal = f"stop_step={self.stop_step}"
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                self._stop_signal = "stop_after"
        return bool(self._stop_signal)

    def run(self) -> dict:
        metrics_path, ckpt_path = self.out / METRICS, self.out / CKPT
        self.resume_or_start(metrics_path, ckpt_path)
        self._open_tensorboard()
        start, t0 = self.step, time.time()
        bar = self._progress_bar(start)
        old = self._install_signals()
        try:
            with open(metrics_path, "a") as mf:
                while self.step < self.total_steps:
                    ref = self.reference
                    if ref is not None and not ref.wait_for(self.step / self.spe, self._stopping):
                        mf.flush()  # stopped while waiting for the reference: a whole step to resume from
                        os.fsync(mf.fileno())
                        save_checkpoint(ckpt_path, self.state())
                        raise Interrupted(self._stop_signal, self.step, self.total_steps)
                    lr = self.set_lr(self.step)
                    self.train_step(self.step)
                    self.step += 1
                    s, last = self.step, self.step == self.total_steps
                    if bar is not None:
                        bar.update(1)
                    sample = s % self.sample_every == 0 or last
                    if sample:
                        row = self.sample_point(s, lr, s % self.eval_every == 0 or last, ckpt_path)
                        mf.write(json.dumps(jsonable(row)) + "\n")
                        mf.flush()
                        self._tensorboard(row)
                        self._postfix(bar, row, s - start, t0)
                    stop = not last and self._stopping()
                    if (sample and s % self.ckpt_every == 0) or last or stop:
                        mf.flush()
                        os.fsync(mf.fileno())
                        save_checkpoint(ckpt_path, self.state())
                    if stop:
                        raise Interrupted(self._stop_signal, s, self.total_steps)
        finally:
            self._restore_signals(old)
            if bar is not None:
                bar.close()
            if self.tb is not None:
                self.tb.close()
            self.monitor.remove()
            if self.momentum_stats is not None:
                self.momentum_stats.remove()
            for sh in (self.shadow, self.comp):
                if sh is not None:
                    sh.remove()
        return self.finish(time.time() - t0, start)

    def finish(self, wall: float, start: int) -> dict:
        rows = read_metrics(self.out / METRICS)
        last = rows[-1]
        evals = [r for r in rows if "test_acc" in r]
        summary = {
            "variant": self.cfg.variant,
            "seed": self.cfg.seed,
            "preset": self.cfg.preset,
            "steps": self.total_steps,
            "epochs": self.total_steps / self.spe,
            "steps_per_epoch": self.spe,
            "final_test_acc": evals[-1]["test_acc"],
            "final_test_loss": evals[-1]["test_loss"],
            "plateau_test_acc": plateau(rows, self.cfg.lr_milestones, self.cfg.epochs),
            "final_train_loss": last["train_loss"],
            "final_train_acc": last["train_acc"],
            "final_conv_sqsum": last.get("conv_sqsum"),
            "initial_conv_sqsum": self.init_conv_sqsum,
            "initial_layer_sqnorm": self.init_layer_sqnorm,
            "best_test_acc": max(r["test_acc"] for r in evals),
            "wall_s": wall,
            "images_per_s": (self.total_steps - start) * self.cfg.batch_size / max(wall, 1e-9),
            "device": str(self.device),
            "peak_rss_mb": peak_rss_mb(),  # of the whole process (several runs in one reproduce)
            "finished": True,
        }
        atomic_write(self.out / SUMMARY, json.dumps(jsonable(summary), indent=1))
        return summary

    def _progress_bar(self, start: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        desc = f"{self.cfg.variant} s{self.cfg.seed}"
        return tqdm(total=self.total_steps, initial=start, unit="step", dynamic_ncols=True, desc=desc, leave=True)

    def _postfix(self, bar, row: dict, steps: int, t0: float) -> None:
        if bar is None:
            return
        post = {"loss": f"{row['train_loss']:.3f}"}
        post["img/s"] = f"{steps * self.cfg.batch_size / max(time.time() - t0, 1e-9):.0f}"
        if "test_acc" in row:
            post["test"] = f"{100 * row['test_acc']:.1f}%"
        bar.set_postfix(post, refresh=False)

    # ------------------------------------------------------------ signals / tensorboard
    def _install_signals(self):
        def handler(signum, frame):
            self._stop_signal = signal.Signals(signum).name

        old = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
        return old

    @staticmethod
    def _restore_signals(old):
        for sig, h in old.items():
            signal.signal(sig, h)

    def _open_tensorboard(self):
        if not self.cfg.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("tensorboard=true needs the tensorboard extra: pip install 'bnwd[tensorboard]'") from None
        self.tb = SummaryWriter(str(self.out / "tb"), purge_step=self.step)

    def _tensorboard(self, row: dict):
        if self.tb is None:
            return
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and v is not None:
                self.tb.add_scalar(k, v, row["step"])


class Interrupted(BnwdError):
    exit_code = 130

    def __init__(self, sig: str, step: int, total: int):
        self.where = f"stopped by {sig} at step {step}/{total}; checkpoint written"  # the CLI adds what to type
        super().__init__(f"{self.where}, continue with the same command plus --resume")


# ---------------------------------------------------------------- entry


def prepare_run_dir(cfg: C.Config, out: Path, resume: bool, force: bool) -> str:
    """Decide what to do with `out`: 'new', 'resume' or 'done'. Never clobbers silently."""
    out = Path(out)
    cfg_path = out / "config.json"
    if cfg_path.exists():
        try:
            old = C.load_config(cfg_path)
        except (ValueError, BnwdError, TypeError):
            if not force:
                raise ConfigError(f"{cfg_path} is unreadable; use --force to start the run over") from None
            old = None
        differences = C.diff(old, cfg) if old is not None else ["unreadable config"]
        if force:
            for name in ("metrics.jsonl", "summary.json", CKPT, "config.json"):
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
        elif differences:
            raise ConfigError(
                f"{out} holds a run with another config ({'; '.join(differences[:4])}); "
                "choose another --out or pass --force to overwrite it"
            )
        elif (out / "summary.json").exists():
            if resume:
                return "done"
            raise ConfigError(f"{out} already holds this finished run; pass --resume to keep it or --force to redo it")
        elif not resume:
            raise ConfigError(
                f"{out} holds an unfinished run with this config; pass --resume to continue it or --force to restart"
            )
        else:
            return "resume"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BnwdError(f"cannot create run directory {out}: {e.strerror or e}") from None
    doc = {**cfg.to_dict(), "resolved": C.resolved(cfg)}
    atomic_write(cfg_path, json.dumps(doc, indent=1))
    return "new"


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
    out = Path(out)
    what = prepare_run_dir(cfg, out, resume, force)
    if what == "done":
        return json.loads((out / "summary.json").read_text())
    with contextlib.suppress(FileNotFoundError):
        (out / FAILED).unlink()  # this attempt may succeed; readers wait for it again
    threads = torch.get_num_threads()
    try:  # `threads=` is process-wide in torch: give the caller its setting back
        return _train(cfg, out, data, progress, dataset, stop_step, deadline)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: C.Config, out: Path, data, progress: bool, dataset, stop_step=None, deadline=None) -> dict:
    trainer = Trainer(cfg, out, data, progress=progress, dataset=dataset)
    trainer.stop_step, trainer.deadline = stop_step, deadline
    # The resolved config also records what the data gave.
    doc = {
        **cfg.to_dict(),
        "resolved": C.resolved(cfg),
        "steps_per_epoch": trainer.spe,
        "total_steps": trainer.total_steps,
        "n_train": trainer.data.n_train,
        "n_test": trainer.data.n_test,
        # S(0), for an lr_scaled run that reads this one while it trains (`ReferenceNorms`)
        "initial_conv_sqsum": trainer.init_conv_sqsum,
        "initial_layer_sqnorm": trainer.init_layer_sqnorm,
    }
    atomic_write(out / "config.json", json.dumps(doc, indent=1))
    return trainer.run()
