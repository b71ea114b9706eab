"""Views of the BN statistics (`bnwd.nn.bnstats`): own, bn098, comp, precise."""

import json

import pytest
import torch
from fakes import crash_then_resume

from bnwd.nn.bnstats import ShadowBNStats, precise_stats
from bnwd.nn.models import resnet
from bnwd.run import trainer as T
from bnwd.run.config import make_config

SMALL = {"epochs": 2.0, "lr_milestones": [1.0, 1.5], "train_subset": 0, "test_subset": 0}


def tiny(seed=0):
    torch.manual_seed(seed)
    return resnet(8, width=4, bn_momentum=0.1)


def bn_layers(m):
    return [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]


def batches(n, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 3, 8, 8, generator=g) * scale + 0.5 for _ in range(n)]


def test_bn_inputs_are_the_convs_before_each_bn():
    """Each BN is paired with the conv whose output channels it normalizes (same channel count)."""
    m = tiny()
    convs, bns = m.bn_inputs(), bn_layers(m)
    assert len(convs) == len(bns) == 10  # depth 8: the stem, then 3 stages of one block (2 convs + projection)
    assert all(c.out_channels == b.num_features for c, b in zip(convs, bns))
    assert convs[0] is m.conv and convs[1] is m.stages[0][0].conv1


def test_precise_statistics_equal_a_direct_computation():
    """precise: each BN's statistics become the plain average over the batches of that BN input's
    batch mean and unbiased batch variance, at the current weights (recorded here by hooks)."""
    m = tiny()
    seen = {i: [] for i in range(len(bn_layers(m)))}
    hs = [
        bn.register_forward_pre_hook(lambda mod, a, i=i: seen[i].append(a[0].detach().clone()))
        for i, bn in enumerate(bn_layers(m))
    ]
    data = batches(5)
    precise_stats(m, data)
    for h in hs:
        h.remove()
    for i, bn in enumerate(bn_layers(m)):
        xs = seen[i]
        assert len(xs) == 5
        mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
        var = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for x in xs]).mean(0)
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
        assert bn.momentum == 0.1  # restored


def test_comp_equals_own_when_norms_stay_constant():
    """comp averages mean/||w_c|| and var/||w_c||^2 at the run's own momentum and multiplies back by
    the current ||w_c||: with fixed filters s_k ||w_c|| = r_k exactly, so comp = own."""
    m = tiny()
    comp = ShadowBNStats(m, 0.1, convs=m.bn_inputs())
    m.train()
    for x in batches(20, scale=3.0):
        m(x)
    with comp.swapped():
        swapped = [(b.running_mean.clone(), b.running_var.clone()) for b in bn_layers(m)]
    for (mean, var), b in zip(swapped, bn_layers(m)):
        torch.testing.assert_close(mean, b.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var, b.running_var, rtol=1e-5, atol=1e-6)


def test_comp_follows_a_filter_rescale_that_own_lags_behind():
    """A BN channel is invariant to its filter's scale; so is the comp view: after all convs are
    scaled by 3 the comp statistics scale by 3 (mean) and 9 (variance) at once, while the own
    running statistics still hold the old scale."""
    m = tiny()
    comp = ShadowBNStats(m, 0.1, convs=m.bn_inputs())
    m.train()
    for x in batches(10):
        m(x)
    with comp.swapped():
        before = [(b.running_mean.clone(), b.running_var.clone()) for b in bn_layers(m)]
    own = [b.running_var.clone() for b in bn_layers(m)]
    with torch.no_grad():
        for c in m.bn_inputs():
            c.weight.mul_(3.0)
    with comp.swapped():
        after = [(b.running_mean.clone(), b.running_var.clone()) for b in bn_layers(m)]
    # the stem's input is the image, so its statistics scale exactly; deeper BNs see normalized inputs
    torch.testing.assert_close(after[0][0], 3 * before[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after[0][1], 9 * before[0][1], rtol=1e-5, atol=1e-6)
    assert torch.equal(own[0], bn_layers(m)[0].running_var)


def run_cfg(**kw):
    return make_config("smoke", {**SMALL, "checkpoint_every": 0.5, "bn_views": "all", **kw})


def rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.timeout(300)
def test_every_variant_writes_every_view(tmp_path, fake_data):
    """With bn_views=all each evaluation of baseline has test_acc/test_loss for own, bn098, comp and
    precise; bn_views=stage1 computes the extra views up to the first lr drop and at the end."""
    T.train(run_cfg(), tmp_path / "a", dataset=fake_data, progress=False)
    ev = [r for r in rows(tmp_path / "a") if "test_acc" in r]
    for v in ("", "_bn098", "_comp", "_precise"):
        assert all(f"test_acc{v}" in r and f"test_loss{v}" in r for r in ev), v
    T.train(run_cfg(bn_views="stage1", eval_every=0.25), tmp_path / "b", dataset=fake_data, progress=False)
    ev = [r for r in rows(tmp_path / "b") if "test_acc" in r]
    with_views = [r["epoch"] for r in ev if "test_acc_precise" in r]
    assert with_views == [e for e in (r["epoch"] for r in ev) if e <= 1.0 + 1e-9 or e == ev[-1]["epoch"]]
    assert len(with_views) < len(ev)


@pytest.mark.timeout(300)
def test_views_do_not_change_training(tmp_path, fake_data):
    """The views only read: training metrics and the own evaluation are identical with views off."""
    T.train(run_cfg(), tmp_path / "on", dataset=fake_data, progress=False)
    T.train(run_cfg(bn_views="off"), tmp_path / "off", dataset=fake_data, progress=False)
    a, b = rows(tmp_path / "on"), rows(tmp_path / "off")
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith(("test_acc_", "test_loss_"))}  # noqa: E731
    assert [strip(r) for r in a] == [strip(r) for r in b]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", ["baseline", "lr_scaled"])
def test_resume_is_exact_with_every_view(tmp_path, fake_data, variant):
    """A crash mid-run then resume gives the same metrics, every view included (the shadows are
    checkpointed; the precise view's batches are a pure function of the step), for the baseline
    and for lr_scaled with its reference and its bn098 statistics."""
    extra = {}
    if variant == "lr_scaled":
        T.train(run_cfg(), tmp_path / "base", dataset=fake_data, progress=False)
        extra = {"variant": "lr_scaled", "reference": str(tmp_path / "base")}
    T.train(run_cfg(**extra), tmp_path / "ref", dataset=fake_data, progress=False)
    assert crash_then_resume(run_cfg(**extra), tmp_path / "crash", 9, dataset=fake_data) == 8
    a, b = rows(tmp_path / "crash"), rows(tmp_path / "ref")
    assert a == b and any("test_acc_precise" in r for r in a)
    if variant == "lr_scaled":  # the reference's factor and the bn098 shadow were in play
        assert all("test_acc_bn098" in r for r in a if "test_acc" in r) and a[-1]["lr_factor"] != 1.0
