"""The training loop: one run directory per run, complete and resumable.

RUN/config.json     the resolved config
RUN/metrics.jsonl   one JSON object per sample point (every `sample_every` epochs)
RUN/summary.json    written when the run finishes
RUN/checkpoint.pt   model, optimizer, monitor, step, config; written atomically
"""

from __future__ import annotations

import contextlib
import json
import math
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

from . import config as C
from .data import Cifar10, TrainLoader, load_cifar10, test_batches
from .errors import BnwdError, CheckpointError, ConfigError, DivergenceError
from .models import resnet
from .monitor import Monitor
from .optim import article_lr_factor, make_optimizer, param_groups, step_lr

CKPT = "checkpoint.pt"


# ---------------------------------------------------------------- files


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temp file, fsync, rename: a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise BnwdError(
            f"could not write {path}: {e.strerror or e}; the previous version of the file is intact"
        ) from None


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(path: Path, state: dict) -> None:
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or tampered file: zip, pickle or unsupported-global errors
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} is corrupt or not a bnwd checkpoint ({msg[:160]}); delete it or rerun with --force"
        ) from None


def read_metrics(path: Path) -> list[dict]:
    """Complete lines of metrics.jsonl; a half-written last line (crash) is dropped."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def _jsonable(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


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


# ---------------------------------------------------------------- lr scaling


class ConvGradScaler:
    """The article's replacement of conv L2 by a learning-rate factor.

    Multiplies the conv gradients (so the factor enters the momentum buffer, as in the
    article) by S(t) / S_ref(t), where S is the current sum of squared conv weights and
    S_ref the baseline's: `article` -> S(0) * piecewise_linear(epoch); `reference` ->
    interpolated from a finished baseline run's metrics (global sum, or per layer).
    With Adam/AdamW the effective lr of a scale-invariant weight goes as lr/||w||, so the
    factor applies to the conv learning rate as sqrt(S/S_ref) instead.
    """

    def __init__(
        self,
        model: nn.Module,
        conv_params: list[nn.Parameter],
        conv_names: list[str],
        mode: str,
        steps_per_epoch: int,
        reference: str = "",
        reference_mode: str = "global",
        adam: bool = False,
    ):
        self.params, self.names, self.mode, self.spe, self.adam = conv_params, conv_names, mode, steps_per_epoch, adam
        self.per_layer = mode == "reference" and reference_mode == "layer"
        with torch.no_grad():
            self.s0 = float(sum(p.detach().double().pow(2).sum() for p in conv_params))
        self.last = 1.0
        if mode == "reference":
            self._load_reference(Path(reference))

    def _load_reference(self, run: Path) -> None:
        rows = read_metrics(run / "metrics.jsonl")
        if not rows or not (run / "summary.json").exists():
            raise ConfigError(f"reference={run} is not a finished baseline run (needs metrics.jsonl and summary.json)")
        cfg = json.loads((run / "config.json").read_text())
        if cfg.get("variant") != "baseline":
            raise ConfigError(f"reference={run} is a {cfg.get('variant')!r} run; it must be a baseline run")
        # The reference's sample points are at the end of windows; S_ref(0) is that run's initial sqsum.
        s0 = json.loads((run / "summary.json").read_text()).get("initial_conv_sqsum")
        self.ref_epoch = np.array([0.0] + [r["epoch"] for r in rows])
        if self.per_layer:
            missing = [n for n in self.names if f"sqnorm/conv/{n}" not in rows[0]]
            if missing:
                raise ConfigError(
                    f"reference={run} has no per-layer norms for {missing[0]} (was it trained with log_layers=false or another model?)"
                )
            init = json.loads((run / "summary.json").read_text()).get("initial_layer_sqnorm", {})
            self.ref = np.array(
                [[init.get(n, rows[0][f"sqnorm/conv/{n}"]) for n in self.names]]
                + [[r[f"sqnorm/conv/{n}"] for n in self.names] for r in rows]
            )
        else:
            self.ref = np.array([s0 if s0 else rows[0]["conv_sqsum"]] + [r["conv_sqsum"] for r in rows])

    def reference_sqsum(self, step: int):
        e = step / self.spe
        if self.mode == "article":
            return self.s0 * article_lr_factor(e)
        if self.per_layer:
            return np.array([np.interp(e, self.ref_epoch, self.ref[:, i]) for i in range(self.ref.shape[1])])
        return float(np.interp(e, self.ref_epoch, self.ref))

    @torch.no_grad()
    def factors(self, step: int) -> torch.Tensor:
        """Per-conv-layer factor S(t)/S_ref(t) as a device tensor (no host sync)."""
        sq = torch.stack(torch._foreach_norm(self.params)).float().pow(2)
        ref = self.reference_sqsum(step)
        if self.per_layer:
            f = sq / torch.as_tensor(ref, dtype=sq.dtype, device=sq.device)
        else:
            f = (sq.sum() / ref).expand(len(self.params))
        return f.sqrt() if self.adam else f

    @torch.no_grad()
    def scale_grads(self, step: int) -> torch.Tensor:
        f = self.factors(step)
        grads = [p.grad for p in self.params]
        torch._foreach_mul_(grads, list(f.unbind()))
        return f


# ---------------------------------------------------------------- the run


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
        self.amp = cfg.amp == "bf16" or (cfg.amp == "auto" and cuda)
        self.channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and cuda)
        if self.channels_last and not cuda:
            from .bench import HANG_HINT

            warnings.warn(f"channels_last=on on CPU: {HANG_HINT}", stacklevel=2)

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
        self.model = model.to(
            self.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )
        wd = {"conv": self.res["conv_weight_decay"], "bn": cfg.weight_decay, "head": cfg.weight_decay}
        self.groups = param_groups(self.model, wd)
        self.opt = make_optimizer(self.groups, cfg.optimizer, cfg.lr, cfg.momentum, (cfg.momentum, cfg.adam_beta2))
        conv = next(g for g in self.opt.param_groups if g["name"] == "conv")
        self.init_conv_sqsum = float(sum(p.detach().double().pow(2).sum() for p in conv["params"]))
        self.init_layer_sqnorm = {
            n: float(p.detach().double().pow(2).sum()) for n, p in zip(conv["param_names"], conv["params"])
        }

        self.scaler: ConvGradScaler | None = None
        self.wrapper = None
        scaling = self.res["conv_lr_scaling"]
        if scaling == "exact":
            from .exact import WeightDecayAsLR

            # The baseline's conv L2 goes into the group, then the wrapper turns it into an lr schedule.
            conv["weight_decay"] = cfg.weight_decay
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
            self.scaler = ConvGradScaler(
                self.model,
                conv["params"],
                conv["param_names"],
                scaling,
                spe,
                cfg.reference,
                cfg.reference_mode,
                adam=cfg.optimizer != "sgd",
            )
        self.stepper = self.wrapper if self.wrapper is not None else self.opt
        self.monitor = Monitor(
            self.model,
            self.opt,
            sample_every=self.sample_every,
            halflife=self.sample_every,
            layers="auto" if cfg.log_layers else "none",
        )
        self.step = 0
        self.win = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, images
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.tb = None
        self._stop_signal: str | None = None

    # ------------------------------------------------------------ state
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.stepper.state_dict(),
            "monitor": self.monitor.state_dict(),
            "step": self.step,
            "window": self.win.cpu(),
            "config": self.cfg.to_dict(),
            "lr_factor_last": self.scaler.last if self.scaler else 1.0,
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
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"{self.out / CKPT} does not fit this model/optimizer ({str(e).splitlines()[0][:160]})"
            ) from None
        self.step = int(st["step"])
        self.win = st["window"].to(self.device)
        if self.scaler:
            self.scaler.last = st.get("lr_factor_last", 1.0)
        torch.set_rng_state(st["torch_rng"])

    # ------------------------------------------------------------ pieces
    def set_lr(self, step: int) -> float:
        lr = step_lr(step, self.spe, self.cfg.lr, self.cfg.lr_milestones, self.cfg.lr_gamma)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def train_step(self, step: int) -> None:
        x, y = self.loader.batch(step)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.scaler is not None:
            f = self.scaler.scale_grads(step)
            self._factor = f
        self.stepper.step()
        with torch.no_grad():
            ld = loss.detach()
            self.bad_step.copy_(torch.where((self.bad_step < 0) & ~torch.isfinite(ld), step, self.bad_step))
            self.win += torch.stack(
                [
                    ld.double() * len(y),
                    (logits.argmax(1) == y).sum().double(),
                    torch.tensor(float(len(y)), dtype=torch.float64, device=self.device),
                ]
            )

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        self.model.eval()
        tot = torch.zeros(3, dtype=torch.float64, device=self.device)
        for x, y in test_batches(self.data, 1000):
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.model(x).float()
            tot += torch.stack(
                [
                    F.cross_entropy(logits, y, reduction="sum").double(),
                    (logits.argmax(1) == y).sum().double(),
                    torch.tensor(float(len(y)), dtype=torch.float64, device=self.device),
                ]
            )
        loss, correct, n = tot.tolist()
        return loss / n, correct / n

    def sample_row(self, step: int, lr: float) -> dict:
        row: dict[str, Any] = {"step": step, "epoch": step / self.spe, "lr": lr}
        loss_sum, correct, n = self.win.tolist()
        self.win.zero_()
        row["train_loss"] = loss_sum / max(n, 1)
        row["train_acc"] = correct / max(n, 1)
        if self.scaler is not None:
            self.scaler.last = float(self._factor.mean()) if hasattr(self, "_factor") else self.scaler.last
            row["lr_factor"] = self.scaler.last
        elif self.wrapper is not None:
            sc = self.wrapper.scale
            s = float(sc["conv"]) if isinstance(sc, dict) else float(sc)
            row["lr_factor"] = 1.0 / (s * s)
            row["decay_scale"] = s
        else:
            row["lr_factor"] = 1.0
        m = self.monitor.sample()
        m.pop("step", None)
        row.update(m)
        return row

    # ------------------------------------------------------------ main
    def run(self) -> dict:
        out = self.out
        metrics_path = out / "metrics.jsonl"
        ckpt_path = out / CKPT
        if ckpt_path.exists():
            self.load_state(load_checkpoint(ckpt_path))
            # Keep exactly the sample points up to the checkpoint: later ones are recomputed.
            rows = [r for r in read_metrics(metrics_path) if r.get("step", 0) <= self.step]
            atomic_write(metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        else:
            atomic_write(metrics_path, "")
        self._open_tensorboard()
        start, t0 = self.step, time.time()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=self.total_steps,
                initial=start,
                unit="step",
                dynamic_ncols=True,
                desc=f"{self.cfg.variant} s{self.cfg.seed}",
                leave=True,
            )
        old = self._install_signals()
        try:
            with open(metrics_path, "a") as mf:
                lr = self.set_lr(self.step)
                while self.step < self.total_steps:
                    lr = self.set_lr(self.step)
                    self.train_step(self.step)
                    self.step += 1
                    if bar is not None:
                        bar.update(1)
                    s = self.step
                    sample = s % self.sample_every == 0 or s == self.total_steps
                    if sample:
                        bad = int(self.bad_step)
                        if bad >= 0:
                            raise DivergenceError(
                                f"loss became NaN/inf at step {bad} (epoch {bad / self.spe:.2f}); the last good checkpoint "
                                f"{ckpt_path if ckpt_path.exists() else '(none yet)'} is intact; lower lr or check the data"
                            )
                        row = self.sample_row(s, lr)
                        if s % self.eval_every == 0 or s == self.total_steps:
                            row["test_loss"], row["test_acc"] = self.evaluate()
                        mf.write(json.dumps(_jsonable(row)) + "\n")
                        mf.flush()
                        self._tensorboard(row)
                        if bar is not None:
                            el = time.time() - t0
                            post = {
                                "loss": f"{row['train_loss']:.3f}",
                                "img/s": f"{(s - start) * self.cfg.batch_size / max(el, 1e-9):.0f}",
                            }
                            if "test_acc" in row:
                                post["test"] = f"{100 * row['test_acc']:.1f}%"
                            bar.set_postfix(post, refresh=False)
                    if (sample and s % self.ckpt_every == 0) or s == self.total_steps:
                        os.fsync(mf.fileno())
                        save_checkpoint(ckpt_path, self.state())
                    if self._stop_signal and s < self.total_steps:
                        mf.flush()
                        os.fsync(mf.fileno())
                        save_checkpoint(ckpt_path, self.state())
                        raise Interrupted(self._stop_signal, s, self.total_steps)
        finally:
            self._restore_signals(old)
            if bar is not None:
                bar.close()
            if self.tb is not None:
                self.tb.close()
            self.monitor.remove()
        wall = time.time() - t0
        rows = read_metrics(metrics_path)
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
            "final_train_loss": last["train_loss"],
            "final_train_acc": last["train_acc"],
            "final_conv_sqsum": last.get("conv_sqsum"),
            "initial_conv_sqsum": self.init_conv_sqsum,
            "initial_layer_sqnorm": self.init_layer_sqnorm,
            "best_test_acc": max(r["test_acc"] for r in evals),
            "wall_s": wall,
            "images_per_s": (self.total_steps - start) * self.cfg.batch_size / max(wall, 1e-9),
            "device": str(self.device),
            "finished": True,
        }
        atomic_write(out / "summary.json", json.dumps(summary, indent=1))
        return summary

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
        super().__init__(
            f"stopped by {sig} at step {step}/{total}; checkpoint written, continue with the same command plus --resume"
        )


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
) -> dict:
    """Train one run into `out` (see module docstring); returns the summary dict."""
    out = Path(out)
    what = prepare_run_dir(cfg, out, resume, force)
    if what == "done":
        return json.loads((out / "summary.json").read_text())
    trainer = Trainer(cfg, out, data, progress=progress, dataset=dataset)
    # The resolved config also records what the data gave.
    doc = {
        **cfg.to_dict(),
        "resolved": C.resolved(cfg),
        "steps_per_epoch": trainer.spe,
        "total_steps": trainer.total_steps,
        "n_train": trainer.data.n_train,
        "n_test": trainer.data.n_test,
    }
    atomic_write(out / "config.json", json.dumps(doc, indent=1))
    return trainer.run()
