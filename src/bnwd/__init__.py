"""bnwd: batch norm + weight decay = an effective learning rate.

Public API (imported lazily so `import bnwd` stays fast):
  resnet20, resnet                      the article's TF-official CIFAR ResNet v1
  param_groups, step_lr                 named groups conv/bn/head; the article's step schedule
  Monitor                               norms, relative steps, angles, effective lr via optimizer hooks
  weight_decay_as_lr, decay_scales      the exact weight-decay -> learning-rate transform (optimizer hooks;
                                        WeightDecayAsLR: its compatibility shim)
  find_scale_invariant, audit           which parameters are scale-invariant, numerically
  load_cifar10, Config, make_config, train
"""

from importlib import import_module

__version__ = "0.1.0"

_WHERE = {
    "resnet20": "models",
    "resnet": "models",
    "conv_sqsum": "models",
    "param_groups": "optim",
    "step_lr": "optim",
    "article_piecewise": "optim",
    "lr_factor": "optim",
    "Monitor": "monitor",
    "decay_scales": "exact",
    "WeightDecayAsLR": "exact",
    "weight_decay_as_lr": "exact",
    "find_scale_invariant": "invariance",
    "invariance_report": "invariance",
    "audit": "invariance",
    "sgd_equilibrium": "theory",
    "adamw_equilibrium": "theory",
    "load_cifar10": "data",
    "Config": "config",
    "make_config": "config",
    "train": "train",
}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'bnwd' has no attribute {name!r}")
