"""What a run's checkpoint holds, and the checks on loading one.

A checkpoint is one dict: the `state_dict()` of each stateful part (model, optimizer (with the
exact transform's state in its param groups), monitor, the BN shadows, the momentum statistics;
None for a part the run does not have) plus plain entries (step, window, config, lr_factor,
torch_rng). `restore` loads it back only into a run of the same config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnwd.errors import CheckpointError
from bnwd.run import config as C

PLAIN = ("step", "window", "config", "lr_factor", "torch_rng")


def capture(parts: dict[str, Any], **plain) -> dict:
    return {**{k: p.state_dict() if p is not None else None for k, p in parts.items()}, **plain}


def restore(parts: dict[str, Any], st: dict, cfg: C.Config, where: Path) -> None:
    """Load each part's state from `st`; CheckpointError if `st` is no checkpoint of `cfg`'s run."""
    saved = st.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where} holds no config; it is not a bnwd checkpoint")
    try:
        other = C.Config(**saved)
    except TypeError:
        raise CheckpointError(f"{where} was written with an incompatible config") from None
    d = C.diff(other, cfg)
    if d:
        raise CheckpointError(f"{where} belongs to another config ({'; '.join(d[:3])}); use --force to start over")
    try:
        missing = [k for k in PLAIN if k not in st]
        if missing:
            raise KeyError(missing[0])
        for k, p in parts.items():
            if p is not None:
                p.load_state_dict(st[k])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where} does not fit this model/optimizer ({str(e).splitlines()[0][:160]})") from None
