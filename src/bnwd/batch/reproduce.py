"""`bnwd reproduce`: the article's runs for several seeds (plan -> specs -> `engine.run_specs`),
then figures, summary, claims and report (`analysis.report.write_outputs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnwd.analysis.report import write_outputs
from bnwd.analysis.runs import run_dir
from bnwd.batch.engine import (
    RunSpec,
    check_engine,
    default_preset,
    import_ray,
    ray_resources,
    resolve_jobs,
    resolve_seeds,
    run_specs,
)
from bnwd.errors import BnwdError, ConfigError
from bnwd.run.config import ARTICLE_VARIANTS, VARIANTS, make_config
from bnwd.run.data import load_cifar10
from bnwd.run.rundir import check_out_dir


def optimizer_defaults(optimizer: str) -> dict[str, Any]:
    """Adam(W) needs its own lr and decay scale; SGD keeps the article's."""
    if optimizer == "sgd":
        return {}
    if optimizer == "adamw":
        return {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 5e-2}
    if optimizer == "adam":
        return {"optimizer": "adam", "lr": 1e-3}
    raise ConfigError(f"unknown optimizer {optimizer!r}; choose sgd, adam or adamw")


REFERENCE_WAIT_S = 3600.0  # s a following lr_scaled waits for its baseline's next file change


def run_overrides(
    preset: str, variant: str, seed: int, base_over: dict, out_dir: str | Path, follow: bool = False
) -> dict:
    """One run's overrides: `lr_scaling=reference` reads the same seed's baseline run; with
    `follow`, while that baseline trains (`train.ReferenceNorms`)."""
    ov = {**base_over, "variant": variant, "seed": seed}
    probe = make_config(preset, base_over)
    if variant.startswith("lr_scaled") and probe.lr_scaling == "reference" and not probe.reference:
        ov["reference"] = str(run_dir(out_dir, f"baseline-s{seed}"))
        if follow and not probe.reference_wait:
            ov["reference_wait"] = REFERENCE_WAIT_S
    return ov


def follows(trained: list[str], reads_baseline: bool, jobs: int) -> bool:
    """Whether lr_scaled reads its baseline while both train: only when one seed's runs can all
    run at once. On 2 cores three 1-thread runs lose more to sharing the two cores than
    following saves (docs/performance.md). Never on Ray (a task cannot count on its baseline
    having started)."""
    return reads_baseline and jobs >= len(trained)


def plan_specs(
    preset: str,
    seeds: list[int],
    trained: list[str],
    view: bool,
    base_over: dict,
    out_dir: str | Path,
    reads_baseline: bool,
    follow: bool = False,
) -> list[RunSpec]:
    """One spec per (variant, seed), named <variant>-s<seed>, in the order the engine starts them.
    With `reads_baseline` (lr_scaling=reference) and not `follow`, lr_scaled runs `after` its
    seed's baseline: the engine puts every lr_scaled run in a second level, after every baseline;
    otherwise they all form one level. With `follow` lr_scaled reads its baseline while both train,
    one sample point behind it: it comes right after its baseline (runs start in order, so the
    baseline it waits for has always started). With `view`, lr_scaled also writes lr_scaled_bn098."""
    if reads_baseline and follow:
        order = [
            (v, s)
            for s in seeds
            for v in sorted(trained, key=lambda v: (v != "baseline", not v.startswith("lr_scaled")))
        ]
    else:
        order = [(v, s) for v in trained for s in seeds]
    return [
        RunSpec(
            f"{v}-s{s}",
            preset,
            run_overrides(preset, v, s, base_over, out_dir, follow),
            s,
            after=f"baseline-s{s}" if reads_baseline and not follow and v.startswith("lr_scaled") else None,
            view=f"lr_scaled_bn098-s{s}" if view and v == "lr_scaled" else None,
        )
        for v, s in order
    ]


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
    jobs: int | str = "auto",
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

    The runs go to `engine.run_specs` (`plan_specs`). With `lr_scaling=reference` lr_scaled reads
    its seed's baseline; when `jobs` covers a seed's runs it does so while both train (`follow`:
    it waits for each of the baseline's sample points it needs, `train.ReferenceNorms`) and the
    runs form one level, lr_scaled right after its baseline; otherwise the lr_scaled runs form a
    second level after every baseline. Each level runs min(`jobs`, its runs) at once in separate
    processes, each with usable_cores // that many torch threads unless `threads=` is given; a
    level of one runs in this process with the torch default. `jobs="auto"`
    (`engine.resolve_jobs`): one run per core on CPU within the free memory, up to 8 sharing a
    GPU. So on 2 cores one seed of the `cpu` preset trains baseline and no_conv_l2 side by side
    with 1 thread each, then lr_scaled with 2; on 3 or more cores, or a GPU, the three at once.
    Thread counts follow from the plan, never from timing; a run's metrics depend on its thread
    count only through float rounding, and with equal thread counts they are identical to a
    serial reproduce's (where lr_scaled reads the finished baseline).

    `engine="ray"` runs each run as a Ray task, level by level (`address` joins a cluster, else a
    local instance starts and stops with the call). A run that fails is reported (a transient
    error after a second attempt) and the outputs are written from the runs that finished."""
    preset = preset or default_preset()
    seeds_ = resolve_seeds(seeds, seed_list)
    check_engine(engine, address)
    variants = list(variants or ARTICLE_VARIANTS) + (["lr_exact"] if exact else [])
    for v in variants:
        if v not in VARIANTS:
            raise ConfigError(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    out_dir = Path(out or f"runs/{preset}")
    check_out_dir(out_dir)
    base_over = {**optimizer_defaults(optimizer), **(overrides or {})}
    probe = make_config(preset, base_over)
    base_over = {k: getattr(probe, k) for k in base_over}  # typed: `threads="1"` from the command line is 1
    view = probe.bn098_view and "lr_scaled_bn098" in variants
    if view and "lr_scaled" not in variants:
        variants.append("lr_scaled")
    needs_ref = probe.lr_scaling == "reference" and any(v.startswith("lr_scaled") for v in variants)
    if needs_ref and "baseline" not in variants and not probe.reference:
        variants.insert(0, "baseline")
    variants = sorted(set(variants), key=VARIANTS.index)
    trained = [v for v in variants if not (view and v == "lr_scaled_bn098")]
    jobs = resolve_jobs(jobs, probe.device)
    reads_baseline = needs_ref and not probe.reference
    follow = engine == "local" and follows(trained, reads_baseline, jobs)
    resources = None
    if engine == "ray":
        import_ray()
        resources = ray_resources(gpus_per_run, cpus_per_run)
    load_cifar10(data)  # fail here, once, on missing or bad data
    data_abs = str(Path(data).resolve()) if data else None
    where = out_dir.resolve() if engine == "ray" else out_dir  # a Ray worker may start elsewhere
    specs = plan_specs(preset, seeds_, trained, view, base_over, where, reads_baseline, follow)
    results = run_specs(specs, where, data_abs, jobs, engine, address, resources, progress, "wave", force)
    views = {s.name: s.view for s in specs}
    run_dirs, failed = [], {}
    for name, res in results.items():
        if res["status"] != "done":
            failed[name] = res["error"]
            continue
        run_dirs.append(run_dir(out_dir, name))
        if views[name]:
            run_dirs.append(run_dir(out_dir, views[name]))
    for name, err in failed.items():
        print(f"bnwd: {name} failed: {err}", flush=True)
    if not run_dirs:
        raise BnwdError(f"every run failed; first error: {next(iter(failed.values()))}")
    return write_outputs(run_dirs, out_dir)
