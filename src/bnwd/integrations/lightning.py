"""`BnwdMonitor`: a Lightning callback that runs a `bnwd.Monitor` and logs it through the trainer.

::

    from bnwd.integrations.lightning import BnwdMonitor

    trainer = lightning.Trainer(callbacks=[BnwdMonitor(sample_every=100, audit=True)], ...)
    trainer.fit(module)      # logs bnwd/conv_sqsum, bnwd/eff_lr/conv/<name>, ... every 100 optimizer steps

What it does, and when:

- ``on_train_start`` (not ``on_fit_start``: Lightning restores the optimizer, schedulers and
  ``global_step`` of a resumed fit only after ``on_fit_start``): a `bnwd.Monitor` is attached to
  ``trainer.optimizers[optimizer_index]`` (default the first optimizer) over the parameters of
  the LightningModule, with ``sample_every``, ``halflife``, ``layers`` and ``eff_lr_power``
  passed through. To monitor several optimizers, add one callback per optimizer with its own
  ``optimizer_index`` and ``prefix``.
- ``on_train_batch_end``: once a multiple of ``sample_every`` monitor steps has been passed
  since the last sample, ``monitor.sample()`` is logged with every logger in
  ``trainer.loggers`` via ``logger.log_metrics({prefix + key: value}, step=trainer.global_step)``
  (exactly the Monitor's floats, no reduction, with every logger, not only the first). Lightning's
  ``self.log`` is not used: it would turn the floats into float32 tensors and only reach the
  loggers every ``log_every_n_steps``. The step is ``trainer.global_step``, the number of optimizer
  steps taken, which for one optimizer equals the Monitor's own count (``sample["step"]``):
  the value logged at step 100 is the state after 100 optimizer steps. (Lightning logs
  ``self.log(..., on_step=True)`` metrics of the same batch one step lower, at the number of
  batches that had stepped *before* it.) The latest sample, without prefix, is kept in
  ``callback.last_sample``.
- Gradient accumulation: the Monitor counts optimizer steps through optimizer hooks, so
  ``sample_every`` is in optimizer steps, micro-batches do not count, and a sample is logged once
  (after the batch whose step completed the window), however many micro-batches follow.
- Lightning steps the optimizer with a closure (forward and backward run *inside*
  ``optimizer.step``), after the Monitor's pre-step hook has read ``.grad``; the callback
  therefore re-reads the gradients in a post-step hook that runs before the Monitor's, so that
  ``grad_sq_unit`` is that of the gradient the optimizer used (after gradient clipping). This
  relies on the optimizer not changing ``.grad`` in place, which holds for ``torch.optim``.
- ``teardown`` (end of fit, also after an exception): the hooks are removed; ``callback.monitor``
  stays readable.
- ``audit=True``: once, before the first optimizer step, `bnwd.invariance_report` is run on the
  LightningModule (its ``forward``) with ``example_input`` or else ``pl_module.example_input_array``
  or else the input of the first training batch (``batch_to_input(batch)``, default: the batch
  if it is a tensor, else its first element). ``callback.scale_invariant`` is
  ``{parameter name: scale-invariant?}`` and ``callback.audit_rows`` the rows of `bnwd.audit`
  (``role``: ``"effective-lr control"`` for scale-invariant parameters with weight_decay > 0 in
  their optimizer group, where L2 only sets ``||w||`` and hence the effective lr;
  ``"regularizer"`` for the others with weight_decay > 0; ``"none"`` without weight decay). The
  table is printed on rank 0 (``verbose``). The audit works on a float64 copy and does not touch
  the model or the RNG streams, so training is unchanged. With the audit comes the plan
  (`bnwd.nn.plan.plan_optimizer`, `docs/plan.md`): ``callback.plan`` has, per parameter group of
  the monitored optimizer (SGD or AdamW), the clock's equilibrium angular update and relaxation
  time per lr stage and the lr multiplier its weight decay implies, over the steps left
  (``trainer.estimated_stepping_batches`` minus ``global_step``, lrs read from a copy of the
  optimizer's LR scheduler); its group table is printed after the audit. ``callback.plan`` stays
  None (with the reason in ``callback.plan_note``) for other optimizers, unbounded runs or
  ReduceLROnPlateau.
- Resumed fits (``trainer.fit(..., ckpt_path=...)``): the Monitor's state (window and EMA
  accumulators, initial norms and lrs, step count) is saved in the checkpoint through the
  callback's ``state_dict`` and restored, so a resumed run logs the same values at the same
  steps as an uninterrupted one. From a checkpoint without that state (saved without this
  callback, or over other parameters: a warning), a fresh Monitor starts at the resume point:
  ``eff_lr_rel``/``conv_sqsum_rel`` are relative to the resumed weights, and with one optimizer
  its step count starts at ``trainer.global_step``, so samples stay on multiples of
  ``sample_every``.

Single-device and DDP training (every rank keeps an identical Monitor; loggers write on rank 0).
Sharded strategies (FSDP, DeepSpeed) hand the optimizer flattened shards, which the Monitor
cannot name. Imports ``lightning.pytorch``, else ``pytorch_lightning``: the callback belongs to
whichever is imported, and Lightning only accepts callbacks of its own package.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from bnwd.errors import BnwdError
from bnwd.nn.invariance import audit, format_audit
from bnwd.nn.monitor import LAYERS, Monitor
from bnwd.nn.plan import plan_optimizer

_HINT = "bnwd.integrations.lightning needs Lightning (lightning or pytorch_lightning): pip install 'bnwd[lightning]'"

try:
    from lightning.pytorch import Callback
    from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
except ModuleNotFoundError as e:
    if e.name is None or e.name.split(".")[0] != "lightning":
        raise
    try:
        from pytorch_lightning import Callback
        from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
    except ModuleNotFoundError as e2:
        if e2.name is None or e2.name.split(".")[0] != "pytorch_lightning":
            raise
        raise ImportError(_HINT) from None

__all__ = ["BnwdMonitor"]


def _default_input(batch: Any) -> Any:
    """The model input of a training batch: the batch itself if a tensor, else its first element."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], (torch.Tensor, tuple)):
        return batch[0]
    raise TypeError(
        f"BnwdMonitor(audit=True) cannot tell the model input in a batch of type {type(batch).__name__}: "
        "pass example_input=..., set pl_module.example_input_array or pass batch_to_input=..."
    )


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


class BnwdMonitor(Callback):
    """Log a `bnwd.Monitor` (norms, relative steps, angles, effective lrs) through Lightning's loggers.

    Args:
        sample_every: optimizer steps between logged samples (the Monitor's ``sample_every``).
        prefix: prepended to every key of ``Monitor.sample()`` (``"bnwd/eff_lr_conv"``, ...).
        optimizer_index: which of ``trainer.optimizers`` to monitor.
        halflife, layers, eff_lr_power: passed to `bnwd.Monitor`.
        audit: run the scale-invariance audit once at the start of training (module docstring).
        example_input: the audit's model input (a tensor or a tuple of positional inputs);
            default ``pl_module.example_input_array``, else the first training batch.
        batch_to_input: maps a training batch to the model input for the audit (default: the
            batch if a tensor, else ``batch[0]``).
        audit_kwargs: passed to `bnwd.invariance_report` (``loss_fn``, ``scales``, ``rtol``, ...).
        verbose: print the audit table (rank 0, ``rank_zero_info``).

    After (or during) a fit: ``monitor`` (the `bnwd.Monitor`), ``last_sample`` (its latest
    sample, no prefix), ``scale_invariant`` and ``audit_rows`` (with ``audit=True``).
    """

    def __init__(
        self,
        sample_every: int = 50,
        *,
        prefix: str = "bnwd/",
        optimizer_index: int = 0,
        halflife: float | None = None,
        layers: str = "auto",
        eff_lr_power: float | None = None,
        audit: bool = False,
        example_input: Any = None,
        batch_to_input: Callable[[Any], Any] | None = None,
        audit_kwargs: Mapping[str, Any] | None = None,
        verbose: bool = True,
    ):
        super().__init__()
        if isinstance(sample_every, bool) or int(sample_every) != sample_every or sample_every < 1:
            raise ValueError(f"sample_every must be an integer >= 1 (optimizer steps), got {sample_every!r}")
        if layers not in LAYERS:
            raise ValueError(f"layers must be one of {LAYERS}, got {layers!r}")
        if halflife is not None and not halflife > 0:
            raise ValueError(f"halflife must be > 0 steps, got {halflife!r}")
        self.sample_every = int(sample_every)
        self.prefix = str(prefix)
        self.optimizer_index = int(optimizer_index)
        self.halflife, self.layers, self.eff_lr_power = halflife, layers, eff_lr_power
        self.audit = bool(audit)
        self.example_input = example_input
        self.batch_to_input = batch_to_input or _default_input
        self.audit_kwargs = dict(audit_kwargs or {})
        self.verbose = bool(verbose)

        self.monitor: Monitor | None = None
        self.last_sample: dict[str, float] | None = None
        self.scale_invariant: dict[str, bool] | None = None
        self.audit_rows: list[dict] | None = None
        self.plan = None  # bnwd.nn.plan.Plan, with audit=True
        self.plan_note: str | None = None
        self._handle = None  # our post-step hook, registered before the Monitor's
        self._last_logged = 0  # Monitor step count at the last sample (or at attach)
        self._pending_state: dict | None = None  # Monitor state from a checkpoint, applied at attach
        self._audit_pending = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix, optimizer_index=self.optimizer_index)

    def on_train_start(self, trainer, pl_module) -> None:
        self._detach()
        opts = trainer.optimizers
        if not -len(opts) <= self.optimizer_index < len(opts):
            raise ValueError(
                f"BnwdMonitor(optimizer_index={self.optimizer_index}) but the trainer has {len(opts)} optimizer(s)"
            )
        opt = opts[self.optimizer_index]
        # registered before the Monitor's own hooks, so it runs before Monitor._post
        self._handle = opt.register_step_post_hook(self._grads_after_closure)
        mon = self.monitor = Monitor(
            pl_module,
            opt,
            sample_every=self.sample_every,
            halflife=self.halflife,
            layers=self.layers,
            eff_lr_power=self.eff_lr_power,
        )
        state, self._pending_state = self._pending_state, None
        restored = False
        if state is not None:
            try:
                mon.load_state_dict(state)
                restored = True
            except (ValueError, KeyError, TypeError) as e:
                rank_zero_warn(f"BnwdMonitor: the checkpoint's Monitor state is not used ({e}); starting afresh")
        if not restored and len(opts) == 1:
            mon.step = int(trainer.global_step)  # a fresh monitor on a resumed fit: keep multiples of N
        self._last_logged = mon.step
        self.last_sample = None

        if self.audit:
            x = self.example_input
            if x is None:
                x = getattr(pl_module, "example_input_array", None)
                if isinstance(x, list):  # Lightning's convention: a list or tuple is positional args
                    x = tuple(x)
            if x is None:
                self._audit_pending = True  # on the first training batch
            else:
                self._run_audit(trainer, pl_module, x)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._detach()

    def _detach(self) -> None:
        if self.monitor is not None:
            self.monitor.remove()
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._audit_pending = False

    def _grads_after_closure(self, opt, args, kwargs) -> None:
        """With a closure, backward ran inside ``step``, after the Monitor's pre-step hook read
        ``.grad`` (stale or None then): re-read the gradient the optimizer actually used."""
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        mon = self.monitor
        if closure is None or mon is None:
            return
        mon.refresh_grads()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._audit_pending:
            self._audit_pending = False
            self._run_audit(trainer, pl_module, self.batch_to_input(batch))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        mon = self.monitor
        if mon is None or mon.step // self.sample_every <= self._last_logged // self.sample_every:
            return  # no window completed since the last sample (e.g. an accumulation micro-batch)
        self._last_logged = mon.step
        sample = self.last_sample = mon.sample()
        metrics = {self.prefix + k: v for k, v in sample.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor.state_dict()} if self.monitor is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_state = state_dict.get("monitor")

    def _run_audit(self, trainer, pl_module, example_input: Any) -> None:
        if isinstance(example_input, Mapping):
            raise TypeError("BnwdMonitor(audit=True): keyword inputs (a dict) are not supported; pass a tuple")
        x = _to_device(example_input, pl_module.device)
        params = dict(pl_module.named_parameters())
        cuda = sorted({p.device.index for p in params.values() if p.device.type == "cuda"})
        wd: dict[int, float] = {}
        for opt in trainer.optimizers:
            for g in opt.param_groups:
                for p in g["params"]:
                    wd.setdefault(id(p), float(g.get("weight_decay", 0.0)))
        by_name = {name: wd.get(id(p), 0.0) for name, p in params.items()}
        with torch.random.fork_rng(devices=cuda):  # leave every RNG stream as it was
            rows = audit(pl_module, x, by_name, **self.audit_kwargs)
        self.audit_rows = rows
        self.scale_invariant = {r["name"]: r["invariant"] for r in rows}
        if self.verbose:
            rank_zero_info("bnwd audit: what weight decay does to each parameter\n" + format_audit(rows))
        self._run_plan(trainer, pl_module)

    def _run_plan(self, trainer, pl_module) -> None:
        """The plan of the monitored optimizer over the remaining steps (see the module docstring)."""
        opt = trainer.optimizers[self.optimizer_index]
        total = trainer.estimated_stepping_batches
        steps = int(total) - int(trainer.global_step) if total != float("inf") else 0
        if steps < 1:
            self.plan, self.plan_note = None, "no finite number of steps left (max_steps / max_epochs)"
            return
        nb = trainer.num_training_batches
        spe = max(1, math.ceil(nb / trainer.accumulate_grad_batches)) if nb != float("inf") else steps
        cfg = next((c for c in trainer.lr_scheduler_configs if getattr(c.scheduler, "optimizer", None) is opt), None)
        try:
            self.plan = plan_optimizer(
                pl_module,
                opt,
                self.scale_invariant,
                steps,
                spe,
                scheduler=cfg.scheduler if cfg else None,
                interval=cfg.interval if cfg else "step",
                frequency=cfg.frequency if cfg else 1,
                model_name=type(pl_module).__name__,
            )
            self.plan_note = None
        except BnwdError as e:
            self.plan, self.plan_note = None, str(e)
        if self.verbose:
            text = self.plan.format(layers=False) if self.plan is not None else f"no plan: {self.plan_note}"
            rank_zero_info("bnwd plan: what the weight decay implies over the remaining steps\n" + text)
