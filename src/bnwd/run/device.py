"""Where and how a step runs: the device, bf16 autocast, channels_last, torch.compile.

`pick_device` turns `device=` into a torch device; `Placement` holds what the config decided for
the activations (amp, layout); `Forward` is the model's forward under the compile policy, with
compile=auto's eager fallback; `loss_and_grad` is the forward + backward of a training step,
shared by the trainer and `bnwd bench`.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnwd.errors import BnwdError, ConfigError, one_line
from bnwd.run import config as C


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


@dataclass
class Placement:
    """The device, bf16 autocast on or off, and the activations' memory layout."""

    device: torch.device
    amp: bool = False
    channels_last: bool = False

    @classmethod
    def of(cls, cfg: C.Config) -> Placement:
        device = pick_device(cfg.device)
        amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")  # see config.Config.amp
        return cls(device, amp, cfg.channels_last != "off")  # see config.Config.channels_last

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)


class Forward:
    """The model's forward, compiled when `compile` says so (config.Config.compile).

    Under compile=auto a compile error (it surfaces at the first call of each graph) is not
    fatal: `run` warns once and from then on uses the eager model. bnwd's own errors (a
    ConfigError of a hook, say) are never taken for a compile error."""

    def __init__(self, model: nn.Module, cfg: C.Config, device: torch.device):
        cuda = device.type == "cuda"
        self.model, self.fn, self.fallback, self.cudagraphs = model, model, False, False
        if cfg.compile == "off" or (cfg.compile == "auto" and not cuda):
            return
        mode = cfg.compile_mode if cfg.compile_mode != "auto" else ("reduce-overhead" if cuda else "default")
        self.cudagraphs = mode in ("reduce-overhead", "max-autotune") and cuda
        self.fallback = cfg.compile == "auto"
        # dynamic=False: the train batch and the eval batch each get their own static graph
        self.fn = torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)

    @property
    def compiled(self) -> bool:
        return self.fn is not self.model

    def run(self, work):
        """`work(forward)`, with compile=auto's fallback: if the compiled forward fails inside
        `work` (nothing was updated yet), warn, switch to eager and do `work` once more."""
        if self.fallback:
            try:
                return work(self.fn)
            except BnwdError:
                raise
            except Exception as e:  # a compile error
                warnings.warn(f"torch.compile failed ({one_line(e, 200)}); training eagerly", stacklevel=3)
                self.fn, self.fallback = self.model, False
        return work(self.fn)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(lambda f: f(x))

    def mark_step(self) -> None:
        """CUDA graphs: the last step's graph outputs are dead."""
        if self.compiled and self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()


def loss_and_grad(forward, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, place: Placement):
    """Forward (under autocast), mean cross-entropy in float32, zeroed grads, backward: the
    training step up to `opt.step()`. Returns (loss, logits)."""
    with place.autocast():
        logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return loss, logits
