"""The evaluation views of the BN statistics besides the run's own (`bnwd.nn.bnstats`).

bn098: a shadow of the running statistics at the article's momentum (lr_scaled keeps it at every
evaluation: it is the lr_scaled_bn098 run); comp: a norm-compensated shadow at the run's own
momentum; precise: statistics recomputed at the current weights. `BNViews` decides which views an
evaluation gets and swaps each in; the trainer's `evaluate` measures it. The shadows (`.shadow`,
`.comp`) are checkpointed by the trainer; the precise view needs no state.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn

from bnwd.nn.bnstats import ShadowBNStats, precise_stats
from bnwd.run import config as C
from bnwd.run.data import TrainLoader
from bnwd.run.device import Placement

PRECISE_SEED = 7_919  # offset of the precise view's batch stream from the run's seed


class BNViews:
    def __init__(self, model: nn.Module, cfg: C.Config, res: dict, loader: TrainLoader, place: Placement):
        self.model, self.cfg, self.place = model, cfg, place
        self.on = cfg.bn_views != "off"
        self.keep_bn098 = bool(res["bn098_view"])
        own_m = res["bn_momentum_used"]
        # The precise view's statistics are recomputed on a copy (taken before the shadows' hooks
        # are attached) from a batch stream of its own, so training and resume do not see them.
        self.stats_model = copy.deepcopy(model) if self.on else None
        self.precise_loader = TrainLoader(loader.data, cfg.batch_size, cfg.seed + PRECISE_SEED) if self.on else None
        shadow = self.keep_bn098 or (self.on and own_m != C.bn098_momentum(cfg.bn_momentum))
        self.shadow = ShadowBNStats(model, C.bn098_momentum(cfg.bn_momentum)) if shadow else None
        self.comp = ShadowBNStats(model, own_m, convs=model.bn_inputs()) if self.on else None

    def evaluations(self, evaluate: Callable, step: int, epoch: float, stage1_end: float, last: bool) -> dict:
        """test_{loss,acc}_{bn098,comp,precise} of the views this evaluation gets (bn_views=stage1:
        up to the first lr drop and at the end; all: every evaluation)."""
        row = {}
        views = self.on and (epoch <= stage1_end + 1e-9 or last)
        views = views or self.cfg.bn_views == "all"
        if self.shadow is not None and (views or self.keep_bn098):
            with self.shadow.swapped():
                row["test_loss_bn098"], row["test_acc_bn098"] = evaluate()
        if views:
            with self.comp.swapped():
                row["test_loss_comp"], row["test_acc_comp"] = evaluate()
            row["test_loss_precise"], row["test_acc_precise"] = evaluate(self.precise_model(step))
        return row

    @torch.no_grad()
    def precise_model(self, step: int) -> nn.Module:
        """The model with BN statistics recomputed at the current weights from `precise_batches`
        augmented training batches (`bnstats.precise_stats`), drawn from a stream of their own
        as a pure function of `step`: the same at a resumed step."""
        m = self.stats_model
        m.load_state_dict(self.model.state_dict())

        def batches():
            for i in range(self.cfg.precise_batches):
                yield self.precise_loader.batch(step + i)[0].contiguous(memory_format=self.place.memory_format)

        with self.place.autocast():
            return precise_stats(m, batches())

    def remove(self) -> None:
        for sh in (self.shadow, self.comp):
            if sh is not None:
                sh.remove()
