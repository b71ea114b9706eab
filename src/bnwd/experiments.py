"""`bnwd reproduce`: the article's runs for several seeds, then figures, summary and report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import ARTICLE_VARIANTS, VARIANTS, make_config
from .errors import BnwdError, ConfigError


def default_preset() -> str:
    import torch

    return "blog" if torch.cuda.is_available() else "cpu"


def optimizer_defaults(optimizer: str) -> dict[str, Any]:
    """Adam(W) needs its own lr and decay scale; SGD keeps the article's."""
    if optimizer == "sgd":
        return {}
    if optimizer == "adamw":
        return {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 5e-2}
    if optimizer == "adam":
        return {"optimizer": "adam", "lr": 1e-3}
    raise ConfigError(f"unknown optimizer {optimizer!r}; choose sgd, adam or adamw")


def resolve_seeds(seeds: int | None = None, seed_list: str | list[int] | None = None) -> list[int]:
    """`--seeds 3` -> [0, 1, 2]; `--seed-list 10,11,12` -> those seeds, in order, once each."""
    if seed_list is not None and seed_list != "":
        if seeds is not None:
            raise ConfigError("give --seeds or --seed-list, not both")
        items = seed_list.split(",") if isinstance(seed_list, str) else list(seed_list)
        try:
            out = [int(str(s).strip()) for s in items if str(s).strip()]
        except ValueError:
            raise ConfigError(f"--seed-list takes comma-separated integers, got {seed_list!r}") from None
        if not out or any(s < 0 for s in out):
            raise ConfigError(f"--seed-list needs one or more seeds >= 0, got {seed_list!r}")
        return list(dict.fromkeys(out))
    n = 1 if seeds is None else int(seeds)
    if n < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n}")
    return list(range(n))


def reproduce(
    preset: str | None = None,
    seeds: int | None = None,
    data: str | None = None,
    out: str | None = None,
    optimizer: str = "sgd",
    exact: bool = False,
    variants: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
    seed_list: str | list[int] | None = None,
) -> dict:
    """Train every (variant, seed) into OUT/runs/<variant>-s<seed> (finished runs are kept,
    interrupted ones resumed; the baseline goes first since `lr_scaling=reference` reads it),
    then write OUT/figures/, OUT/summary.{csv,json}, OUT/claims.json and OUT/report.md.

    `lr_scaled_bn098` is not trained when `lr_scaled` is (the default, `bn098_view=true`): the
    two train identically, and the lr_scaled run keeps the 0.98-equivalent BN statistics too;
    OUT/runs/lr_scaled_bn098-s<seed> is then written from it (`runs.write_bn098_view`)."""
    from .data import load_cifar10
    from .runs import write_bn098_view
    from .train import train

    preset = preset or default_preset()
    seeds_ = resolve_seeds(seeds, seed_list)
    variants = list(variants or ARTICLE_VARIANTS) + (["lr_exact"] if exact else [])
    for v in variants:
        if v not in VARIANTS:
            raise ConfigError(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    out_dir = Path(out or f"runs/{preset}")
    base_over = {**optimizer_defaults(optimizer), **(overrides or {})}
    probe = make_config(preset, base_over)
    view = probe.bn098_view and "lr_scaled_bn098" in variants
    if view and "lr_scaled" not in variants:
        variants.append("lr_scaled")
    needs_ref = probe.lr_scaling == "reference" and any(v.startswith("lr_scaled") for v in variants)
    if needs_ref and "baseline" not in variants and not probe.reference:
        variants.insert(0, "baseline")
    variants = sorted(set(variants), key=VARIANTS.index)
    trained = [v for v in variants if not (view and v == "lr_scaled_bn098")]
    dataset = load_cifar10(data)
    run_dirs, i = [], 0
    for seed in seeds_:
        for v in trained:
            ov = {**base_over, "variant": v, "seed": seed}
            if v.startswith("lr_scaled") and probe.lr_scaling == "reference" and not probe.reference:
                ov["reference"] = str(out_dir / "runs" / f"baseline-s{seed}")
            cfg = make_config(preset, ov)
            rd = out_dir / "runs" / f"{v}-s{seed}"
            i += 1
            if progress:
                extra = " (+ lr_scaled_bn098 from the same training)" if view and v == "lr_scaled" else ""
                print(f"[{i}/{len(trained) * len(seeds_)}] {v} seed {seed} -> {rd}{extra}", flush=True)
            train(cfg, rd, resume=True, force=force, progress=progress, dataset=dataset)
            run_dirs.append(rd)
            if view and v == "lr_scaled":
                run_dirs.append(write_bn098_view(rd, out_dir / "runs" / f"lr_scaled_bn098-s{seed}"))
    return write_outputs(run_dirs, out_dir)


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories among `paths`, looking one and two levels down for folders of runs."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if (p / "config.json").exists():
            found.append(p)
            continue
        sub = sorted(c.parent for c in p.glob("*/config.json")) or sorted(c.parent for c in p.glob("*/*/config.json"))
        if not sub:
            raise BnwdError(f"{p} is not a run directory (no config.json) and holds none")
        found += sub
    return found


def write_outputs(run_dirs: list[Path], out_dir: Path) -> dict:
    from .plots import load_runs, plot_all
    from .report import write_report, write_summary

    runs = [r for r in load_runs(run_dirs) if r.summary and r.summary.get("finished")]
    if not runs:
        raise BnwdError("none of the given runs has finished (no summary.json)")
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = plot_all(runs, out_dir / "figures")
    write_summary(runs, out_dir)
    report = write_report(runs, out_dir, figs)
    return {"figures": figs, "report": str(report or out_dir / "report.md"), "runs": [str(r) for r in run_dirs]}
