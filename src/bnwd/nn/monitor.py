"""`Monitor`: per-layer norms, relative steps, angles and effective learning rates.

Attaches to any ``torch.optim.Optimizer`` through removable step hooks (like Lightning's
``LearningRateMonitor``) and only reads: it never touches parameters, gradients, optimizer
state or the RNG, so a run with a monitor is bit-identical to one without.

The maths. For a scale-invariant weight ``w`` (a conv kernel followed by BN) the loss
satisfies ``L(c w) = L(w)``, so the gradient is orthogonal to ``w`` and ``g(w) =
g(w/||w||) / ||w||``. One SGD step therefore moves ``w`` by

    ||dw|| / ||w|| = lr ||g(w/||w||)|| / ||w||^2,

i.e. on the unit sphere the layer trains with the *effective learning rate*
``lr / ||w||^2``. With Adam-type optimizers the step size does not scale with the gradient
(``dw ~ lr * m/sqrt(v)`` is invariant to rescaling ``g``), so ``||dw||/||w|| ~ lr/||w||``
and the effective learning rate is ``lr / ||w||`` instead. The relative step and the
angle are measured directly and hold for any optimizer.

Per optimizer step, for every tracked parameter (``wb`` before, ``wa`` after the step,
``s = wa - wb``), from flat copies of all parameters and gradients (``_foreach_copy_``) and one
chunked float64 sum of squares per hook (13 aten ops per step, 6 in the pre and 7 in the post
hook, whatever the number of layers: every view they use is made once; memory: three float32 and
six float64 copies of the parameters) and no host sync:

    sqnorm  = ||wa||^2
    rel     = ||s|| / ||wb||
    angle   = atan2(||wb x wa||, wb . wa)       (radians)
            = atan2(sqrt(||wb||^2 ||s||^2 - (wb.s)^2), ||wb||^2 + wb.s)
      with  wb.s = (||wa||^2 - ||wb||^2 - ||s||^2) / 2; this form has no cancellation for
      the small, mostly tangential steps of training (relative error ~ eps / rel, with eps
      the precision of the norm accumulation; a purely radial step, e.g. weight decay with a
      zero gradient, has an absolute angle error ~ sqrt(eps * rel)).
    eff_lr  = lr / ||wa||^2      (lr / ||wa|| for Adam, AdamW, NAdam, RAdam, Adamax, Adagrad,
                                 RMSprop, Adadelta), lr = the group's lr of that step, times the
                                 gradient multiplier set with `set_lr_scale` (1 by default; the
                                 article's lr scaling multiplies conv gradients, not the lr)
    eff_lr_rel = eff_lr / (lr_0 / ||w_0||^2)   (power 1 for Adam-type), where w_0 and lr_0 are
                                 the weights and the group lr when the monitor was created
    grad_sq_unit = ||g||^2 ||wb||^2   the squared gradient the optimizer is handed (``.grad`` at
                                 the pre-step hook, before its weight decay), taken at unit weight
                                 norm: for a scale-invariant weight g(w) = g(w/||w||)/||w||, so
                                 this is ||g(w/||w||)||^2, the ``L`` of the equilibrium norm
                                 (`bnwd.nn.theory.sgd_equilibrium(grad_sq_unit=L)`)

The same quantities are computed for each parameter group taken as one concatenated
vector (``.../group/<name>``). ``rel``, ``angle`` and ``grad_sq_unit`` are kept three ways:

- window mean: the mean over the steps since the last ``sample()`` (key ``rel_step/...``),
- last: the value at the last step (``rel_step_last/...``),
- EMA: updated every step with ``decay = 0.5 ** (1 / halflife)`` and bias-corrected,
  ``ema_n = sum_i d^(n-i) (1-d) x_i / (1 - d^n)`` (``rel_step_ema/...``), so that the first
  samples are not pulled toward 0. The article's plots sample every quarter epoch with a
  quarter-epoch half-life: ``Monitor(model, opt, sample_every=spe // 4)``.

``sqnorm``, ``eff_lr`` and ``eff_lr_rel`` are values after the last step.

A parameter the optimizer did not update in a step (its ``.grad`` is None after the step,
which torch optimizers skip) does not enter that step's window mean or EMA; neither does a
parameter whose norm before the step was 0 (e.g. a zero-initialised bias at step 1), for
which ``rel`` and ``angle`` are undefined. Entries with no valid step in the window are NaN.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn as nn

#: Optimizers whose update does not scale with the gradient: eff lr = lr / ||w||.
ADAPTIVE = tuple(
    getattr(torch.optim, n)
    for n in ("Adam", "AdamW", "NAdam", "RAdam", "Adamax", "Adagrad", "RMSprop", "Adadelta")
    if hasattr(torch.optim, n)
)
LAYERS = ("auto", "conv", "all", "none")
_M = ("rel", "angle", "grad_sq_unit")  # the per-step metrics kept as window mean / last / EMA
STATE_VERSION = 5
CHUNK = 1024  # elements per partial sum of the flat parameter copies (each parameter padded to whole chunks)
BUFFER = 64  # steps recorded on the device between two folds into the accumulators


def _lr(v: Any) -> Any:
    """A group's lr without a host sync: floats as they are, tensors cloned (kept on device)."""
    return v.detach().clone() if isinstance(v, torch.Tensor) else float(v)


def _sqnorms(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm([t.detach() for t in ts], 2, dtype=torch.float64)).square()


class _Tracked:
    """What the monitor tracks and how `sample()` names it: the parameters of the optimizer's groups
    (each once, in group order), their names, groups and whether each is a conv kernel.

    Units: every parameter (0 .. P-1), then every group taken as one vector (P .. P+G-1);
    ``member`` (G, P) is 1 where a parameter belongs to a group, so ``member @ x`` sums a
    per-parameter quantity into its groups."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        conv_ids = {
            id(m.weight)
            for m in model.modules()
            if isinstance(m, nn.modules.conv._ConvNd) and isinstance(m.weight, torch.Tensor)
        }
        by_id = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.params: list[torch.Tensor] = []
        self.names: list[str] = []
        self.group_of: list[int] = []  # index of the param's optimizer group
        self.is_conv: list[bool] = []
        self.group_names: list[str] = []
        seen: set[int] = set()
        for gi, g in enumerate(optimizer.param_groups):
            gname = str(g.get("name", f"group{gi}"))
            self.group_names.append(gname)
            pnames = g.get("param_names")
            for j, p in enumerate(g["params"]):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                self.params.append(p)
                self.names.append(
                    str(pnames[j]) if pnames is not None and j < len(pnames) else by_id.get(id(p), f"{gname}.{j}")
                )
                self.group_of.append(gi)
                self.is_conv.append(id(p) in conv_ids)
        if not self.params:
            raise ValueError("the optimizer has no parameters to monitor")
        devices = {p.device for p in self.params}
        if len(devices) > 1:
            raise ValueError(f"Monitor needs all parameters on one device, got {sorted(map(str, devices))}")
        self.device = self.params[0].device
        self.P, self.G = len(self.params), len(optimizer.param_groups)
        self.U = self.P + self.G
        member = torch.zeros(self.G, self.P, dtype=torch.float64)
        member[self.group_of, list(range(self.P))] = 1.0
        self.member = member.to(self.device)

    @property
    def keys(self) -> list[str]:
        return [f"{self.group_names[self.group_of[i]]}/{self.names[i]}" for i in range(self.P)]

    def named(self, table: list[list[float]], init_sq: list[float], layers: str, step: int) -> dict[str, float]:
        """`sample()`'s dict from the host table of per-unit columns (`Monitor.sample`'s order)."""
        sq, rel, rel_last, rel_ema, ang, ang_last, ang_ema, eff, eff_rel, gu, gu_ema = table
        cols = (
            ("sqnorm", sq),
            ("rel_step", rel),
            ("rel_step_last", rel_last),
            ("rel_step_ema", rel_ema),
            ("angle", ang),
            ("angle_last", ang_last),
            ("angle_ema", ang_ema),
            ("eff_lr", eff),
            ("eff_lr_rel", eff_rel),
            ("grad_sq_unit", gu),
            ("grad_sq_unit_ema", gu_ema),
        )
        out: dict[str, float] = {"step": step}
        conv = [i for i in range(self.P) if self.is_conv[i]]
        if conv:
            m = lambda xs: _nanmean([xs[i] for i in conv])  # noqa: E731
            out.update(
                {
                    "conv_sqsum": sum(sq[i] for i in conv),
                    "conv_sqsum_rel": sum(sq[i] for i in conv) / sum(init_sq[i] for i in conv),
                    "rel_step_conv": m(rel),
                    "rel_step_conv_last": m(rel_last),
                    "rel_step_conv_ema": m(rel_ema),
                    "angle_conv": m(ang),
                    "angle_conv_last": m(ang_last),
                    "angle_conv_ema": m(ang_ema),
                    "eff_lr_conv": m(eff),
                    "eff_lr_rel_conv": m(eff_rel),
                }
            )
        if layers != "conv":
            for gi, g in enumerate(self.group_names):
                for key, xs in cols:
                    out[f"{key}/group/{g}"] = xs[self.P + gi]
        if layers != "none":
            for i in range(self.P) if layers == "all" else conv:
                for key, xs in cols:
                    out[f"{key}/{self.group_names[self.group_of[i]]}/{self.names[i]}"] = xs[i]
        return out


class _FlatCopies:
    """Flat copies of all tracked parameters and gradients, and the per-step reads of the hooks.

    Each parameter is padded to whole chunks of CHUNK elements: per step two multi-tensor copies,
    float64 sums per chunk and a small chunk -> parameter sum give every norm: a fixed handful of
    kernels whatever the model (per-tensor work costs a launch-bound GPU step more than the
    arithmetic), no host sync, no contended atomics. Rows of ``trip``: wb; g (pre hook), then wa
    (post hook, over g); s = wa - wb. Padding stays 0. ``d`` holds their float64 copies and ``prod``
    the per-element products summed (pre hook: |wb|^2, |g|^2; post hook: |wa|^2, |s|^2, wb s).
    Every view the hooks use is made once here: per step they run a fixed 13 aten ops (6 + 7), no
    view op, whatever the model.
    """

    def __init__(self, params: list[torch.Tensor]):
        self.params, self.P = params, len(params)
        dev = self.device = params[0].device
        sizes = [p.numel() for p in params]
        nchunks = [max(1, -(-n // CHUNK)) for n in sizes]
        self.chunk_ids = torch.repeat_interleave(torch.arange(self.P), torch.tensor(nchunks)).to(dev)
        offsets = [CHUNK * c for c in itertools.accumulate([0] + nchunks[:-1])]
        self._views = [_flat(p.detach()) for p in params]  # the optimizer updates in place
        # a parameter of a non-dense layout (rare) has no flat view: its views are re-made per step
        self._fresh = any(v.data_ptr() != p.data_ptr() for v, p in zip(self._views, params))
        self._zeros: dict[int, torch.Tensor] = {}
        self._masks: dict[tuple[bool, ...], torch.Tensor] = {}
        with torch.no_grad():
            flat_dtype = torch.promote_types(torch.float32, params[0].dtype)
            n_flat = CHUNK * sum(nchunks)
            self.trip = torch.zeros(3, n_flat, dtype=flat_dtype, device=dev)
            self.slots = [[row[o : o + n] for o, n in zip(offsets, sizes)] for row in self.trip]
            # the gradient slots again, shaped and strided as their parameters: a .grad of its
            # parameter's layout (autograd's rule) copies in with no per-step view op, into the
            # same places as its flat memory-order view would
            self._gshaped = [_shaped(slot, p) for slot, p in zip(self.slots[1], params)]
            self.d = torch.zeros(3, n_flat, dtype=torch.float64, device=dev)
            self.prod = torch.zeros(3, n_flat, dtype=torch.float64, device=dev)
            t, d, pr = self.trip, self.d, self.prod
            self.v = {
                "t01": t[:2],
                "t0": t[0],
                "t1": t[1],
                "t2": t[2],
                "d01": d[:2],
                "d12": d[1:],
                "d0": d[0],
                "d2": d[2],
                "p01": pr[:2],
                "p2": pr[2],
                "p01_chunks": pr[:2].view(2, -1, CHUNK),
                "p_chunks": pr.view(3, -1, CHUNK),
            }

    def segment_sum(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, padded N) float64 flat values -> (rows, P) sums per parameter (the hooks do the
        same into their buffer row, zeroed at each fold, with views made once).

        Sums per chunk, then chunks into parameters: no host sync (segment_reduce checks its
        lengths with one) and few atomic adds per address (index_add_ over all N elements into P
        slots serializes on the GPU)."""
        chunks = x.view(len(x), -1, CHUNK).sum(2)
        return torch.zeros(len(x), self.P, dtype=x.dtype, device=x.device).index_add_(1, self.chunk_ids, chunks)

    def _param_views(self) -> list[torch.Tensor]:
        return [_flat(p.detach()) for p in self.params] if self._fresh else self._views

    def _grads(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(destinations, gradients) for one multi-tensor copy into the gradient row: a grad of
        its parameter's strides into its shaped slot (no view op), others flattened."""
        dst, src = [], []
        for i, p in enumerate(self.params):
            g = p.grad
            shaped = self._gshaped[i]
            if g is not None and shaped is not None and g.stride() == shaped.stride():
                dst.append(shaped)
                src.append(g)
                continue
            # a parameter without grad is skipped by the optimizer (and masked at the post hook): norm 0
            if g is None:
                g = self._zeros.get(i)
                if g is None:
                    g = self._zeros[i] = torch.zeros(p.numel(), dtype=self.trip.dtype, device=self.device)
            dst.append(self.slots[1][i])
            src.append(_flat(g))
        return dst, src

    def read_before(self, out: torch.Tensor) -> None:
        """Pre hook (6 aten ops): copy wb and g; add |wb|^2, |g|^2 per parameter into `out` (2, P)."""
        v = self.v
        torch._foreach_copy_(self.slots[0], self._param_views())
        torch._foreach_copy_(*self._grads())
        v["d01"].copy_(v["t01"])
        torch.mul(v["d01"], v["d01"], out=v["p01"])
        out.index_add_(1, self.chunk_ids, v["p01_chunks"].sum(2))

    def reread_grads(self, out: torch.Tensor) -> None:
        """Copy the gradients again and write |g|^2 per parameter into `out` (P,)."""
        torch._foreach_copy_(*self._grads())
        out.copy_(self.segment_sum(self.trip[1:2].double().square())[0])

    def read_after(self, out: torch.Tensor) -> None:
        """Post hook (6 aten ops): copy wa (over g), s = wa - wb; add |wa|^2, |s|^2 and wb . s per
        parameter into `out` (3, P); wb . s directly (no cancellation, unlike the polarization
        identity)."""
        v = self.v
        torch._foreach_copy_(self.slots[1], self._param_views())
        torch.sub(v["t1"], v["t0"], out=v["t2"])
        self.d.copy_(self.trip)
        torch.mul(v["d12"], v["d12"], out=v["p01"])
        torch.mul(v["d0"], v["d2"], out=v["p2"])
        out.index_add_(1, self.chunk_ids, v["p_chunks"].sum(2))

    def updated(self) -> torch.Tensor:
        """Device mask of the parameters the optimizer updated (grad not None), cached per pattern."""
        key = tuple(p.grad is not None for p in self.params)
        m = self._masks.get(key)
        if m is None:
            m = self._masks[key] = torch.tensor(key, dtype=torch.float64).to(self.device)
        return m


class _Accumulators:
    """Per unit (`_Tracked`), on the device: window sums and counts, last values, the EMA and its
    weight, of the per-step metrics `_M`; the squared norms after the last step and at creation.

    The hooks only record raw norms, in a device buffer of BUFFER steps (``raw`` (BUFFER, 5, P):
    ||wb||^2, ||g||^2 from the pre hook; ||wa||^2, ||s||^2, wb.s from the post hook, and per step
    the mask of the parameters updated); `fold` turns the buffered steps into the accumulators in
    one batch of tensor ops, when the buffer is full and before every read. The hooks thus launch a
    fixed handful of kernels whatever the model, which is what a launch-bound GPU step needs.
    """

    STATE = ("win_sum", "win_cnt", "last", "ema", "ema_w", "sq", "init_sq")

    def __init__(self, sq: torch.Tensor, member: torch.Tensor, decay: float):
        P, U, M = member.shape[1], member.shape[0] + member.shape[1], len(_M)
        f64 = dict(dtype=torch.float64, device=member.device)
        self.member, self.decay = member, decay
        self.win_sum = torch.zeros(U, M, **f64)  # columns: _M
        self.win_cnt = torch.zeros(U, **f64)
        self.last = torch.full((U, M), math.nan, **f64)
        self.ema = torch.zeros(U, M, **f64)
        self.ema_w = torch.zeros(U, **f64)  # 1 - d^n for the bias correction
        self.sq = torch.cat([sq, member @ sq])
        self.init_sq = self.sq.clone()
        self.raw = torch.zeros(BUFFER, 5, P, **f64)
        self.raw_pre = [row[:2] for row in self.raw]  # per buffered step: |wb|^2, |g|^2
        self.raw_post = [row[2:] for row in self.raw]  # |wa|^2, |s|^2, wb.s
        self.masks: list[torch.Tensor] = []  # per buffered step: which params were updated

    @torch.no_grad()
    def fold(self) -> None:
        """Fold the buffered steps into the accumulators, as if each had been added in turn.

        Per step t (norms of params, then of each group as one vector via ``member``):
        ``rel = |s| / |wb|``, ``angle`` and ``gsq_unit = |g|^2 |wb|^2`` as in the module docstring,
        kept where the unit was updated and ``|wb| > 0`` (valid). Window sums add the valid values;
        ``last`` takes the last valid one; the EMA ``e <- d e + (1 - d) v`` over the valid steps in
        order is, with ``a_t`` the number of valid steps after t, ``e = d^n e_0 + sum_t (1 - d)
        d^(a_t) v_t``, and its weight ``w <- d w + (1 - d)`` likewise.
        """
        k = len(self.masks)
        if k == 0:
            return
        raw = self.raw[:k]  # (k, 5, P): |wb|^2 |g|^2 |wa|^2 |s|^2 wb.s
        upd = torch.stack(self.masks)  # (k, P)
        bb, gg, _, ss, bs = (raw[:, i] * upd for i in range(5))
        mt = self.member.T

        def units(x):  # (k, P) -> (k, U): every parameter, then every group's sum
            return torch.cat([x, x @ mt], 1)

        bb, ss, gg, bs = units(bb), units(ss), units(gg), units(bs)
        upd_u = torch.cat([upd, (upd @ mt).clamp_max(1.0)], 1)
        valid = upd_u * (bb > 0)
        bbs = torch.where(bb > 0, bb, torch.ones_like(bb))
        rel = (ss / bbs).sqrt()
        angle = torch.atan2((bb * ss - bs * bs).clamp_min(0).sqrt(), bb + bs)
        v = torch.stack([rel, angle, gg * bb], 2) * valid[:, :, None]  # (k, U, M)
        d = self.decay
        self.win_sum += v.sum(0)
        self.win_cnt += valid.sum(0)
        t = torch.arange(1, k + 1, dtype=torch.float64, device=raw.device)[:, None]
        j = (valid * t).amax(0).long() - 1  # last valid step per unit, -1 if none
        picked = v.gather(0, j.clamp_min(0)[None, :, None].expand(1, -1, v.shape[2]))[0]
        self.last = torch.where((j >= 0)[:, None], picked, self.last)
        after = valid.flip(0).cumsum(0).flip(0) - valid  # valid steps after t
        w = valid * (1 - d) * torch.pow(d, after)
        dn = torch.pow(d, valid.sum(0))
        self.ema = self.ema * dn[:, None] + (w[:, :, None] * v).sum(0)
        self.ema_w = self.ema_w * dn + w.sum(0)
        sq = raw[-1, 2]
        self.sq = torch.cat([sq, self.member @ sq])
        raw.zero_()  # the hooks add into zeroed rows
        self.masks = []

    def window(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(window mean, bias-corrected EMA), (U, M) each, NaN where a unit had no valid step."""
        cnt = self.win_cnt[:, None]
        mean = torch.where(cnt > 0, self.win_sum / cnt.clamp_min(1), torch.full_like(self.win_sum, math.nan))
        ema = torch.where(
            self.ema_w[:, None] > 0,
            self.ema / self.ema_w[:, None].clamp_min(1e-300),
            torch.full_like(self.ema, math.nan),
        )
        return mean, ema


class Monitor:
    """Norms, relative steps, rotation angles and effective learning rates, via optimizer hooks.

    ``Monitor(model, optimizer, sample_every=1, halflife=None, layers="auto")``

    - ``sample_every``: steps per sample point; ``ready`` is True after every such step.
    - ``halflife``: EMA half-life in steps (default ``sample_every``).
    - ``layers``: which per-parameter keys ``sample()`` returns. ``"auto"``: conv kernels,
      plus per-group aggregates; ``"conv"``: conv kernels, no group keys; ``"all"``: every
      parameter plus group aggregates; ``"none"``: group aggregates only. The conv
      aggregates (``conv_sqsum``, ``rel_step_conv``, ...) are always there.
    - ``eff_lr_power``: ``eff_lr = lr / ||w||^power``; default 1 for Adam-type optimizers,
      2 otherwise.

    Tracks every parameter in ``optimizer.param_groups``; names come from the group's
    ``"param_names"`` or else ``model.named_parameters()``; the group's name from its
    ``"name"`` key or else ``f"group{i}"``. Conv kernels are the ``weight`` of the
    ``nn.modules.conv._ConvNd`` modules of ``model`` (by identity). All parameters must be
    on one device. Everything accumulates on that device; ``sample()`` is the only host sync.

    Usage::

        mon = Monitor(model, opt, sample_every=steps_per_epoch // 4)
        for x, y in loader:
            ...; opt.step()
            if mon.ready:
                log(mon.sample())
        mon.remove()           # or: with Monitor(...) as mon: ...

    The pieces: `_Tracked` (what is tracked, how samples are named), `_FlatCopies` (the flat
    copies the hooks read the norms from), `_Accumulators` (the device buffer of raw norms and
    its fold into window means, last values and EMAs).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        sample_every: int = 1,
        halflife: float | None = None,
        layers: str = "auto",
        eff_lr_power: float | None = None,
    ):
        if int(sample_every) != sample_every or sample_every < 1:
            raise ValueError(f"sample_every must be an integer >= 1 (steps), got {sample_every!r}")
        if layers not in LAYERS:
            raise ValueError(f"layers must be one of {LAYERS}, got {layers!r}")
        self.optimizer, self.sample_every, self.layers = optimizer, int(sample_every), layers
        self.halflife = float(halflife if halflife is not None else sample_every)
        if not self.halflife > 0:
            raise ValueError(f"halflife must be > 0 steps, got {halflife!r}")
        self.decay = 0.5 ** (1.0 / self.halflife)
        self.adaptive = isinstance(optimizer, ADAPTIVE)
        self.power = float(eff_lr_power if eff_lr_power is not None else (1.0 if self.adaptive else 2.0))
        self.tracked = tr = _Tracked(model, optimizer)
        self.params, self.P, self.device = tr.params, tr.P, tr.device
        self.names, self.group_of, self.group_names, self.is_conv = tr.names, tr.group_of, tr.group_names, tr.is_conv
        self.flat = _FlatCopies(tr.params)
        with torch.no_grad():
            self.acc = _Accumulators(_sqnorms(tr.params), tr.member, self.decay)
        self._pre_done = False
        self.lrs = [_lr(g["lr"]) for g in optimizer.param_groups]
        self.init_lrs = list(self.lrs)
        self.lr_scale = torch.ones(self.P, dtype=torch.float64, device=self.device)  # `set_lr_scale`
        self._init_sq_host: list[float] | None = None
        self.step = 0
        self.handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    def _pre(self, opt, args, kwargs) -> None:
        with torch.no_grad():
            acc = self.acc
            k = len(acc.masks)
            if self._pre_done:  # the last pre hook had no post hook (its step raised): redo its row
                acc.raw[k].zero_()
            self.flat.read_before(acc.raw_pre[k])
            self._pre_done = True

    def refresh_grads(self) -> None:
        """Re-read the gradients of the step in flight, for a ``step(closure)`` whose closure
        ran backward inside ``step``, after the pre-step hook had read ``.grad`` (stale or None
        then). Call it from a later step pre-hook; the Lightning callback does."""
        with torch.no_grad():
            self.flat.reread_grads(self.acc.raw[len(self.acc.masks), 1])

    def _post(self, opt, args, kwargs) -> None:
        if not self._pre_done:  # attached between a step's pre and post hooks: nothing to pair
            return
        with torch.no_grad():
            acc = self.acc
            self.flat.read_after(acc.raw_post[len(acc.masks)])
            acc.masks.append(self.flat.updated())
            self._pre_done = False
        self.lrs = [_lr(g["lr"]) for g in opt.param_groups]
        self.step += 1
        if len(acc.masks) == BUFFER:
            acc.fold()

    def _fold(self) -> None:
        self.acc.fold()

    def index_of(self, params: list[torch.Tensor]) -> torch.Tensor:
        """Device index of `params` in the monitor's tracking order (for `set_lr_scale`)."""
        pos = {id(p): i for i, p in enumerate(self.params)}
        return torch.tensor([pos[id(p)] for p in params], dtype=torch.long).to(self.device)

    def set_lr_scale(self, index: torch.Tensor, factors: torch.Tensor) -> None:
        """Tell the monitor that the gradients of the parameters at `index` (`index_of`) were
        multiplied by `factors` before this step, as the article's lr scaling does: their
        effective lr is then lr * factor / ||w||^2. Device tensors, no host sync; the value
        of the last step counts, like the lr."""
        with torch.no_grad():
            self.lr_scale.index_copy_(0, index, factors.detach().to(torch.float64).reshape(-1).expand(len(index)))

    @property
    def ready(self) -> bool:
        """True when the last step completed a sample window (every `sample_every` steps)."""
        return self.step > 0 and self.step % self.sample_every == 0

    def _lr_vec(self, lrs: list) -> torch.Tensor:
        per_group = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(self.device).reshape(()) for v in lrs])
        return torch.cat([per_group[self.tracked.group_of], per_group])

    def sample(self) -> dict[str, float]:
        """The metrics of the window since the last sample point, as a flat dict of floats.

        The only host sync of the monitor. Resets the window mean accumulators (the EMA and
        last values carry on). Includes ``"step"``, the number of optimizer steps seen.
        """
        acc, member = self.acc, self.tracked.member
        acc.fold()
        with torch.no_grad():
            mean, ema = acc.window()
            p = self.power
            scale = torch.cat([self.lr_scale, (member @ self.lr_scale) / member.sum(1).clamp_min(1)])
            eff = self._lr_vec(self.lrs) * scale / acc.sq.pow(p / 2)
            eff0 = self._lr_vec(self.init_lrs) / acc.init_sq.pow(p / 2)
            cols = [acc.sq, mean[:, 0], acc.last[:, 0], ema[:, 0], mean[:, 1], acc.last[:, 1], ema[:, 1]]
            table = torch.stack([*cols, eff, eff / eff0, mean[:, 2], ema[:, 2]]).cpu().tolist()
            acc.win_sum.zero_()
            acc.win_cnt.zero_()
        if self._init_sq_host is None:
            self._init_sq_host = acc.init_sq.cpu().tolist()
        return self.tracked.named(table, self._init_sq_host, self.layers, self.step)

    @property
    def keys(self) -> list[str]:
        """Per-parameter key suffixes ``<group>/<param name>`` in tracking order."""
        return self.tracked.keys

    def remove(self) -> None:
        """Detach the hooks; the monitor stops updating (sample() still reads what it has)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def state_dict(self) -> dict:
        """Window and EMA accumulators, the steps buffered since the last fold, last values,
        init norms and lrs, step (CPU tensors). Nothing is folded here, so a resumed run folds
        at the same steps as an uninterrupted one and continues bit for bit."""
        acc = self.acc
        k = len(acc.masks)
        return {
            "version": STATE_VERSION,
            "keys": self.keys,
            "step": self.step,
            "halflife": self.halflife,
            "lrs": [v.cpu() if isinstance(v, torch.Tensor) else v for v in self.lrs],
            "init_lrs": [v.cpu() if isinstance(v, torch.Tensor) else v for v in self.init_lrs],
            **{name: getattr(acc, name).cpu().clone() for name in _Accumulators.STATE},
            "lr_scale": self.lr_scale.cpu().clone(),
            "buffer": acc.raw[:k].cpu().clone(),
            "buffer_masks": torch.stack(acc.masks).cpu() if k else torch.zeros(0, self.P, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()` of a monitor over the same parameters (ValueError otherwise)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"not a bnwd Monitor state of this version ({STATE_VERSION}); got version {state.get('version')!r}"
            )
        if list(state["keys"]) != self.keys:
            raise ValueError(
                f"Monitor state was saved for other parameters ({len(state['keys'])} tracked there, {self.P} here)"
            )
        if float(state["halflife"]) != self.halflife:
            raise ValueError(f"Monitor state has halflife {state['halflife']}, this monitor {self.halflife}")
        acc = self.acc
        owners = {name: acc for name in _Accumulators.STATE} | {"lr_scale": self}
        for name, owner in owners.items():
            v, have = state[name], getattr(owner, name)
            if tuple(v.shape) != tuple(have.shape):
                raise ValueError(f"Monitor state {name!r} has shape {tuple(v.shape)}, expected {tuple(have.shape)}")
            setattr(owner, name, v.to(self.device, torch.float64).clone())
        self.step = int(state["step"])
        buf, masks = state["buffer"], state["buffer_masks"]
        if tuple(buf.shape[1:]) != (5, self.P) or len(buf) >= BUFFER:
            raise ValueError(f"Monitor state 'buffer' has shape {tuple(buf.shape)}, expected (<{BUFFER}, 5, {self.P})")
        acc.raw.zero_()
        acc.raw[: len(buf)] = buf.to(self.device, torch.float64)
        acc.masks = [m.to(self.device, torch.float64) for m in masks]
        self._pre_done = False
        self.lrs = [_lr(v) for v in state["lrs"]]
        self.init_lrs = [_lr(v) for v in state["init_lrs"]]
        self._init_sq_host = None


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of `t` in memory order when its layout is dense (contiguous, channels_last, any
    permutation), so that it follows in-place updates; a copy otherwise. Norms ignore the order."""
    if t.is_contiguous():
        return t.view(-1)
    expect = 1
    for d in sorted(range(t.dim()), key=t.stride):
        if t.size(d) != 1 and t.stride(d) != expect:
            return t.reshape(-1)
        expect *= t.size(d)
    return t.as_strided((t.numel(),), (1,))


def _shaped(slot: torch.Tensor, p: torch.Tensor) -> torch.Tensor | None:
    """`slot` (1-D, p.numel() elements) viewed with `p`'s shape and strides when `p`'s layout is
    dense (then element i of p's memory order is slot[i], as for `_flat(p)`); else None."""
    if p.numel() == 0 or _flat(p.detach()).data_ptr() != p.data_ptr():
        return None
    return slot.as_strided(p.shape, p.stride())


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else math.nan


class MomentumStats:
    """Momentum-buffer and gradient-correlation statistics of one SGD parameter group.

    Why: at stationarity the SGD-momentum recursion b = mu b + g + lam w, w -= lr b with g
    orthogonal to w gives, exactly and whatever the gradients' correlations,
    E||dw||^2 / E||w||^2 = 2 lr lam / (1 + mu) (`theory` derives it): a measured angular update
    equal to sqrt(2 lr lam / (1 + mu)) checks the implementation, not the physics. The
    equilibrium norm does depend on the correlations: E||w||^2 = lr (1 + mu) E||b||^2 / (2 lam),
    so with A = E||b||^2 / E||g||^2 and L = ||g||^2 ||w||^2 it is sqrt(lr A L (1 + mu) / (2 lam)),
    which is `theory.sgd_equilibrium`'s uncorrelated value times sqrt(A (1 - mu^2)) (A = 1 /
    (1 - mu^2) for uncorrelated gradients; smaller when their correlations over the momentum's
    memory are negative on balance).

    Per step (a removable step post-hook; reads only) it accumulates over the sample window
    ||b||^2 and ||g||^2 of the group taken as one vector (g: the `.grad` the optimizer was
    handed) and the cosine between successive gradients. `sample()` returns
    `mbuf_ratio_<group>` = sum ||b||^2 / sum ||g||^2 (A), `grad_cos_lag1_<group>` (mean cosine)
    and `mbuf_norm/<group>/<param>` (||b|| of each parameter at the last step), then starts a
    new window. Optimizers without a `momentum_buffer` (Adam) are skipped: empty samples.
    """

    def __init__(self, opt: torch.optim.Optimizer, group: str = "conv"):
        g = next((g for g in opt.param_groups if g.get("name") == group), None)
        if g is None:
            raise ValueError(f"the optimizer has no parameter group named {group!r}")
        self.opt, self.group, self.params = opt, group, list(g["params"])
        self.names = list(g.get("param_names") or [f"{group}.{i}" for i in range(len(self.params))])
        dev = self.params[0].device
        self.win = torch.zeros(4, dtype=torch.float64, device=dev)  # sum ||b||^2, sum ||g||^2, sum cos, n cos
        self.last = torch.full((len(self.params),), math.nan, dtype=torch.float64, device=dev)
        self.prev: list[torch.Tensor] | None = None  # the last step's gradients
        self.prev_sq = torch.zeros((), dtype=torch.float64, device=dev)
        # which window sums a step adds to: all four, or at the first step (no g_prev) not the cosine's
        self._counts = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float64, device=dev)
        self.handle = opt.register_step_post_hook(self._post)

    @torch.no_grad()
    def _post(self, opt, args, kwargs) -> None:
        # A fixed handful of kernels per step, whatever the number of layers, and no host sync:
        # one foreach norm over gradients, buffers and g - g_prev, and g . g_prev from norms,
        # (||g||^2 + ||g_prev||^2 - ||g - g_prev||^2) / 2.
        grads = [p.grad for p in self.params]
        bufs = [opt.state.get(p, {}).get("momentum_buffer") for p in self.params]
        if any(x is None for x in grads) or any(x is None for x in bufs):
            return
        k, first = len(grads), self.prev is None
        if first:
            self.prev = [x.detach().clone() for x in grads]
        diff = torch._foreach_sub(grads, self.prev)
        norms = torch.stack(torch._foreach_norm([*grads, *bufs, *diff])).double()
        self.last.copy_(norms[k : 2 * k])
        g2, b2, d2 = norms.square().view(3, k).sum(1).unbind()
        cos = (g2 + self.prev_sq - d2) / 2 / (g2 * self.prev_sq).sqrt().clamp_min(1e-300)
        self.win += torch.stack([b2, g2, cos, torch.ones_like(cos)]) * self._counts[int(first)]
        torch._foreach_copy_(self.prev, grads)
        self.prev_sq.copy_(g2)

    def sample(self) -> dict[str, float]:
        b, g, c, n = self.win.tolist()
        self.win.zero_()
        if not g:
            return {}
        out = {f"mbuf_ratio_{self.group}": b / g, f"grad_cos_lag1_{self.group}": c / n if n else math.nan}
        for name, v in zip(self.names, self.last.tolist()):
            out[f"mbuf_norm/{self.group}/{name}"] = v
        return out

    def state_dict(self) -> dict:
        prev = None if self.prev is None else [x.cpu() for x in self.prev]
        return {"win": self.win.cpu(), "last": self.last.cpu(), "prev": prev, "prev_sq": self.prev_sq.cpu()}

    def load_state_dict(self, st: dict) -> None:
        dev = self.win.device
        self.win, self.last = st["win"].to(dev), st["last"].to(dev)
        self.prev, prev = None, st["prev"]
        if prev is not None:
            self.prev = [x.to(dev) for x in prev]
            for x, p in zip(self.prev, self.params):
                if x.shape != p.shape:
                    raise ValueError(
                        f"MomentumStats state has a gradient of shape {tuple(x.shape)} for {tuple(p.shape)}"
                    )
        self.prev_sq = st["prev_sq"].to(dev)

    def remove(self) -> None:
        self.handle.remove()
