"""bnwd: batch norm + weight decay = an effective learning rate.

Public API (imported lazily so `import bnwd` stays fast):
  resnet20, resnet                      the article's TF-official CIFAR ResNet v1
  param_groups, step_lr                 named groups conv/bn/head; the article's step schedule
  Monitor                               norms, relative steps, angles, effective lr via optimizer hooks
  weight_decay_as_lr, decay_scales      the exact weight-decay -> learning-rate transform (optimizer hooks)
  find_scale_invariant, audit           which parameters are scale-invariant, numerically
  load_cifar10, Config, make_config, train
"""

from importlib import import_module

__version__ = "0.1.0"

_WHERE = {
    "resnet20": "nn.models",
    "resnet": "nn.models",
    "conv_sqsum": "nn.models",
    "param_groups": "nn.optim",
    "step_lr": "nn.optim",
    "article_piecewise": "nn.optim",
    "lr_factor": "nn.optim",
    "Monitor": "nn.monitor",
    "decay_scales": "nn.exact",
    "weight_decay_as_lr": "nn.exact",
    "find_scale_invariant": "nn.invariance",
    "invariance_report": "nn.invariance",
    "audit": "nn.invariance",
    "sgd_equilibrium": "nn.theory",
    "adamw_equilibrium": "nn.theory",
    "load_cifar10": "run.data",
    "Config": "run.config",
    "make_config": "run.config",
    "train": "run.trainer",
}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'bnwd' has no attribute {name!r}")
