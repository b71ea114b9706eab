"""The exact weight-decay -> learning-rate transform for scale-invariant weights.

Baseline: SGD with momentum mu in PyTorch's convention

    b_{t+1} = mu b_t + g_t + lam w_t,        w_{t+1} = w_t - lr_t b_{t+1},      b_0 = 0,

with L2 coefficient lam on a group of scale-invariant weights (a bias-free conv followed by
BN: f(c w) = f(w) for c > 0, hence g(c w) = g(w) / c). With a zero loss gradient this
optimizer shrinks any weight by the same scalar sequence

    s_0 = 1,   s_1 = 1 - lr_0 lam,
    s_{t+1} = (1 + r_t mu - lr_t lam) s_t - r_t mu s_{t-1},        r_t = lr_t / lr_{t-1}.

Writing w_t = s_t v_t, the baseline update becomes (use the recursion for s_{t+1})

    v_{t+1} = v_t + (r_t mu s_{t-1} / s_{t+1}) (v_t - v_{t-1}) - lr_t / (s_t s_{t+1}) g(v_t),

which is exactly plain SGD with momentum, NO weight decay and learning rate

    lr~_t = lr_t / (s_t s_{t+1})          (its momentum ratio is r~_t = lr~_t/lr~_{t-1} = r_t s_{t-1}/s_{t+1}).

So the transformed run has w~_t = w_t / s_t at every step: the same direction, hence the
same network function in training mode, for ANY schedule lr_t. It is exact when BN's eps
is negligible, and exact with eps if each BN after a transformed weight uses
eps_t = eps / s_t^2 (its input is 1/s_t times the baseline's). In eval mode the running
statistics must match too: multiplying the running mean by s_t/s_{t+1} and the running
variance by (s_t/s_{t+1})^2 after each step keeps them equal to the baseline's divided by
s_{t+1} (resp. s_{t+1}^2).

Numerically s_t is advanced in the equivalent "velocity" form, which needs no division by
lr_{t-1} (so a zero learning rate is fine):

    beta_0 = 0,   beta_{t+1} = mu beta_t + lam s_t,   s_{t+1} = s_t - lr_t beta_{t+1}

(beta_t is the momentum buffer of the zero-gradient weight; beta_t = (s_{t-1} - s_t)/lr_{t-1}).

API: `weight_decay_as_lr(opt, groups=["conv"], model=model, rescale_bn_eps=True)` attaches the
transform to the user's own torch.optim.SGD through its public step hooks and returns a handle
(`.scale`, `.remove()`); the state lives in the optimizer's param groups, so the optimizer's
own `state_dict()` / `load_state_dict()` checkpoint and resume it.
"""

from __future__ import annotations

import math
import operator
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from bnwd.errors import ConfigError
from bnwd.nn.models import NORM_TYPES

# Group keys (timm style: the transform's state lives in the optimizer's param groups, so
# the optimizer's own state_dict / load_state_dict checkpoint and resume it).
LAM, SCALE, SCALE_PREV, VELOCITY, LR_PREV, STEP = (
    "wd_as_lr",
    "wd_scale",
    "wd_scale_prev",
    "wd_velocity",
    "wd_lr_prev",
    "wd_step",
)


def decay_scales(lrs: Sequence[float], momentum: float, weight_decay: float) -> np.ndarray:
    """The shrink factors s_0..s_T (length T+1, float64) for per-step learning rates lrs[0..T-1].

        s_0 = 1,  s_1 = 1 - lr_0 lam,
        s_{t+1} = (1 + r_t mu - lr_t lam) s_t - r_t mu s_{t-1},   r_t = lr_t / lr_{t-1},

    with mu = `momentum`, lam = `weight_decay`. s_t is what baseline SGD with momentum
    (PyTorch convention b = mu b + g + lam w, w -= lr b, zero initial buffer) makes of a
    weight w_0 = 1 whose loss gradient is zero: for a scale-invariant weight the baseline's
    w_t equals s_t times the weight of a run without weight decay at lr_t / (s_t s_{t+1}).
    Computed in the equivalent division-free form beta_{t+1} = mu beta_t + lam s_t,
    s_{t+1} = s_t - lr_t beta_{t+1} (identical for lr_{t-1} != 0, and defined for lr = 0).
    """
    lrs = np.asarray(lrs, dtype=np.float64).reshape(-1)
    s = np.ones(len(lrs) + 1, dtype=np.float64)
    beta = 0.0
    for t, lr in enumerate(lrs):
        beta = momentum * beta + weight_decay * s[t]
        s[t + 1] = s[t] - lr * beta
    return s


# --------------------------------------------------------------------------- finding the norm after a weight

_PASS_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Unflatten,
)
_PASS_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.leaky_relu,
    F.dropout,
    F.dropout2d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    torch.flatten,
    torch.reshape,
    operator.getitem,
}
_PASS_METHODS = {
    "relu",
    "relu_",
    "view",
    "reshape",
    "flatten",
    "contiguous",
    "permute",
    "transpose",
    "squeeze",
    "unsqueeze",
    "to",
    "clone",
    "float",
    "double",
    "half",
}


def following_norms(model: nn.Module, params: Iterable[torch.Tensor]) -> dict[int, list[nn.Module]]:
    """For each weight in `params` (keyed by id), the normalization layer(s) that consume its output.

    Approach: trace `model` with torch.fx; from each call of the module that owns the weight,
    follow the data flow through ops that commute with a positive scaling of their input
    (ReLU, LeakyReLU, max/avg pooling, dropout, flatten/view/reshape) until a BatchNorm,
    GroupNorm, LayerNorm or InstanceNorm module is reached. Any other consumer on the way
    (an addition, a bias, a nonlinearity like tanh, the model output) means the weight is not
    scale-invariant, and a ConfigError names the consumer.

    Fallback when the model cannot be traced (data-dependent control flow): the first norm
    layer after the owning module in `named_modules()` registration order whose
    `num_features` equals the module's `out_channels`/`out_features`. This is right for
    models that register each conv just before its BN (bnwd.nn.models, simple Sequentials) and
    wrong for models that register modules in another order than they use them.
    """
    owners: dict[int, tuple[str, nn.Module]] = {}
    for mname, m in model.named_modules():
        for _pname, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), (mname, m))
    wanted: dict[str, list[int]] = {}
    for p in params:
        if id(p) not in owners:
            raise ConfigError("a parameter of the wrapped group is not a parameter of `model`")
        wanted.setdefault(owners[id(p)][0], []).append(id(p))
    try:
        import torch.fx

        gm = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable model: registration-order fallback
        return _following_norms_by_order(model, wanted)
    mods = dict(model.named_modules())
    found: dict[str, dict[int, nn.Module]] = {name: {} for name in wanted}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in wanted:
            continue
        stack, seen = list(node.users), set()
        while stack:
            user = stack.pop()
            if user in seen:
                continue
            seen.add(user)
            target = mods.get(user.target) if user.op == "call_module" else None
            if isinstance(target, NORM_TYPES):
                found[node.target][id(target)] = target
            elif (
                isinstance(target, _PASS_MODULES)
                or (user.op == "call_function" and user.target in _PASS_FUNCTIONS)
                or (user.op == "call_method" and user.target in _PASS_METHODS)
            ):
                stack.extend(user.users)
            else:
                what = user.target if user.op != "output" else "the model output"
                raise ConfigError(
                    f"the output of {node.target!r} reaches {what!r} ({user.op}) before any "
                    "normalization layer, so its weight is not scale-invariant and the exact "
                    "transform does not apply to it"
                )
    out: dict[int, list[nn.Module]] = {}
    for name, ids in wanted.items():
        if not found[name]:
            raise ConfigError(
                f"no normalization layer found after {name!r} (it is never called in the traced "
                "forward, or not followed by BatchNorm/GroupNorm/LayerNorm)"
            )
        for i in ids:
            out[i] = list(found[name].values())
    return out


def _following_norms_by_order(model: nn.Module, wanted: dict[str, list[int]]) -> dict[int, list[nn.Module]]:
    mods = list(model.named_modules())
    out: dict[int, list[nn.Module]] = {}
    for i, (name, m) in enumerate(mods):
        if name not in wanted:
            continue
        width = getattr(m, "out_channels", getattr(m, "out_features", None))
        nxt = next(
            (n for _, n in mods[i + 1 :] if isinstance(n, nn.modules.batchnorm._NormBase) and n.num_features == width),
            None,
        )
        if nxt is None:
            raise ConfigError(
                f"no BatchNorm with {width} features registered after {name!r} (model not traceable "
                "by torch.fx, so the BN after each conv was looked up in registration order)"
            )
        for pid in wanted[name]:
            out[pid] = [nxt]
    return out


# --------------------------------------------------------------------------- the transform, on optimizer hooks

_STATE_KEYS = (LAM, SCALE, SCALE_PREV, VELOCITY, LR_PREV, STEP)
# optimizer -> names of its groups that a live transform holds (a second attach is refused)
_LIVE: weakref.WeakKeyDictionary[torch.optim.Optimizer, set[str]] = weakref.WeakKeyDictionary()


class WeightDecayAsLRHandle:
    """The exact transform attached to one torch.optim.SGD by its public step hooks.

    `weight_decay_as_lr` (this class) attaches it and returns the handle:

        opt = torch.optim.SGD(bnwd.param_groups(model, 5e-4), lr=0.1, momentum=0.9)
        handle = bnwd.weight_decay_as_lr(opt, groups=["conv"], model=model, rescale_bn_eps=True)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [100, 150])  # sets lr_t, as usual
        for x, y in loader:
            opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step(); sched.step()
        handle.scale["conv"]   # s_t: the baseline's conv weights are s_t times these
        handle.remove()        # or: with bnwd.weight_decay_as_lr(...) as handle: ...

    `groups`: names (the `"name"` key of the param groups) of the groups to transform; only
    scale-invariant weights (bias-free conv followed by BN) may be: the other groups (BN affine,
    head) keep their ordinary L2. Attaching moves each such group's `weight_decay` lam into the
    group key "wd_as_lr" and sets `weight_decay` to 0. At every `optimizer.step()` the
    transformed group trains at lr~_t = lr_t / (s_t s_{t+1}), lr_t being whatever the user or a
    torch LR scheduler put in `group["lr"]`; afterwards its weights are the baseline's w_{t+1}
    divided by s_{t+1} (module docstring for the maths).

    State: the recursion's state lives in the param groups ("wd_as_lr" = lam, "wd_scale" = s_t,
    "wd_scale_prev" = s_{t-1}, "wd_velocity", "wd_lr_prev" = lr_{t-1}, "wd_step" = t), so the
    optimizer's own `state_dict()` / `load_state_dict()` checkpoint and resume it exactly. An
    optimizer whose groups already hold that state (loaded from such a checkpoint) continues it
    when the transform is attached; loading a state saved without it into an optimizer with the
    transform attached raises ConfigError.

    The lr that hooks see. The transform changes `group["lr"]` only inside `optimizer.step()`:
    its step pre-hook writes lr~_t, its step post-hook writes lr_t back. That post-hook
    re-registers itself at every step, so it runs after every other step post-hook of the
    optimizer, whatever the attach order. Hence:

    - every other step post-hook, `bnwd.Monitor`'s included, reads lr~_t: the lr the optimizer
      applied (the Monitor's `eff_lr` is then lr~_t / ||w~||^2, the baseline's times s_{t+1}/s_t);
    - outside `step()` (schedulers, `state_dict()`, your code) `group["lr"]` is always lr_t;
    - step pre-hooks see lr_t if registered before the transform and lr~_t otherwise (the
      Monitor reads no lr there); global post-hooks (`register_optimizer_step_post_hook`) run
      after the optimizer's own and see lr_t.

    If `step()` raises (e.g. in the closure) the state does not advance and the next `step()`
    or `remove()` puts lr_t back.

    `model` with `rescale_bn_eps=True`: the norm layers right after the transformed weights
    (found by `following_norms`) get eps_t = eps / s_t^2, which keeps the transform exact at any
    eps (base eps read from the model when attaching; re-applied after `load_state_dict`).
    `rescale_bn_stats=True`: after each step their running mean is multiplied by s_t/s_{t+1} and
    running variance by (s_t/s_{t+1})^2, so eval mode matches the baseline too.

    `remove()` detaches every hook and undoes the attach: the groups get `weight_decay` = lam back
    and lose the "wd_*" keys, the norm layers their base eps. The weights stay w~_t = w_t / s_t
    (`scale` still returns the last s_t). Also a context manager that removes on exit.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        groups: Sequence[str] = ("conv",),
        model: nn.Module | None = None,
        rescale_bn_eps: bool = False,
        rescale_bn_stats: bool = False,
    ):
        if not isinstance(optimizer, torch.optim.SGD):
            raise ConfigError(
                f"the weight-decay -> lr transform needs torch.optim.SGD, got {type(optimizer).__name__}: "
                "it is derived for SGD with (heavy-ball) momentum"
            )
        groups = (groups,) if isinstance(groups, str) else tuple(groups)
        names = [g.get("name") for g in optimizer.param_groups]
        unknown = [g for g in groups if g not in names]
        if unknown:
            raise ConfigError(
                f"unknown parameter group(s) {unknown}; the optimizer's groups are {names} "
                "(groups are selected by their 'name' key)"
            )
        taken = sorted(_LIVE.get(optimizer, set()) & set(groups))
        if taken:
            raise ConfigError(f"group(s) {taken} of this optimizer already have the transform attached")
        if (rescale_bn_eps or rescale_bn_stats) and model is None:
            raise ConfigError("rescale_bn_eps / rescale_bn_stats need the model (model=...)")
        self.optimizer, self.group_names = optimizer, groups
        self.rescale_bn_eps, self.rescale_bn_stats = bool(rescale_bn_eps), bool(rescale_bn_stats)
        for g in self._groups():
            _check_group(g)
        # Everything that can refuse runs before the optimizer is touched.
        self.norms: dict[str, list[nn.Module]] = {}
        self.base_eps: dict[int, float] = {}
        if model is not None and (rescale_bn_eps or rescale_bn_stats):
            self._find_norms(model)
        for g in self._groups():
            if LAM not in g:  # a group loaded from a transformed run's state keeps its state
                g[LAM], g["weight_decay"] = float(g["weight_decay"]), 0.0
                g[SCALE], g[SCALE_PREV], g[VELOCITY], g[LR_PREV], g[STEP] = 1.0, 1.0, 0.0, None, 0
        self._inflight: list[tuple] = []  # (group, lr_t, lr~_t, s_t, s_{t+1}, beta_{t+1}) of the step in flight
        self._removed_scale: dict[str, float] | None = None
        self._post_handle: RemovableHandle | None = None
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_load_state_dict_pre_hook(self._pre_load),
            optimizer.register_load_state_dict_post_hook(lambda opt: self._apply_eps()),
        ]
        _LIVE.setdefault(optimizer, set()).update(groups)
        self._apply_eps()

    def _groups(self) -> list[dict[str, Any]]:
        return [g for g in self.optimizer.param_groups if g.get("name") in self.group_names]

    def _find_norms(self, model: nn.Module) -> None:
        owner: dict[int, str] = {}
        for g in self._groups():
            follow = following_norms(model, g["params"])
            for p in g["params"]:
                for m in follow[id(p)]:
                    if owner.setdefault(id(m), g["name"]) != g["name"]:
                        raise ConfigError(
                            "a normalization layer follows weights of two transformed groups "
                            f"({owner[id(m)]!r}, {g['name']!r}) with different scales"
                        )
                    lst = self.norms.setdefault(g["name"], [])
                    if all(m is not x for x in lst):
                        lst.append(m)
                        # RMSNorm's eps=None means the input dtype's machine epsilon; made explicit so it can scale
                        dt = m.weight.dtype if getattr(m, "weight", None) is not None else torch.get_default_dtype()
                        self.base_eps[id(m)] = float(torch.finfo(dt).eps if m.eps is None else m.eps)

    def _apply_eps(self) -> None:
        if self.rescale_bn_eps:
            for g in self._groups():
                for m in self.norms.get(g["name"], []):
                    m.eps = self.base_eps[id(m)] / g[SCALE] ** 2

    @property
    def scale(self) -> dict[str, float]:
        """{group name: s_t}: the current decay scale of each transformed group (baseline w = s_t * ours)."""
        if self._removed_scale is not None:
            return dict(self._removed_scale)
        return {g["name"]: float(g[SCALE]) for g in self._groups()}

    # -- hooks
    def _pre_step(self, opt, args, kwargs) -> None:
        self._restore_lr()
        if self._post_handle is not None:
            self._post_handle.remove()
        self._post_handle = opt.register_step_post_hook(self._post_step)  # last among the post-hooks
        plan = []
        for g in self._groups():
            _check_group(g)
            if LAM not in g:
                raise ConfigError(
                    f"group {g.get('name')!r} has no transform state (added after the transform was "
                    "attached?); remove() the transform and attach it again"
                )
            lr, s = g["lr"], g[SCALE]
            v = g.get("momentum", 0.0) * g[VELOCITY] + g[LAM] * s
            s_next = s - float(lr) * v
            if not (s_next > 0 and math.isfinite(s_next)):
                raise ConfigError(
                    f"decay scale s_t of group {g['name']!r} left (0, inf) ({s_next}): lr * weight_decay "
                    "too large for the transform"
                )
            plan.append((g, lr, float(lr) / (s * s_next), s, s_next, v))
        for g, _lr, lr_tilde, *_ in plan:
            g["lr"] = lr_tilde
        self._inflight = plan

    def _post_step(self, opt, args, kwargs) -> None:
        plan, self._inflight = self._inflight, []
        for g, lr, _lr_tilde, s, s_next, v in plan:
            g["lr"] = lr
            g[SCALE_PREV], g[SCALE], g[VELOCITY], g[LR_PREV], g[STEP] = s, s_next, v, float(lr), g[STEP] + 1
            if self.rescale_bn_stats:
                ratio = s / s_next
                with torch.no_grad():
                    for m in self.norms.get(g["name"], []):
                        if getattr(m, "running_mean", None) is not None:
                            m.running_mean.mul_(ratio)
                        if getattr(m, "running_var", None) is not None:
                            m.running_var.mul_(ratio * ratio)
        self._apply_eps()

    def _restore_lr(self) -> None:
        """Put lr_t back where a step that raised left lr~_t (unless someone has set another lr since)."""
        for g, lr, lr_tilde, *_ in self._inflight:
            if g["lr"] is lr_tilde:
                g["lr"] = lr
        self._inflight = []

    def _pre_load(self, opt, state_dict: dict[str, Any]) -> None:
        for g in state_dict["param_groups"]:
            if g.get("name") in self.group_names and LAM not in g:
                raise ConfigError(
                    f"group {g.get('name')!r} of this optimizer state was saved without the weight-decay -> lr "
                    "transform, so it cannot continue a transformed run"
                )

    # -- lifecycle
    def remove(self) -> None:
        """Detach the hooks and undo the attach (weight_decay back, "wd_*" keys dropped, base eps)."""
        if self._removed_scale is not None:
            return
        self._restore_lr()
        self._removed_scale = self.scale
        for h in [*self._handles, self._post_handle]:
            if h is not None:
                h.remove()
        for g in self._groups():
            if LAM in g:
                g["weight_decay"] = g[LAM]
                for k in _STATE_KEYS:
                    del g[k]
        for ms in self.norms.values():
            for m in ms:
                m.eps = self.base_eps[id(m)]
        _LIVE.get(self.optimizer, set()).difference_update(self.group_names)

    def __enter__(self) -> WeightDecayAsLRHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self._removed_scale is not None else "attached"
        return f"{type(self).__name__}(groups={list(self.group_names)}, scale={self.scale}, {state})"


weight_decay_as_lr = WeightDecayAsLRHandle  # handle = weight_decay_as_lr(opt, groups=["conv"], ...)


def _check_group(g: dict) -> None:
    bad = [
        k
        for k, v in (
            ("nesterov", g.get("nesterov", False)),
            ("dampening", g.get("dampening", 0)),
            ("maximize", g.get("maximize", False)),
        )
        if v
    ]
    if bad:
        raise ConfigError(
            f"the weight-decay -> lr transform supports SGD with plain heavy-ball momentum only; group "
            f"{g.get('name')!r} has {', '.join(bad)} set"
        )
