"""`bnwd reproduce`: the article's runs for several seeds, then figures, summary and report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnwd.errors import BnwdError, ConfigError
from bnwd.run.config import ARTICLE_VARIANTS, VARIANTS, make_config


def default_preset() -> str:
    """The preset of every command run without --preset: the article's `blog` when torch sees a
    CUDA GPU, the `cpu` preset otherwise."""
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


REFERENCE_WAIT_S = 3600.0  # s a following lr_scaled waits for its baseline's next file change


def run_overrides(
    preset: str, variant: str, seed: int, base_over: dict, out_dir: str | Path, follow: bool = False
) -> dict:
    """One run's overrides: `lr_scaling=reference` reads the same seed's baseline run; with
    `follow`, while that baseline trains (`train.ReferenceNorms`)."""
    ov = {**base_over, "variant": variant, "seed": seed}
    probe = make_config(preset, base_over)
    if variant.startswith("lr_scaled") and probe.lr_scaling == "reference" and not probe.reference:
        ov["reference"] = str(Path(out_dir) / "runs" / f"baseline-s{seed}")
        if follow and not probe.reference_wait:
            ov["reference_wait"] = REFERENCE_WAIT_S
    return ov


def follows(trained: list[str], reads_baseline: bool, jobs: int) -> bool:
    """Whether lr_scaled reads its baseline while both train: only when one seed's runs can all
    run at once. On 2 cores three 1-thread runs lose more to sharing the two cores than
    following saves (docs/performance.md); a Ray task trains a seed's runs in order anyway."""
    return reads_baseline and jobs >= len(trained)


def plan_waves(
    seeds: list[int], trained: list[str], reads_baseline: bool, follow: bool = False
) -> list[list[tuple[str, int]]]:
    """The (variant, seed) runs in waves: every run of a wave can start at once. With
    `reads_baseline` (lr_scaling=reference) and not `follow`, the lr_scaled runs form a second
    wave, after every baseline; otherwise there is one wave. With `follow` lr_scaled reads its
    baseline while both train, one sample point behind it: it comes right after its baseline
    (a pool starts runs in order, so the baseline it waits for has always started)."""
    if reads_baseline and follow:
        first = [
            (v, s)
            for s in seeds
            for v in sorted(trained, key=lambda v: (v != "baseline", not v.startswith("lr_scaled")))
        ]
        return [first]
    first = [(v, s) for v in trained for s in seeds if not (reads_baseline and v.startswith("lr_scaled"))]
    second = [(v, s) for v in trained for s in seeds if reads_baseline and v.startswith("lr_scaled")]
    return [w for w in (first, second) if w]


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
    the run directories, the bn098 view included. A top-level function so a Ray task can run it."""
    from bnwd.run.data import load_cifar10

    dataset = dataset if dataset is not None else load_cifar10(data)
    dirs = []
    for v in trained:
        dirs += train_variant(preset, v, seed, view, base_over, out_dir, force, progress, dataset)
    return dirs


def train_variant(preset, variant, seed, view, base_over, out_dir, force, progress, dataset) -> list[str]:
    """Train (resume, or skip when finished) OUT/runs/<variant>-s<seed> in this process; with
    `view`, lr_scaled also writes the lr_scaled_bn098 view. Returns the run directories."""
    from bnwd.analysis.runs import write_bn098_view
    from bnwd.run.trainer import train

    out = Path(out_dir)
    rd = out / "runs" / f"{variant}-s{seed}"
    if progress:
        extra = " (+ lr_scaled_bn098 from the same training)" if view and variant == "lr_scaled" else ""
        print(f"{variant} seed {seed} -> {rd}{extra}", flush=True)
    cfg = make_config(preset, run_overrides(preset, variant, seed, base_over, out))
    s = train(cfg, rd, resume=True, force=force, progress=progress, dataset=dataset)
    if not progress:
        print(f"done: {variant} seed {seed}, test acc {100 * s['final_test_acc']:.2f}%", flush=True)
    dirs = [str(rd)]
    if view and variant == "lr_scaled":
        dirs.append(str(write_bn098_view(rd, out / "runs" / f"lr_scaled_bn098-s{seed}")))
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

    The runs go in waves (`plan_waves`). With `lr_scaling=reference` lr_scaled reads its seed's
    baseline; when `jobs` covers a seed's runs it does so while both train (`follow`: it waits
    for each of the baseline's sample points it needs, `train.ReferenceNorms`) and a seed's runs
    form one wave, lr_scaled right after its baseline; otherwise the lr_scaled runs form a
    second wave after every baseline. Each wave runs min(`jobs`, its runs) at once in separate
    processes, each with usable_cores // that many torch threads unless `threads=` is given; a
    wave of one runs in this process with the torch default. `jobs="auto"`
    (`sweep.resolve_jobs`): one run per core on CPU within the free memory, up to 8 sharing a
    GPU. So on 2 cores one seed of the `cpu` preset trains baseline and no_conv_l2 side by side
    with 1 thread each, then lr_scaled with 2; on 3 or more cores, or a GPU, the three at once.
    Thread counts follow from the plan, never from timing; a run's metrics depend on its thread
    count only through float rounding, and with equal thread counts they are identical to a
    serial reproduce's (where lr_scaled reads the finished baseline).

    `engine="ray"` runs each seed's chain of runs as one Ray task (`sweep.ray_map`; `address`
    joins a cluster, else a local instance starts and stops with the call); a seed whose chain
    fails twice is reported and the outputs are written from the runs that finished."""
    from bnwd.batch.sweep import resolve_jobs
    from bnwd.run.data import load_cifar10

    preset = preset or default_preset()
    seeds_ = resolve_seeds(seeds, seed_list)
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, got {engine!r}")
    if address and engine != "ray":
        raise ConfigError("--address is for --engine ray")
    variants = list(variants or ARTICLE_VARIANTS) + (["lr_exact"] if exact else [])
    for v in variants:
        if v not in VARIANTS:
            raise ConfigError(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    from bnwd.run.rundir import check_out_dir

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
    follow = engine == "local" and follows(trained, needs_ref and not probe.reference, jobs)
    if engine == "ray":
        from bnwd.batch.sweep import _import_ray, ray_map, ray_resources

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
    dataset = load_cifar10(data)  # fail here, once, on missing or bad data
    waves = plan_waves(seeds_, trained, needs_ref and not probe.reference, follow)
    run_dirs, failed = run_waves(waves, jobs, preset, view, base_over, out_dir, data, force, progress, dataset, follow)
    for name, err in failed.items():
        print(f"bnwd: {name} failed: {err}", flush=True)
    if not run_dirs:
        raise BnwdError(f"every run failed; first error: {next(iter(failed.values()))}")
    return write_outputs([Path(d) for d in run_dirs], out_dir)


def run_waves(waves, jobs, preset, view, base_over, out_dir, data, force, progress, dataset, follow=False):
    """Run `plan_waves`' waves in order (see `reproduce`); returns the finished run directories,
    bn098 views included, and {run name: error} for the runs that failed or could not start."""
    from bnwd.analysis.runs import write_bn098_view
    from bnwd.batch.sweep import RunSpec, run_local, threads_per_run
    from bnwd.run.rundir import SUMMARY
    from bnwd.run.trainer import pick_device

    out = Path(out_dir)
    dirs: list[str] = []
    failed: dict[str, str] = {}
    cpu = pick_device(make_config(preset, base_over).device).type == "cpu"
    for i, wave in enumerate(waves, 1):
        ready = []
        for v, s in wave:
            ov = run_overrides(preset, v, s, base_over, out, follow)
            if "reference" in ov and f"baseline-s{s}" in failed:
                failed[f"{v}-s{s}"] = f"not started: its reference baseline-s{s} failed"
            elif not force and (out / "runs" / f"{v}-s{s}" / SUMMARY).exists():
                # finished before: kept (a changed config is still refused) without a pool slot,
                # so the wave's threads are split among the runs that train
                dirs += train_variant(preset, v, s, view, base_over, out, force, False, dataset)
            else:
                ready.append((v, s, ov))
        k = min(jobs, len(ready))
        if not k:
            continue
        threads = base_over.get("threads") or (threads_per_run(k) if k > 1 and cpu else 0)
        if progress:
            names = ", ".join(f"{v}-s{s}" for v, s, _ in ready)
            how = f"{k} at once" + (f", {threads} thread{'s' * (threads > 1)} each" if threads else "")
            print(f"wave {i}/{len(waves)}: {names} ({how})", flush=True)
        if k == 1:
            for v, s, _ in ready:
                dirs += train_variant(preset, v, s, view, base_over, out, force, progress, dataset)
            continue
        specs = [RunSpec(f"{v}-s{s}", preset, {**ov, **({"threads": threads} if threads else {})}, s)
                 for v, s, ov in ready]  # fmt: skip
        results = run_local(specs, out, data, k, progress, desc=f"wave {i}/{len(waves)}", force=force)
        for (v, s, _), spec in zip(ready, specs):
            res = results[spec.name]
            if res["status"] != "done":
                failed[spec.name] = res["error"]
                continue
            rd = out / "runs" / spec.name
            dirs.append(str(rd))
            if view and v == "lr_scaled":
                dirs.append(str(write_bn098_view(rd, out / "runs" / f"lr_scaled_bn098-s{s}")))
    return dirs, failed


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
    from bnwd.analysis.plots import load_runs, plot_all
    from bnwd.analysis.report import write_report, write_summary

    runs = [r for r in load_runs(run_dirs) if r.summary and r.summary.get("finished")]
    if not runs:
        raise BnwdError("none of the given runs has finished (no summary.json)")
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = plot_all(runs, out_dir / "figures")
    write_summary(runs, out_dir)
    report = write_report(runs, out_dir, figs)
    return {"figures": figs, "report": str(report or out_dir / "report.md"), "runs": [str(r) for r in run_dirs]}
