"""`bnwd` command line: train, reproduce, sweep, plot, audit, plan, bench, config."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bnwd.errors import BnwdError, ConfigError, one_line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        sys.stderr.write(f"bnwd: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def _common_train(p: argparse.ArgumentParser) -> None:
    _run_options(p)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. epochs=10 lr=0.05 (`bnwd config` lists every key)",
    )


def _run_options(p: argparse.ArgumentParser) -> None:
    """--data, --device, --no-progress and --preset: every command that trains."""
    from bnwd.run.config import PRESETS

    p.add_argument(
        "--data",
        default=None,
        help="folder with cifar-10-batches-py/ or cifar-10-python.tar.gz (default: $BNWD_DATA or ~/.cache/bnwd)",
    )
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} ({PRESET_RULE})")


def _many_runs(p: argparse.ArgumentParser) -> None:
    """Seeds, jobs and the engine: the commands that train many runs (reproduce, sweep)."""
    p.add_argument("--seeds", type=int, default=None, help="number of seeds: 0..N-1 (default 1)")
    p.add_argument("--seed-list", default=None, help="comma-separated seeds instead, e.g. 10,11,12 (7: seed 7 alone)")
    p.add_argument(
        "--jobs",
        default="auto",
        help="local engine: runs trained at once in separate processes, CPU threads split between them "
        "(default auto: one per core on CPU, up to 8 sharing a GPU)",
    )
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="local processes or Ray tasks")
    p.add_argument("--address", default=None, help="Ray cluster address (ray://host:10001 or host:6379)")
    p.add_argument("--gpus-per-run", type=float, default=None, help="ray: num_gpus per run (default 0.25 on GPU)")
    p.add_argument("--cpus-per-run", type=float, default=None, help="ray: num_cpus per run (default 1)")


# One rule for every command that takes --preset.
PRESET_RULE = "default: blog when torch sees a CUDA GPU, cpu otherwise"


def build_parser() -> argparse.ArgumentParser:
    from bnwd.run.config import PRESETS, VARIANTS

    p = _Parser(
        prog="bnwd",
        description="Batch norm + weight decay: reproduce, measure and transform the effective learning rate.",
    )
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train one run into a run directory")
    t.add_argument("--variant", default="baseline", help=f"one of {', '.join(VARIANTS)}")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--resume", action="store_true", help="continue an interrupted run (a finished one is left untouched)"
    )
    t.add_argument("--force", action="store_true", help="overwrite a run directory that holds another run")
    t.add_argument(
        "--stop-at-step",
        type=int,
        default=None,
        metavar="N",
        help="end this leg once N steps are done: checkpoint and exit 130 as on SIGTERM (continue with --resume)",
    )
    t.add_argument(
        "--stop-after",
        type=float,
        default=None,
        metavar="S",
        help="end this leg S seconds after the command started, as --stop-at-step does",
    )
    _common_train(t)

    r = sub.add_parser("reproduce", help="the article's four runs (x seeds), figures, summary and report")
    _many_runs(r)
    r.add_argument("--out", default=None, help="output folder (default runs/<preset>)")
    r.add_argument("--optimizer", default="sgd", help="sgd | adam | adamw (default sgd)")
    r.add_argument(
        "--exact", action="store_true", help="add the lr_exact run (exact transform + BN statistics rescaled)"
    )
    r.add_argument("--variants", default=None, help="comma-separated subset of variants to run")
    r.add_argument("--force", action="store_true", help="redo runs whose config changed")
    _common_train(r)

    sw = sub.add_parser(
        "sweep",
        help="a grid of config values x seeds (local process pool or Ray), summary and equilibrium figures",
        description="Expand --grid into runs (each a normal, resumable run directory under OUT/runs/), run them "
        "with --engine local (a process pool) or ray (one Ray task per run), then write OUT/summary.csv, "
        "OUT/summary.json and OUT/figures/. Rerunning the same command resumes.",
    )
    sw.add_argument("--grid", nargs="+", default=None, metavar="KEY=V1,V2", help="axes, e.g. lr=0.05,0.1 width=8,16")
    sw.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="fixed config overrides for every run")
    sw.add_argument("--variant", default="baseline", help=f"one of {', '.join(VARIANTS)} (default baseline)")
    sw.add_argument("--out", default=None, help="sweep folder")
    _many_runs(sw)
    sw.add_argument("--yes", action="store_true", help=f"allow a grid of more than {10_000:,} runs")
    sw.add_argument("--force", action="store_true", help="replace another sweep's record in OUT")
    sw.add_argument("--plot", default=None, metavar="SWEEP", help="only redraw summary and figures of SWEEP")
    _run_options(sw)

    pl = sub.add_parser("plot", help="redraw figures (and summary/report) from finished runs")
    pl.add_argument("runs", nargs="+", help="run directories (or folders containing them)")
    pl.add_argument("--out", required=True, help="output folder")

    a = sub.add_parser("audit", help="which parameters are scale-invariant, and what their L2 does")
    a.add_argument("--model", default="resnet20", help="resnet20 | resnetN | package.module:factory")
    a.add_argument("--input-shape", default="8,3,32,32", help="example input shape, comma-separated (batch first)")
    a.add_argument("--weight-decay", type=float, default=2e-4, help="L2 coefficient (>= 0) assumed on every parameter")

    c = sub.add_parser(
        "config",
        help="every config key: type, default per preset, meaning",
        description="Every config key that `bnwd train`, `reproduce` and `sweep` take as key=value, with its type, "
        "its default in each preset and what it means.",
    )
    c.add_argument("--preset", default=None, help=f"only this preset's defaults (one of {', '.join(PRESETS)})")

    _plan_parser(sub)

    b = sub.add_parser(
        "bench",
        help="training and evaluation throughput (img/s), monitor overhead, torch.compile",
        description="Training throughput of ResNet-20 on synthetic data, with and without the Monitor "
        "(interleaved blocks, medians), evaluation throughput, and optionally torch.compile (compile time "
        "reported apart). "
        "By default it times the layout training uses, channels_last (and plain NCHW too on CUDA); "
        "compare both with --layouts plain,channels_last.",
    )
    b.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    b.add_argument("--batch-size", type=int, default=128, help="images per step")
    b.add_argument(
        "--steps", type=int, default=20, help="timed steps with and as many without the monitor (medians reported)"
    )
    b.add_argument(
        "--width", type=int, default=16, help="ResNet-20 filters in stage 1 (16 = the article, 8 = cpu preset)"
    )
    b.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    b.add_argument("--json", action="store_true", help="print the results as one JSON object, the last line on stdout")
    b.add_argument("--json-out", default=None, metavar="FILE", help="also write the results to this JSON file")
    b.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "on", "off"],
        help="also time torch.compile(model) next to eager (auto: on on CUDA, off on CPU)",
    )
    b.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs",
    )
    b.add_argument(
        "--no-compile-probe",
        action="store_true",
        help="compile in this process only (by default a child process compiles and runs one step first, "
        "so that a crashing compiled kernel costs the child, not the bench)",
    )
    b.add_argument("--eval-batch-size", type=int, default=1000, help="images per evaluation batch")
    b.add_argument("--eval-batches", type=int, default=5, help="timed evaluation batches (median reported)")
    b.add_argument(
        "--block", type=int, default=0, help="steps per block when alternating with/without monitor (0 = auto)"
    )
    b.add_argument(
        "--layouts",
        default=None,
        help="comma-separated: plain, channels_last (default: channels_last on CPU, both on CUDA, channels_last with bf16)",
    )
    return p


def cmd_train(args) -> int:
    from bnwd.batch.engine import default_preset
    from bnwd.run.config import make_config, parse_overrides
    from bnwd.run.data import load_cifar10
    from bnwd.run.trainer import pick_device, train

    ov = parse_overrides(args.overrides)
    kw = {"variant": args.variant, "seed": args.seed}
    if args.device:
        kw["device"] = args.device
    cfg = make_config(args.preset or default_preset(), {**kw, **ov})
    # Device and data first: a run that cannot start writes nothing (loading is cached in the process).
    pick_device(cfg.device)
    load_cifar10(args.data)
    s = train(
        cfg,
        args.out,
        args.data,
        resume=args.resume,
        force=args.force,
        progress=not args.no_progress,
        stop_step=args.stop_at_step,
        stop_after=args.stop_after,
    )
    print(
        f"{args.out}: test acc {100 * s['final_test_acc']:.2f}%, train loss {s['final_train_loss']:.4f}, "
        f"conv sqsum {s['final_conv_sqsum']:.1f}, {s['images_per_s']:.0f} img/s"
    )
    return 0


def cmd_reproduce(args) -> int:
    from bnwd.batch.reproduce import reproduce
    from bnwd.run.config import parse_overrides

    ov = parse_overrides(args.overrides)
    if args.device:
        ov["device"] = args.device
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    res = reproduce(
        preset=args.preset,
        seeds=args.seeds,
        seed_list=args.seed_list,
        jobs=args.jobs,
        engine=args.engine,
        address=args.address,
        gpus_per_run=args.gpus_per_run,
        cpus_per_run=args.cpus_per_run,
        data=args.data,
        out=args.out,
        optimizer=args.optimizer,
        exact=args.exact,
        variants=variants,
        overrides=ov,
        force=args.force,
        progress=not args.no_progress,
    )
    print(f"report: {res['report']}")
    return 0


def cmd_sweep(args) -> int:
    from bnwd.batch.sweep import replot, sweep
    from bnwd.run.config import parse_overrides

    if args.plot:
        res = replot(args.plot)
    else:
        if not args.grid or not args.out:
            raise ConfigError("bnwd sweep needs --grid KEY=V1,V2 ... and --out SWEEP (or --plot SWEEP)")
        ov = parse_overrides(args.set)
        if args.device:
            ov["device"] = args.device
        res = sweep(
            args.grid,
            args.out,
            seeds=args.seeds,
            seed_list=args.seed_list,
            preset=args.preset,
            variant=args.variant,
            overrides=ov,
            engine=args.engine,
            address=args.address,
            jobs=args.jobs,
            data=args.data,
            yes=args.yes,
            force=args.force,
            progress=not args.no_progress,
            gpus_per_run=args.gpus_per_run,
            cpus_per_run=args.cpus_per_run,
        )
    runs = res["summary"]["runs"]
    failed = [r for r in runs if r["status"] != "done"]
    print(
        f"{len(runs) - len(failed)}/{len(runs)} runs done; summary {Path(res['out']) / 'summary.csv'}; "
        f"{len(res['figures'])} figures in {Path(res['out']) / 'figures'}"
    )
    for r in failed[:10]:
        print(f"  {r['run']}: {r['status']}{': ' + r['error'] if r.get('error') else ''}")
    if len(failed) > 10:
        print(f"  ... and {len(failed) - 10} more")
    return 1 if failed and not args.plot else 0


def cmd_plot(args) -> int:
    from bnwd.analysis.report import write_outputs
    from bnwd.analysis.runs import find_runs

    runs = find_runs([Path(r) for r in args.runs])
    res = write_outputs(runs, Path(args.out))
    print(f"{len(res['figures'])} figures in {Path(args.out) / 'figures'}; report {res['report']}")
    return 0


def cmd_audit(args) -> int:
    import torch

    from bnwd.nn.invariance import audit, format_audit, load_factory

    try:
        shape = tuple(int(s) for s in args.input_shape.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape must be comma-separated integers, got {args.input_shape!r}") from None
    if len(shape) < 2 or any(n < 1 for n in shape):
        raise ConfigError(
            f"--input-shape needs a batch size first and sizes >= 1, e.g. 8,3,32,32, got {args.input_shape!r}"
        )
    if not args.weight_decay >= 0:
        raise ConfigError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    model = load_factory(args.model)()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny float64 forwards: threads only add contention
    torch.manual_seed(0)
    x = torch.randn(*shape)
    names = [n for n, _ in model.named_parameters()]
    try:
        rows = audit(model, x, {n: args.weight_decay for n in names})
    except BnwdError:
        raise
    except Exception as e:  # the model's own forward rejected the input
        raise ConfigError(
            f"the model cannot take an input of shape {args.input_shape} ({one_line(e)}); "
            "--input-shape is batch first, e.g. 8,3,32,32"
        ) from None
    finally:  # main() may run inside a caller's process (tests, notebooks)
        torch.set_num_threads(threads)
    print(format_audit(rows))
    return 0


def _plan_parser(sub) -> None:
    pl = sub.add_parser(
        "plan",
        help="before training: which layers' weight decay is a clock, how fast it runs, the lr it implies",
        description="For a model, optimizer, lr schedule and step count: per parameter group and per parameter, "
        "whether L2 regularizes or only sets the effective lr (a clock), the clock's equilibrium angular update "
        "and relaxation time per lr stage, whether each stage reaches equilibrium, and the lr multiplier "
        "1/(s_t s_t+1) that a run without that decay would need (exact for SGD). Without arguments: the "
        "article's ResNet-20 / SGD settings. See docs/plan.md.",
    )
    pl.add_argument("--model", default="resnet20", help="resnet20 | resnetN | package.module:factory")
    pl.add_argument("--input-shape", default="8,3,32,32", help="example input shape for the invariance test")
    pl.add_argument("--optimizer", default="sgd", help="sgd | adamw")
    pl.add_argument("--lr", default="0.1", help="peak learning rate (default 0.1)")
    pl.add_argument("--momentum", default="0.9", help="SGD momentum (default 0.9)")
    pl.add_argument("--betas", default="0.9,0.999", help="AdamW betas (default 0.9,0.999)")
    pl.add_argument(
        "--weight-decay", default="2e-4", help="one value, or per bnwd group: conv=5e-4,bn=0,head=5e-4 (default 2e-4)"
    )
    pl.add_argument("--schedule", default="step", help="step | cosine | constant | points (default step)")
    pl.add_argument("--milestones", default="50,100", help="step: lr drops, in epochs (default 50,100)")
    pl.add_argument("--gamma", default="0.1", help="step: factor at each milestone (default 0.1)")
    pl.add_argument("--points", default=None, help="points: STEP:LR,... piecewise constant from each step")
    pl.add_argument("--warmup-epochs", default="0", help="linear warmup length in epochs (default 0)")
    pl.add_argument("--min-lr", default="0", help="cosine: final lr (default 0)")
    pl.add_argument("--stages", default=None, help="report stages starting at these epochs instead")
    pl.add_argument("--steps-per-epoch", default="390", help="optimizer steps per epoch (default 390)")
    pl.add_argument("--epochs", default="150", help="epochs (default 150)")
    pl.add_argument(
        "--grad-scale",
        default=None,
        help="E||g||^2 ||w||^2 of the clock layers (Monitor's grad_sq_unit): SGD eq. norms",
    )
    pl.add_argument("--figure", default=None, metavar="PATH", help="write the lr / multiplier figure (PNG) here")
    pl.add_argument("--json", action="store_true", help="print one JSON document instead of the tables")
    pl.add_argument("--brief", action="store_true", help="no per-parameter table")


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{what} must be a number, got {text!r}") from None


def cmd_plan(args) -> int:
    import torch

    from bnwd.nn.invariance import find_scale_invariant, load_factory
    from bnwd.nn.plan import plan

    lr, momentum = _float(args.lr, "--lr"), _float(args.momentum, "--momentum")
    betas = tuple(_floats(args.betas, "--betas"))
    if len(betas) != 2:
        raise ConfigError(f"--betas needs two numbers, got {args.betas!r}")
    if "=" in args.weight_decay:
        wd = {}
        for item in args.weight_decay.split(","):
            k, _, v = item.partition("=")
            wd[k.strip()] = _float(v, f"--weight-decay {k.strip()}")
    else:
        wd = _float(args.weight_decay, "--weight-decay")
    schedule = args.schedule
    if schedule == "points":
        if not args.points:
            raise ConfigError("--schedule points needs --points STEP:LR,... (e.g. 0:0.1,19500:0.01)")
        try:
            schedule = [(int(a), float(b)) for a, _, b in (x.partition(":") for x in args.points.split(","))]
        except ValueError:
            raise ConfigError(f"--points must look like 0:0.1,19500:0.01, got {args.points!r}") from None
    elif args.points:
        raise ConfigError("--points goes with --schedule points")
    try:
        shape = tuple(int(s) for s in args.input_shape.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape must be comma-separated integers, got {args.input_shape!r}") from None
    if args.figure is not None:
        parent = Path(args.figure).expanduser().resolve().parent
        if not parent.is_dir():
            raise ConfigError(f"--figure {args.figure!r}: folder {str(parent)!r} does not exist")
    kw = dict(
        optimizer=args.optimizer,
        lr=lr,
        momentum=momentum,
        betas=betas,
        weight_decay=wd,
        schedule=schedule,
        milestones=_floats(args.milestones, "--milestones"),
        gamma=_float(args.gamma, "--gamma"),
        warmup_epochs=_float(args.warmup_epochs, "--warmup-epochs"),
        min_lr=_float(args.min_lr, "--min-lr"),
        stages=_floats(args.stages, "--stages") if args.stages else None,
        steps_per_epoch=_float(args.steps_per_epoch, "--steps-per-epoch"),
        epochs=_float(args.epochs, "--epochs"),
        grad_scale=_float(args.grad_scale, "--grad-scale") if args.grad_scale else None,
        model_name=args.model,
    )
    if kw["grad_scale"] is not None and not kw["grad_scale"] >= 0:
        raise ConfigError(f"--grad-scale must be >= 0, got {args.grad_scale!r}")
    # everything that is not the model is checked before the (slow) invariance test
    from bnwd.nn.plan import check_optimizer, schedule_lrs

    check_optimizer(args.optimizer, momentum, betas, wd)
    schedule_lrs(
        schedule,
        lr,
        kw["steps_per_epoch"],
        kw["epochs"],
        kw["milestones"],
        kw["gamma"],
        kw["warmup_epochs"],
        kw["min_lr"],
        kw["stages"],
    )
    torch.set_num_threads(1)  # many tiny float64 forwards: threads only add contention
    torch.manual_seed(0)  # the same initial weights (the ||w0|| column) at every call
    model = load_factory(args.model)()
    x = torch.randn(*shape)
    try:
        invariant = find_scale_invariant(model, x)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's model on the given input shape
        raise ConfigError(f"the model's forward on an input of shape {list(shape)} failed: {one_line(e)}") from None
    p = plan(model, invariant=invariant, **kw)
    if args.figure is not None:
        p.figure(args.figure)
    if args.json:
        import json

        print(json.dumps(p.to_dict(), allow_nan=False))
    else:
        print(p.format(layers=not args.brief))
        if args.figure is not None:
            print(f"figure: {args.figure}")
    return 0


def cmd_config(args) -> int:
    from bnwd.run.config import PRESETS, describe, format_value

    if args.preset is not None and args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    presets = (args.preset,) if args.preset else PRESETS
    rows = describe(presets)
    head = ["key", "type", *presets, "meaning"]
    table = [[r["key"], r["type"], *(format_value(r["defaults"][p]) for p in presets), r["help"]] for r in rows]
    widths = [max(len(x[i]) for x in [head, *table]) for i in range(len(head) - 1)]
    for line in [head, *table]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)) + "  " + line[-1])
    print("\nSet any key with key=value after `bnwd train`, `bnwd reproduce` or `bnwd sweep --set`.")
    return 0


def cmd_bench(args) -> int:
    from bnwd.run.bench import bench

    bench(
        device=args.device,
        batch_size=args.batch_size,
        steps=args.steps,
        width=args.width,
        threads=args.threads,
        json_path=args.json_out,
        layouts=args.layouts,
        compile=args.compile,
        compile_mode=args.compile_mode,
        eval_batch_size=args.eval_batch_size,
        eval_batches=args.eval_batches,
        block=args.block,
        print_json=args.json,
        compile_probe_on=not args.no_compile_probe,
    )
    return 0


def _how_to_continue(cmd: str) -> str:
    """What to type after an interrupt: train needs --resume; reproduce and sweep resume by themselves."""
    if cmd == "train":
        return "continue with the same command plus --resume"
    if cmd in ("reproduce", "sweep"):
        return "run the same command again to continue (finished runs are kept, interrupted ones resume)"
    return "run the same command again"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {
            "train": cmd_train,
            "reproduce": cmd_reproduce,
            "sweep": cmd_sweep,
            "plot": cmd_plot,
            "audit": cmd_audit,
            "plan": cmd_plan,
            "bench": cmd_bench,
            "config": cmd_config,
        }[args.cmd](args)
    except BnwdError as e:
        where = getattr(e, "where", None)  # train.Interrupted: where it stopped, then what to type
        sys.stderr.write(f"bnwd: {where}; {_how_to_continue(args.cmd)}\n" if where else f"bnwd: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"bnwd: interrupted; {_how_to_continue(args.cmd)}\n")
        return 130
    except BrokenPipeError:  # e.g. `bnwd config | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
