"""BnwdMonitor, the Lightning callback: it logs exactly what a bare Monitor measures, at the same steps.

Tiny conv(no bias) - BN - ReLU - GAP - Linear nets trained by a real ``lightning.Trainer`` on CPU
and by a plain loop on the same batches, from the same initial weights.
"""

import copy
import importlib
import logging
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("lightning")

from lightning.pytorch import LightningModule, Trainer  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402

from bnwd.integrations.lightning import BnwdMonitor  # noqa: E402
from bnwd.nn.monitor import Monitor  # noqa: E402
from bnwd.nn.optim import param_groups  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.* is deprecated"),  # Lightning 2.6 on torch 2.13
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets on a shared 2-core box: intra-op threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


WD = {"conv": 5e-3, "bn": 0.0, "head": 5e-3}
BATCHES_PER_EPOCH = 4


class Net(nn.Module):
    """conv(3->4, no bias) - BN - ReLU - GAP - Linear(4->3): the conv kernel is scale-invariant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def make_net(seed=0):
    torch.manual_seed(seed)
    return Net()


def make_opt(net):
    """SGD + momentum over bnwd's named groups conv/bn/head, lr decayed every optimizer step."""
    opt = torch.optim.SGD(param_groups(net, WD), lr=0.1, momentum=0.9)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.95**s)


def loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8 * BATCHES_PER_EPOCH, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (8 * BATCHES_PER_EPOCH,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


class Module(LightningModule):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        opt, sched = make_opt(self.net)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class MemLogger(Logger):
    """Records every ``log_metrics`` call as (step, metrics)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    @property
    def name(self):
        return "mem"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))


def bnwd_logs(logger, prefix="bnwd/"):
    """{step: {unprefixed key: value}} of the calls carrying the callback's keys (one call per step)."""
    out = {}
    for step, metrics in logger.calls:
        mine = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
        if mine:
            assert step not in out, f"step {step} logged twice"
            out[step] = mine
    return out


def fit(module, max_steps, callbacks, loggers, accumulate=1, ckpt_path=None, **trainer_kw):
    kw = dict(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=loggers,
        callbacks=callbacks,
        accumulate_grad_batches=accumulate,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    trainer = Trainer(**{**kw, **trainer_kw})
    trainer.fit(module, train_dataloaders=loader(), ckpt_path=ckpt_path)
    return trainer


def plain_run(net, steps, accumulate, sample_every):
    """The reference: a bare Monitor on a hand-written loop over the same batches, in the same order."""
    opt, sched = make_opt(net)
    mon = Monitor(net, opt, sample_every=sample_every)
    net.train()
    batches = (b for _ in range(10**6) for b in loader())
    logged = {}
    for _ in range(steps):
        opt.zero_grad()
        for _ in range(accumulate):
            x, y = next(batches)
            (F.cross_entropy(net(x), y) / accumulate).backward()
        opt.step()
        if mon.ready:
            logged[mon.step] = mon.sample()
        sched.step()
    mon.remove()
    return logged


def assert_same_logs(got, want):
    assert sorted(got) == sorted(want)
    for step in want:
        assert set(got[step]) == set(want[step]), step
        for k, v in want[step].items():
            assert got[step][k] == pytest.approx(v, rel=1e-6, abs=1e-12, nan_ok=True), (step, k)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_logs_equal_bare_monitor(accumulate):
    """Every logger gets exactly the bare Monitor's sample (same keys, same values to float
    tolerance) at the same optimizer steps 4, 8, 12, with an lr schedule and with gradient
    accumulation (micro-batches neither count as steps nor log twice); grad_sq_unit included,
    i.e. the gradients of Lightning's closure-based step are read after the closure ran."""
    net0 = make_net()
    want = plain_run(copy.deepcopy(net0), steps=12, accumulate=accumulate, sample_every=4)
    assert sorted(want) == [4, 8, 12]

    loggers = [MemLogger(), MemLogger()]
    cb = BnwdMonitor(sample_every=4)
    trainer = fit(Module(copy.deepcopy(net0)), 12, [cb], loggers, accumulate=accumulate)
    assert trainer.global_step == 12
    got = bnwd_logs(loggers[0])
    assert got == bnwd_logs(loggers[1])  # all loggers, not only trainer.logger
    assert_same_logs(got, want)
    assert all(got[s]["step"] == s for s in got)
    assert "grad_sq_unit/conv/conv.weight" in got[4] and "eff_lr/conv/conv.weight" in got[4]
    assert cb.last_sample == got[12]
    assert cb.monitor.handles == [] and cb._handle is None  # hooks removed at the end of the fit


def test_resume_continues_monitor_state(tmp_path):
    """A fit resumed from a checkpoint that ModelCheckpoint wrote mid-window (step 8, samples every
    3) logs the same values at steps 9 and 12 as the uninterrupted fit: the Monitor's windows,
    EMAs, initial norms and step count travel in the checkpoint. From a checkpoint without that
    state, a fresh Monitor still samples at multiples of 3 of the global step, with the same norms
    and effective lrs."""
    net0 = make_net()
    full = MemLogger()
    full_module = Module(copy.deepcopy(net0))
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1, save_last=False)
    fit(full_module, 12, [BnwdMonitor(sample_every=3), saver], [full], enable_checkpointing=True)
    want = bnwd_logs(full)
    assert sorted(want) == [3, 6, 9, 12]
    (ckpt,) = tmp_path.glob("*step=8*.ckpt")

    second = MemLogger()
    resumed = Module(make_net(seed=123))  # other weights: the checkpoint must restore them
    fit(resumed, 12, [BnwdMonitor(sample_every=3)], [second], ckpt_path=str(ckpt))
    for a, b in zip(resumed.parameters(), full_module.parameters()):
        torch.testing.assert_close(a, b)  # the resumed fit saw the same batches
    assert_same_logs(bnwd_logs(second), {s: want[s] for s in (9, 12)})

    state = torch.load(ckpt, weights_only=False)
    assert any(k.startswith("BnwdMonitor") for k in state["callbacks"])
    state["callbacks"] = {}
    bare = tmp_path / "no_monitor_state.ckpt.bak"
    torch.save(state, bare)
    third = MemLogger()
    fit(Module(make_net(seed=123)), 12, [BnwdMonitor(sample_every=3)], [third], ckpt_path=str(bare))
    got = bnwd_logs(third)
    assert sorted(got) == [9, 12]
    for s in (9, 12):
        assert got[s]["step"] == s
        for k in ("conv_sqsum", "sqnorm/conv/conv.weight", "eff_lr/conv/conv.weight"):
            assert got[s][k] == pytest.approx(want[s][k], rel=1e-6)


@pytest.mark.parametrize("source", ["first_batch", "example_input_array"])
def test_audit_marks_conv_invariant_not_linear(source, caplog):
    """audit=True: the conv kernel (followed by BN) is scale-invariant and its weight decay an
    effective-lr control; the linear layer's weight is not invariant and its weight decay a real
    regularizer; BN parameters (no weight decay here) have role "none". The input comes from the
    first training batch or from ``example_input_array``; the table is printed when verbose; the
    audit leaves training unchanged."""
    net0 = make_net()
    module = Module(copy.deepcopy(net0))
    if source == "example_input_array":
        module.example_input_array = next(iter(loader()))[0][:4]
    verbose = source == "first_batch"
    with caplog.at_level(logging.INFO):
        fit(module, 2, [cb := BnwdMonitor(sample_every=2, audit=True, verbose=verbose)], [MemLogger()])
    assert ("L2 acts as an effective-lr control on 1" in caplog.text) == verbose
    inv = cb.scale_invariant
    assert inv["net.conv.weight"] is True
    assert inv["net.fc.weight"] is False and inv["net.fc.bias"] is False
    roles = {r["name"]: r["role"] for r in cb.audit_rows}
    assert roles["net.conv.weight"] == "effective-lr control"
    assert roles["net.fc.weight"] == "regularizer"
    assert roles["net.bn.weight"] == "none"
    assert {r["name"]: r["weight_decay"] for r in cb.audit_rows}["net.conv.weight"] == WD["conv"]

    plain = Module(copy.deepcopy(net0))
    fit(plain, 2, [BnwdMonitor(sample_every=2)], [MemLogger()])
    for a, b in zip(module.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def test_import_error_names_the_extra(monkeypatch):
    """Without lightning and pytorch_lightning, importing the integration raises an ImportError
    that says how to install the extra."""
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "bnwd.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install 'bnwd\[lightning\]'"):
        importlib.import_module("bnwd.integrations.lightning")


class StepModule(Module):
    """The same net with a 10x lr drop after 6 optimizer steps (MultiStepLR, interval "step")."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(param_groups(self.net, WD), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [6], 0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_audit_comes_with_the_plan(caplog):
    """audit=True also plans the fit (bnwd.nn.plan): per group of the trainer's optimizer, from its
    LR scheduler (read from a copy) and max_steps: the conv kernel is a clock with theory's delta
    and tau per lr stage, the multiplier is implied_multiplier's; the table is printed."""
    from bnwd.nn.plan import implied_multiplier

    with caplog.at_level(logging.INFO):
        trainer = fit(StepModule(make_net()), 12, [cb := BnwdMonitor(sample_every=4, audit=True)], [MemLogger()])
    assert trainer.global_step == 12 and cb.plan_note is None
    p = cb.plan
    assert "bnwd plan" in caplog.text and "per parameter group" in caplog.text
    assert [s["start"] for s in p.stages] == [0, 6] and p.settings["steps"] == 12
    assert p.settings["steps_per_epoch"] == BATCHES_PER_EPOCH
    g = {x["name"]: x for x in p.groups}
    assert (g["conv"]["n_clock"], g["head"]["n_regularizer"], g["bn"]["n_none"]) == (1, 2, 2)
    lrs = [0.1] * 6 + [0.01] * 6
    assert p.curves["lr"]["conv"] == pytest.approx(lrs)
    assert p.curves["multiplier"]["conv"] == pytest.approx(implied_multiplier(lrs, WD["conv"], "sgd", 0.9))
    st = g["conv"]["stages"][0]
    assert st["delta"] == pytest.approx((2 * 0.1 * WD["conv"] / 1.9) ** 0.5)
    assert st["tau_steps"] == pytest.approx(0.1 / (2 * 0.1 * WD["conv"]))
    roles = {r["name"]: r["role"] for r in p.layers}
    assert roles["net.conv.weight"] == "clock" and roles["net.fc.weight"] == "regularizer"
