"""`Monitor`: per-layer norms, relative steps, angles and effective learning rates.

Attaches to any optimizer through removable step hooks and only reads. For a
scale-invariant weight w (conv followed by BN) the gradient is orthogonal to w and
scales as 1/||w||, so one SGD step moves w by ||dw|| / ||w|| = lr ||g(w/||w||)|| / ||w||^2:
the effective learning rate is lr / ||w||^2 (lr / ||w|| with Adam, whose step size
does not scale with the gradient).

Per step, on the device and without a host sync, for every tracked parameter:
  sq     = ||w_after||^2
  rel    = ||w_after - w_before|| / ||w_before||
  angle  = angle(w_before, w_after)  (radians; atan2 of the components of w_after
           perpendicular and parallel to w_before, accurate for tiny angles)
accumulated as a window mean (since the last sample point), the last value, and an
exponential moving average with half-life `halflife` steps (bias-corrected).
`sample()` does the one host sync and returns a flat dict of floats.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class Monitor:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, sample_every: int = 1,
                 halflife: float | None = None, layers: str = "auto"):
        if sample_every < 1:
            raise ValueError("sample_every must be >= 1 step")
        if layers not in ("auto", "conv", "all", "none"):
            raise ValueError("layers must be auto, conv, all or none")
        self.optimizer, self.sample_every, self.layers = optimizer, sample_every, layers
        self.halflife = float(halflife if halflife is not None else sample_every)
        self.decay = 0.5 ** (1.0 / self.halflife)
        convs = {id(m.weight) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)}
        by_id = {id(p): n for n, p in model.named_parameters()}
        self.params, self.names, self.group_names, self.group_index, self.is_conv = [], [], [], [], []
        self.adam = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
        for gi, g in enumerate(optimizer.param_groups):
            gname = g.get("name", f"group{gi}")
            pnames = g.get("param_names") or [by_id.get(id(p), f"{gname}.{j}") for j, p in enumerate(g["params"])]
            for p, n in zip(g["params"], pnames):
                self.params.append(p)
                self.names.append(n)
                self.group_names.append(gname)
                self.group_index.append(gi)
                self.is_conv.append(id(p) in convs)
        p0 = self.params[0]
        self.device = p0.device
        self.sizes = [p.numel() for p in self.params]
        self.P = len(self.params)
        self.seg = torch.repeat_interleave(torch.arange(self.P, device=self.device),
                                           torch.tensor(self.sizes, device=self.device))
        self.conv_mask = torch.tensor(self.is_conv, device=self.device)
        self._before = torch.empty(sum(self.sizes), dtype=torch.float64, device=self.device)
        z = lambda: torch.zeros(self.P, dtype=torch.float64, device=self.device)  # noqa: E731
        self.win = {k: z() for k in ("rel", "angle")}
        self.last = {k: z() for k in ("rel", "angle", "sq")}
        self.ema = {k: z() for k in ("rel", "angle")}
        self.n_win = 0
        self.step = 0
        self.lrs = [g["lr"] for g in optimizer.param_groups]
        with torch.no_grad():
            self.last["sq"] = self._segsum(self._flat() ** 2)
        self.init_sq = self.last["sq"].clone()
        self.init_lrs = list(self.lrs)
        self.handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    # ---------------------------------------------------------------- hooks
    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params]).double()

    def _segsum(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.P, dtype=x.dtype, device=x.device).index_add_(0, self.seg, x)

    @torch.no_grad()
    def _pre(self, opt, args, kwargs) -> None:
        self._before.copy_(self._flat())

    @torch.no_grad()
    def _post(self, opt, args, kwargs) -> None:
        wb, wa = self._before, self._flat()
        s = wa - wb
        sq_b, sq_a = self._segsum(wb * wb), self._segsum(wa * wa)
        ss, bs = self._segsum(s * s), self._segsum(wb * s)
        nb = sq_b.sqrt().clamp_min(1e-300)
        par = nb + bs / nb                                   # component of w_after along w_before
        perp = (ss - (bs / nb) ** 2).clamp_min(0).sqrt()     # ... and perpendicular to it
        rel, angle = ss.sqrt() / nb, torch.atan2(perp, par)
        self.step += 1
        self.n_win += 1
        d = self.decay
        for k, v in (("rel", rel), ("angle", angle)):
            self.win[k] += v
            self.last[k] = v
            self.ema[k].mul_(d).add_(v, alpha=1 - d)
        self.last["sq"] = sq_a
        self.lrs = [g["lr"] for g in opt.param_groups]      # the lr actually applied in this step

    # ---------------------------------------------------------------- reading
    @property
    def ready(self) -> bool:
        """True when the last step completed a sample window (every `sample_every` steps)."""
        return self.step > 0 and self.step % self.sample_every == 0

    def sample(self) -> dict[str, float]:
        """Metrics for the window since the last sample point; the one host sync. Resets the window."""
        n = max(self.n_win, 1)
        corr = 1.0 - self.decay ** self.step if self.step else 1.0
        lr = torch.tensor([self.lrs[i] for i in self.group_index], dtype=torch.float64, device=self.device)
        lr0 = torch.tensor([self.init_lrs[i] for i in self.group_index], dtype=torch.float64, device=self.device)
        sq = self.last["sq"]
        pw = 0.5 if self.adam else 1.0
        eff = lr / sq.clamp_min(1e-300) ** pw
        eff_rel = eff / (lr0 / self.init_sq.clamp_min(1e-300) ** pw)
        table = torch.stack([sq, self.win["rel"] / n, self.ema["rel"] / corr, self.last["rel"],
                             self.win["angle"] / n, self.ema["angle"] / corr, eff, eff_rel]).cpu().tolist()
        sq, rel, rel_ema, rel_last, ang, ang_ema, eff, eff_rel = table
        for k in self.win:
            self.win[k].zero_()
        self.n_win = 0
        out: dict[str, float] = {"step": self.step}
        conv = [i for i in range(self.P) if self.is_conv[i]]
        mean = lambda xs, idx: sum(xs[i] for i in idx) / len(idx) if idx else float("nan")  # noqa: E731
        if conv:
            out.update({"conv_sqsum": sum(sq[i] for i in conv), "rel_step_conv": mean(rel, conv),
                        "rel_step_conv_ema": mean(rel_ema, conv), "rel_step_conv_last": mean(rel_last, conv),
                        "angle_conv": mean(ang, conv), "angle_conv_ema": mean(ang_ema, conv),
                        "eff_lr_conv": mean(eff, conv), "eff_lr_rel_conv": mean(eff_rel, conv)})
        for g in dict.fromkeys(self.group_names):
            idx = [i for i in range(self.P) if self.group_names[i] == g]
            out[f"sqnorm/group/{g}"] = sum(sq[i] for i in idx)
            out[f"rel_step/group/{g}"] = mean(rel, idx)
            out[f"angle/group/{g}"] = mean(ang, idx)
        if self.layers != "none":
            keep = range(self.P) if self.layers == "all" else conv
            for i in keep:
                key = f"{self.group_names[i]}/{self.names[i]}"
                out[f"sqnorm/{key}"] = sq[i]
                out[f"rel_step/{key}"] = rel[i]
                out[f"rel_step_ema/{key}"] = rel_ema[i]
                out[f"angle/{key}"] = ang[i]
                out[f"eff_lr/{key}"] = eff[i]
                out[f"eff_lr_rel/{key}"] = eff_rel[i]
        return out

    # ---------------------------------------------------------------- lifecycle
    def remove(self) -> None:
        """Detach the hooks; the monitor stops updating."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def state_dict(self) -> dict:
        return {"step": self.step, "n_win": self.n_win, "lrs": list(self.lrs), "init_lrs": list(self.init_lrs),
                "init_sq": self.init_sq.cpu(), **{f"win_{k}": v.cpu() for k, v in self.win.items()},
                **{f"last_{k}": v.cpu() for k, v in self.last.items()}, **{f"ema_{k}": v.cpu() for k, v in self.ema.items()}}

    def load_state_dict(self, st: dict) -> None:
        self.step, self.n_win = int(st["step"]), int(st["n_win"])
        self.lrs, self.init_lrs = list(st["lrs"]), list(st["init_lrs"])
        self.init_sq = st["init_sq"].to(self.device)
        for d, prefix in ((self.win, "win_"), (self.last, "last_"), (self.ema, "ema_")):
            for k in d:
                d[k] = st[prefix + k].to(self.device, torch.float64).clone()
