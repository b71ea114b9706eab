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


def seed_chain(
    preset: str,
    seed: int,
    trained: list[str],
    view: bool,
    base_over: dict,
    out_dir: str,
    data: str | None,
    force: bool,
    progress: bool,
    dataset=None,
) -> list[str]:
    """Train one seed's runs in order (the baseline first: `lr_scaling=reference` reads it); returns
    the run directories, the bn098 view included. A top-level function so a process pool can run it."""
    from .data import load_cifar10
    from .runs import write_bn098_view
    from .train import train

    out = Path(out_dir)
    dataset = dataset if dataset is not None else load_cifar10(data)
    probe = make_config(preset, base_over)
    dirs = []
    for v in trained:
        ov = {**base_over, "variant": v, "seed": seed}
        if v.startswith("lr_scaled") and probe.lr_scaling == "reference" and not probe.reference:
            ov["reference"] = str(out / "runs" / f"baseline-s{seed}")
        rd = out / "runs" / f"{v}-s{seed}"
        if progress:
            extra = " (+ lr_scaled_bn098 from the same training)" if view and v == "lr_scaled" else ""
            print(f"{v} seed {seed} -> {rd}{extra}", flush=True)
        s = train(make_config(preset, ov), rd, resume=True, force=force, progress=progress, dataset=dataset)
        dirs.append(str(rd))
        if view and v == "lr_scaled":
            dirs.append(str(write_bn098_view(rd, out / "runs" / f"lr_scaled_bn098-s{seed}")))
        if not progress:
            print(f"done: {v} seed {seed}, test acc {100 * s['final_test_acc']:.2f}%", flush=True)
    return dirs


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
    jobs: int = 1,
    engine: str = "local",
    address: str | None = None,
    gpus_per_run: float | None = None,
    cpus_per_run: float | None = None,
) -> dict:
    """Train every (variant, seed) into OUT/runs/<variant>-s<seed> (finished runs are kept,
    interrupted ones resumed; the baseline goes first since `lr_scaling=reference` reads it),
    then write OUT/figures/, OUT/summary.{csv,json}, OUT/claims.json and OUT/report.md.

    `lr_scaled_bn098` is not trained when `lr_scaled` is (the default, `bn098_view=true`): the
    two train identically, and the lr_scaled run keeps the 0.98-equivalent BN statistics too;
    OUT/runs/lr_scaled_bn098-s<seed> is then written from it (`runs.write_bn098_view`).

    `jobs` > 1 runs that many seeds at once in separate processes, each with
    `cpu_count // jobs` torch threads unless `threads=` is given (a run's metrics depend on its
    thread count only through float rounding; with equal thread counts they are identical).

    `engine="ray"` runs each seed's chain of runs as one Ray task (`sweep.ray_map`; `address`
    joins a cluster, else a local instance starts and stops with the call); a seed whose chain
    fails twice is reported and the outputs are written from the runs that finished."""
    import os

    from .data import load_cifar10

    preset = preset or default_preset()
    seeds_ = resolve_seeds(seeds, seed_list)
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, got {engine!r}")
    if address and engine != "ray":
        raise ConfigError("--address is for --engine ray")
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
    jobs = min(jobs, len(seeds_))
    args = (preset, trained, view, base_over, str(out_dir), data, force)
    run_dirs: list[str] = []
    if engine == "ray":
        from .sweep import _import_ray, ray_map, ray_resources

        _import_ray()
        res = ray_resources(gpus_per_run, cpus_per_run)
        load_cifar10(data)  # fail here, once, on missing or bad data
        data_abs = str(Path(data).resolve()) if data else None
        over = base_over if probe.threads else {**base_over, "threads": max(1, int(res["num_cpus"]))}
        calls = {
            f"seed {s}": (preset, s, trained, view, over, str(out_dir.resolve()), data_abs, force, False)
            for s in seeds_
        }
        results = ray_map(seed_chain, calls, address, res, progress, "reproduce (ray)")
        failed = {k: v["error"] for k, v in results.items() if v["status"] != "done"}
        for k, e in failed.items():
            print(f"bnwd: {k} failed twice: {e}", flush=True)
        run_dirs = [d for v in results.values() if v["status"] == "done" for d in v["result"]]
        if not run_dirs:
            raise BnwdError(f"every seed failed; first error: {next(iter(failed.values()))}")
        return write_outputs([Path(d) for d in run_dirs], out_dir)
    if jobs == 1:
        dataset = load_cifar10(data)
        for seed in seeds_:
            run_dirs += seed_chain(preset, seed, *args[1:], progress=progress, dataset=dataset)
    else:
        from .sweep import worker_pool

        load_cifar10(data)  # fail here, once, on missing or bad data
        if not probe.threads and probe.device in ("auto", "cpu"):
            base_over = {**base_over, "threads": max(1, (os.cpu_count() or 1) // jobs)}
            args = (preset, trained, view, base_over, str(out_dir), data, force)
        with worker_pool(jobs) as pool:
            futures = [pool.submit(seed_chain, preset, seed, *args[1:], progress=False) for seed in seeds_]
            for f in futures:
                run_dirs += f.result()
    return write_outputs([Path(d) for d in run_dirs], out_dir)


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
