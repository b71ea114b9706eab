"""Typed run configuration: presets, variants and validated `key=value` overrides."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bnwd.errors import ConfigError

VARIANTS = ("baseline", "no_conv_l2", "lr_scaled", "lr_scaled_bn098", "lr_exact")
ARTICLE_VARIANTS = VARIANTS[:4]
PRESETS = ("blog", "cpu", "smoke")


@dataclass
class Config:
    variant: str = "baseline"  # baseline | no_conv_l2 | lr_scaled | lr_scaled_bn098 | lr_exact
    preset: str = "blog"  # blog | cpu | smoke (the defaults this config started from)
    seed: int = 0
    # data
    train_subset: int = 0  # training images, class-balanced (0 = all 50,000)
    test_subset: int = 0  # test images (0 = all 10,000)
    # model: TF-official CIFAR ResNet v1
    depth: int = 20  # 6n+2 layers
    width: int = 16  # filters in stage 1 (then 2x, 4x)
    bn_momentum: float = 0.003  # PyTorch convention, = 1 - TF decay (0.997)
    bn_eps: float = 1e-5
    # optimization
    optimizer: str = "sgd"  # sgd | adam | adamw
    epochs: float = 150.0  # passes over the training set
    batch_size: int = 128  # images per step
    lr: float = 0.1  # initial learning rate (per step)
    lr_milestones: list = field(default_factory=lambda: [50.0, 100.0])  # epochs where lr *= lr_gamma
    lr_gamma: float = 0.1
    momentum: float = 0.9  # SGD momentum; Adam beta1
    adam_beta2: float = 0.999
    # L2 (loss + wd * sum(w^2) / 2) is two different things here (docs/theory.md):
    conv_weight_decay: float = 2e-4  # on the scale-invariant conv kernels, baseline only: a clock, not a regularizer
    weight_decay: float = 2e-4  # on BN gamma/beta and the dense layer, every variant: a real regularizer
    conv_init_scale: float = (
        1.0  # multiplies the conv init (sets only the initial effective lr of a scale-invariant weight)
    )
    bn098_view: bool = (
        True  # lr_scaled: also keep BN statistics at the 0.98-equivalent momentum (the bn098 run for free)
    )
    # Views of the BN statistics at test evaluations (`bnstats`): bn098, comp and precise beside
    # the run's own. all = at every evaluation; stage1 = at the evaluations up to the first lr drop
    # and the last one (the BN-lag claims read stage 1); off = none (lr_scaled keeps bn098_view)
    bn_views: str = "stage1"
    precise_batches: int = 32  # training batches averaged for the precise view's statistics
    # the lr_scaled variants
    lr_scaling: str = "article"  # article | reference | exact
    reference: str = ""  # finished baseline run dir, for lr_scaling=reference
    reference_mode: str = "global"  # global | layer: S_ref summed over convs or per conv layer
    # s: 0 = the reference must be finished; > 0 = it may still be training (`reproduce` runs
    # lr_scaled beside its baseline): lr_scaled waits for each metrics row it needs, and gives up
    # when the reference writes nothing for this long or is marked failed
    reference_wait: float = 0.0
    # bookkeeping
    sample_every: float = 0.25  # epochs between metric sample points (the article: quarter epoch)
    eval_every: float = 1.0  # epochs between test-set evaluations
    checkpoint_every: float = 1.0  # epochs between checkpoints
    log_layers: bool = True  # per-layer metrics in metrics.jsonl
    tensorboard: bool = False  # also write TensorBoard events (needs the `tensorboard` extra)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto = bf16 + channels_last on CUDA: alone on an H200, ResNet-20 (width 16, batch 128) steps
    # faster in fp32 NCHW (12,765 vs 11,039 img/s, launch-bound), but the article's four runs
    # sharing the GPU each ran 1.45x faster in bf16 + channels_last (docs/gpu/shared_bf16.json vs
    # shared_fp32.json), and runs share the GPU in `reproduce --jobs` and sweeps
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | off
    # auto = on everywhere: on a 2-core AMD EPYC 1.24x per step at width 16 (docs/cpu_ceiling.txt);
    # the CUDA default above.
    # `models.PointwiseConv` keeps oneDNN's hanging strided-1x1 kernel out of reach
    channels_last: str = "auto"  # auto (= on) | on | off
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    # auto = compiled with CUDA graphs on CUDA (the step is launch-bound there: 2.55x eager on an
    # H200, docs/gpu/bench.json), eager on CPU (compiled
    # channels_last trains at 1.00x eager, docs/cpu_compile.json; a crash in the compiled kernels
    # was seen at width 4)
    compile: str = "auto"  # auto (on CUDA) | on | off
    compile_mode: str = (
        "auto"  # auto (reduce-overhead on CUDA, default on CPU) | default | reduce-overhead | max-autotune
    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune")
BN_VIEWS = ("all", "stage1", "off")

# One line per Config key for `bnwd config`: a new key needs its line here
# (tests/test_cli.py::test_every_config_key_has_help checks that every key has one).
HELP: dict[str, str] = {
    "variant": "which run: baseline | no_conv_l2 | lr_scaled | lr_scaled_bn098 | lr_exact",
    "preset": "the preset this config started from: blog | cpu | smoke",
    "seed": "seed of the init and of the batch order",
    "train_subset": "training images, class-balanced (0 = all 50,000)",
    "test_subset": "test images (0 = all 10,000)",
    "depth": "ResNet depth, 6n+2 (20 = ResNet-20)",
    "width": "filters in stage 1 (then 2x, 4x); 16 is the article's",
    "bn_momentum": "BN moving-average momentum, PyTorch convention (1 - TF decay: 0.003 = decay 0.997)",
    "bn_eps": "BN epsilon",
    "optimizer": "sgd | adam | adamw",
    "epochs": "passes over the training set",
    "batch_size": "images per step",
    "lr": "initial learning rate",
    "lr_milestones": "increasing epochs where lr is multiplied by lr_gamma, e.g. 50,100",
    "lr_gamma": "lr factor at each milestone",
    "momentum": "SGD momentum (Adam: beta1)",
    "adam_beta2": "Adam beta2",
    "conv_weight_decay": "L2 on the scale-invariant conv kernels (baseline only): sets their effective lr",
    "weight_decay": "L2 on BN gamma/beta and the dense layer (every variant): a real regularizer",
    "conv_init_scale": "multiplies the conv init: sets only the initial effective lr of the conv kernels",
    "bn098_view": "lr_scaled also keeps BN statistics at the 0.98-equivalent momentum (the bn098 run for free)",
    "bn_views": "test evaluations with other BN statistics (bn098, comp, precise): all | stage1 (up to the "
    "first lr drop, and the last) | off",
    "precise_batches": "training batches averaged for the precise view's recomputed BN statistics",
    "lr_scaling": "lr_scaled's S_ref: article (the article's fit) | reference (a baseline run) | exact",
    "reference": "finished baseline run directory, for lr_scaling=reference",
    "reference_mode": "global | layer: the reference norm summed over conv layers or per layer",
    "reference_wait": "seconds lr_scaled waits for a reference still training (0 = it must be finished)",
    "sample_every": "epochs between metric sample points (the article: a quarter epoch)",
    "eval_every": "epochs between test-set evaluations",
    "checkpoint_every": "epochs between checkpoints",
    "log_layers": "per-layer metrics in metrics.jsonl",
    "tensorboard": "also write TensorBoard events (needs the tensorboard extra)",
    "device": "auto | cpu | cuda | cuda:N",
    "amp": "auto (bf16 on CUDA, off on CPU) | bf16 | off",
    "channels_last": "auto (= on) | on | off: memory layout of activations",
    "threads": "CPU threads for torch (0 = torch's default)",
    "compile": "torch.compile the training step: auto (on CUDA) | on | off",
    "compile_mode": "auto (reduce-overhead on CUDA, default on CPU) | default | reduce-overhead | max-autotune",
}

# Keys that do not change the result: a run may be resumed with different values.
RUNTIME_KEYS = ("device", "threads", "tensorboard", "compile", "compile_mode", "reference_wait")

# The article's dimensionless numbers (docs/theory.md, "Shrinking the experiment"): with N steps per
# lr stage, the conv norms relax over N * 2 lr lam / (1 - mu) e-folding times per stage and the
# BN moving average spans (1 / bn_momentum) * 2 lr lam / (1 - mu) of them. Both stay the same
# when lam and bn_momentum are multiplied by N_article / N.
ARTICLE_STAGE_STEPS = 19_500  # 50 epochs x 390 steps of batch 128
ARTICLE = {"conv_weight_decay": 2e-4, "bn_momentum": 0.003, "lr": 0.1, "momentum": 0.9}


def same_clock(stage_steps: int) -> dict[str, float]:
    """conv L2 and BN momentum that keep the article's relaxation times and BN window in
    relaxation units with `stage_steps` steps per lr stage (same lr and momentum)."""
    k = ARTICLE_STAGE_STEPS / stage_steps
    return {"conv_weight_decay": ARTICLE["conv_weight_decay"] * k, "bn_momentum": ARTICLE["bn_momentum"] * k}


PRESET_VALUES: dict[str, dict[str, Any]] = {
    # The article: 150 epochs, 0.1/0.01/0.001 at epochs 50/100, batch 128, full data, L2 2e-4.
    "blog": {},
    # The article's physics in 39 min per seed (three training runs) on 2 CPU cores: ResNet-20 at half width (8/16/32
    # filters), all 50,000 training and 10,000 test images, three lr stages of 897 steps (2.3
    # epochs) instead of 19,500, so conv L2 and BN momentum are both 21.7x the article's
    # (`same_clock`): relaxation times 7.8 / 0.78 / 0.078 per stage and a BN window of 0.13
    # (0.02 at the bn098 momentum) relaxation times, as in the article. BN/dense L2 stays 2e-4.
    # The faster clock pulls the equilibrium norm down by sqrt(21.7); a conv init scaled by 0.36
    # puts the initial sum of squares back below the stage-1 equilibrium, on the article's side
    # (its baseline's sum of squares grows ~2.5x in stage 1; measured, see the report's table).
    "cpu": {
        "width": 8,
        "epochs": 6.9,
        "lr_milestones": [2.3, 4.6],
        **same_clock(897),
        "conv_init_scale": 0.36,
        "lr_scaling": "reference",
        "eval_every": 0.25,
        "checkpoint_every": 0.5,
    },
    # Seconds: tests and CI.
    "smoke": {
        "depth": 8,
        "width": 4,
        "train_subset": 512,
        "test_subset": 256,
        "batch_size": 64,
        "epochs": 2.0,
        "lr_milestones": [1.0, 1.5],
        "conv_weight_decay": 5e-3,
        "weight_decay": 5e-3,
        "bn_momentum": 0.05,
        "eval_every": 0.5,
        "lr_scaling": "reference",
    },
}


def _coerce(name: str, typ: Any, value: Any) -> Any:
    t = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if t == "bool":
            if isinstance(value, bool):
                return value
            s = str(value).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if t == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if t == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if t == "str":
            return str(value)
        if t == "list":
            if isinstance(value, str):
                value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
            return [float(v) for v in value]
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"bad value for {name}: {value!r} is not a valid {t}")


def _types() -> dict[str, Any]:
    return {f.name: f.type for f in fields(Config)}


def make_config(preset: str = "blog", overrides: dict[str, Any] | None = None, **kw: Any) -> Config:
    """Preset values, then `overrides` (strings from `key=value` are parsed), then validation."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values: dict[str, Any] = {"preset": preset, **PRESET_VALUES[preset], **kw, **(overrides or {})}
    types = _types()
    for k in values:
        if k not in types:
            raise ConfigError(f"unknown config key {k!r}; known keys: {', '.join(types)}")
    cfg = Config(**{k: _coerce(k, types[k], v) for k, v in values.items()})
    validate(cfg)
    return cfg


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if k not in _types():
            raise ConfigError(f"unknown config key {k!r}; known keys: {', '.join(_types())}")
        out[k] = v
    return out


def validate(cfg: Config) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(cfg.variant in VARIANTS, f"unknown variant {cfg.variant!r}; choose one of {', '.join(VARIANTS)}")
    need(cfg.preset in PRESETS, f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    need(cfg.optimizer in ("sgd", "adam", "adamw"), f"unknown optimizer {cfg.optimizer!r}; choose sgd, adam or adamw")
    need(
        cfg.lr_scaling in ("article", "reference", "exact"),
        f"unknown lr_scaling {cfg.lr_scaling!r}; choose article, reference or exact",
    )
    need(
        cfg.reference_mode in ("global", "layer"), f"reference_mode must be global or layer, got {cfg.reference_mode!r}"
    )
    need(cfg.reference_wait >= 0, f"reference_wait is seconds >= 0, got {cfg.reference_wait}")
    need(cfg.bn_views in BN_VIEWS, f"bn_views must be one of {', '.join(BN_VIEWS)}, got {cfg.bn_views!r}")
    need(cfg.precise_batches >= 1, f"precise_batches must be >= 1, got {cfg.precise_batches}")
    need(cfg.amp in ("auto", "bf16", "off"), f"amp must be auto, bf16 or off, got {cfg.amp!r}")
    need(
        cfg.channels_last in ("auto", "on", "off"), f"channels_last must be auto, on or off, got {cfg.channels_last!r}"
    )
    need(cfg.compile in ("auto", "on", "off"), f"compile must be auto, on or off, got {cfg.compile!r}")
    need(
        cfg.compile_mode in COMPILE_MODES,
        f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {cfg.compile_mode!r}",
    )
    need(
        cfg.depth >= 8 and (cfg.depth - 2) % 6 == 0,
        f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {cfg.depth}",
    )
    need(cfg.width >= 1, f"width must be >= 1, got {cfg.width}")
    need(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    need(cfg.epochs > 0, f"epochs must be > 0, got {cfg.epochs}")
    need(cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    need(0 < cfg.lr_gamma <= 1, f"lr_gamma must be in (0, 1], got {cfg.lr_gamma}")
    need(all(m >= 0 for m in cfg.lr_milestones), f"lr_milestones must be >= 0 epochs, got {cfg.lr_milestones}")
    need(
        all(a < b for a, b in zip(cfg.lr_milestones, cfg.lr_milestones[1:])),
        f"lr_milestones must be increasing epochs, e.g. 1.0,1.5, got {cfg.lr_milestones}",
    )
    need(0 <= cfg.momentum < 1, f"momentum must be in [0, 1), got {cfg.momentum}")
    need(0 <= cfg.adam_beta2 < 1, f"adam_beta2 must be in [0, 1), got {cfg.adam_beta2}")
    need(cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}")
    need(cfg.conv_weight_decay >= 0, f"conv_weight_decay must be >= 0, got {cfg.conv_weight_decay}")
    need(cfg.conv_init_scale > 0, f"conv_init_scale must be > 0, got {cfg.conv_init_scale}")
    need(0 < cfg.bn_momentum <= 1, f"bn_momentum must be in (0, 1], got {cfg.bn_momentum}")
    need(cfg.bn_eps >= 0, f"bn_eps must be >= 0, got {cfg.bn_eps}")
    need(cfg.train_subset >= 0 and cfg.test_subset >= 0, "train_subset and test_subset must be >= 0")
    for k in ("sample_every", "eval_every", "checkpoint_every"):
        need(getattr(cfg, k) > 0, f"{k} must be > 0 epochs, got {getattr(cfg, k)}")
    need(cfg.threads >= 0, f"threads must be >= 0, got {cfg.threads}")
    if cfg.variant in ("lr_scaled", "lr_scaled_bn098") and cfg.lr_scaling == "reference":
        need(bool(cfg.reference), "lr_scaling=reference needs reference=RUN_DIR (a finished baseline run)")
    scaled = cfg.variant.startswith("lr_scaled")
    if scaled and cfg.lr_scaling == "article":
        need(
            len(cfg.lr_milestones) == 2 and 0 < cfg.lr_milestones[0] < cfg.lr_milestones[1] < cfg.epochs,
            "lr_scaling=article maps the run's three lr stages onto the article's 50/50/50 epochs: it needs "
            f"two lr_milestones inside (0, epochs), got {cfg.lr_milestones}; use lr_scaling=reference or exact",
        )
    if scaled and cfg.optimizer != "sgd" and cfg.lr_scaling == "reference" and cfg.reference_mode == "layer":
        raise ConfigError(
            "with Adam-type optimizers the lr factor scales the conv group's learning rate, one factor for the group; "
            "use reference_mode=global"
        )
    if cfg.optimizer != "sgd" and (
        cfg.variant == "lr_exact" or (cfg.variant.startswith("lr_scaled") and cfg.lr_scaling == "exact")
    ):
        raise ConfigError(
            "the exact weight-decay -> lr transform is derived for SGD with momentum; use optimizer=sgd or lr_scaling=reference"
        )


def bn098_momentum(bn_momentum: float) -> float:
    """The article's fix, TF BN decay 0.997 -> 0.98: a moving-average window 0.02/0.003 times shorter."""
    return min(1.0, bn_momentum * 0.02 / 0.003)


def resolved(cfg: Config) -> dict[str, Any]:
    """What the variant does to the settings, for config.json and the trainer."""
    conv_wd = cfg.conv_weight_decay if cfg.variant == "baseline" else 0.0
    bn_momentum = bn098_momentum(cfg.bn_momentum) if cfg.variant == "lr_scaled_bn098" else cfg.bn_momentum
    scaling = None
    if cfg.variant.startswith("lr_scaled"):
        scaling = cfg.lr_scaling
    elif cfg.variant == "lr_exact":
        scaling = "exact"
    return {
        "conv_weight_decay": conv_wd,
        "bn_momentum_used": bn_momentum,
        "conv_lr_scaling": scaling,
        "rescale_bn_stats": cfg.variant == "lr_exact",
        # lr_scaled trains exactly as lr_scaled_bn098 (BN momentum changes only the running
        # statistics used at evaluation), so one run can serve both.
        "bn098_view": cfg.variant == "lr_scaled" and cfg.bn098_view,
    }


def type_name(key: str) -> str:
    """The type of config key `key` as written in `bnwd config` (bool, int, float, str, list)."""
    t = _types()[key]
    t = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    return "list of float" if t == "list" else t


def describe(presets: tuple[str, ...] = PRESETS) -> list[dict[str, Any]]:
    """Every config key with its type, its default in each of `presets` and its meaning (`HELP`)."""
    cfgs = {p: make_config(p) for p in presets}
    return [
        {
            "key": f.name,
            "type": type_name(f.name),
            "defaults": {p: getattr(c, f.name) for p, c in cfgs.items()},
            "help": HELP.get(f.name, ""),
        }
        for f in fields(Config)
    ]


def format_value(v: Any) -> str:
    """A config value as it would be typed on the command line (`key=value`)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return ",".join(f"{x:g}" for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v) if v != "" else '""'


def load_config(path: str | Path) -> Config:
    data = json.loads(Path(path).read_text())
    types = _types()
    return Config(**{k: _coerce(k, types[k], v) for k, v in data.items() if k in types})


def diff(a: Config, b: Config, ignore: tuple[str, ...] = RUNTIME_KEYS) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} -> {db[k]!r}" for k in da if k not in ignore and da[k] != db[k]]
