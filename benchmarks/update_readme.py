"""Fill the README's generated blocks from files that scripts wrote, so no number is typed by hand.

    python benchmarks/update_readme.py            # rewrite README.md in place
    python benchmarks/update_readme.py --check    # exit 1 if README.md is out of date

Blocks (between `<!-- NAME:start -->` and `<!-- NAME:end -->`):
  results   from docs/cpu/summary.json and docs/cpu/claims.json (written by
            `bnwd plot runs/cpu/runs --out docs/cpu`, see docs/cpu/README.md)
  dimless   the dimensionless-numbers table of docs/cpu/report.md
  perf      docs/perf.md (written by `python benchmarks/recipe_vs_bnwd.py --out docs/perf.md`)
  ceiling   docs/cpu_ceiling.txt (the output of `python benchmarks/cpu_ceiling.py`)
  before_after  docs/before_after.txt (the output of `python benchmarks/before_after.py`)
  walls     docs/cpu_preset_wall.txt (the output of `python benchmarks/run_walls.py runs/cpu_waves`)
  schedules docs/parallel_cpu.txt (the output of `python benchmarks/schedules.py`)
  before_after_reproduce  docs/before_after_reproduce.txt (`python benchmarks/before_after.py --reproduce`)
  before_after_follow  docs/before_after_follow.txt (the same, lr_scaled beside its baseline or after it)
  walls_follow  docs/cpu_follow_wall.txt (`python benchmarks/run_walls.py runs/cpu_follow`)
  budget    docs/preset_budget.txt (the output of `python benchmarks/preset_budget.py`)
  gpu       docs/gpu/call*/ (written on a lent GPU by `benchmarks/gpu_check.sh`, see docs/gpu/README.md)
  sweep     docs/sweep/summary.json and sweep.json (written by `bnwd sweep ... --out runs/sweep_cpu`,
            copied to docs/sweep by `bnwd sweep --plot`; see docs/sweep/README.md)
"""

import argparse
import functools
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "docs" / "cpu"


def _pm(st: dict, key: str, pct: bool = False, fmt: str = "{:.3g}") -> str:
    m, s = st[key]["mean"], st[key]["std"]
    if m is None:
        return "–"
    if pct:
        return f"{100 * m:.2f} ± {100 * s:.2f}"
    return f"{fmt.format(m)} ± {fmt.format(s)}"


def results() -> str:
    summ = json.loads((CPU / "summary.json").read_text())
    claims = json.loads((CPU / "claims.json").read_text())
    seeds = sorted({r["seed"] for r in summ["runs"]})
    walls = [r["wall_s"] for r in summ["runs"] if isinstance(r.get("wall_s"), (int, float))]
    lines = [
        f"Seeds {seeds} of the `cpu` preset; wall time per training run {min(walls) / 60:.1f}–{max(walls) / 60:.1f} min "
        "(`lr_scaled_bn098` is evaluated from `lr_scaled`'s training and has no wall time of its own).",
        "",
        "| run (mean ± std over seeds) | seeds | final test acc (%) | final train loss | test − train loss | final conv sqsum |",
        "|---|---|---|---|---|---|",
    ]
    for v, st in summ["variants"].items():
        lines.append(
            f"| `{v}` | {st['n']} | {_pm(st, 'final_test_acc', True)} | {_pm(st, 'final_train_loss')} | "
            f"{_pm(st, 'gap', fmt='{:.3f}')} | {_pm(st, 'final_conv_sqsum')} |"
        )
    lines += ["", "Each claim of the article, with its 95% confidence interval (`docs/cpu/claims.json`):", ""]

    def f(x):
        return "unbounded" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.3g}"

    for c in claims:
        if "estimate" in c:
            s = f"- **{c['verdict']}**: {c['claim']}. {f(c['estimate'])}{c['unit']}, CI [{f(c['ci'][0])}, {f(c['ci'][1])}]{c['unit']}"
            if c.get("seeds_needed"):
                s += f"; ~{c['seeds_needed']} seeds per variant would decide it"
            elif c.get("reason"):
                s += f"; {c['reason']}"
        else:
            s = f"- **{c['verdict']}**: {c['claim']} ({c.get('reason', '')})"
        lines.append(s)
    return "\n".join(lines)


def dimless() -> str:
    text = (CPU / "report.md").read_text()
    m = re.search(r"\| number \| article \| this run \|\n(\|.*\|\n)+", text)
    if not m:
        raise SystemExit("docs/cpu/report.md has no dimensionless table")
    return m.group(0).rstrip("\n")


def perf() -> str:
    lines = (ROOT / "docs" / "perf.md").read_text().strip().splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("# ") else lines).strip()


def _text(name: str) -> str:
    """A script's saved stdout, its first line (the command) as prose, the rest verbatim."""
    lines = (ROOT / "docs" / name).read_text().strip().splitlines()
    return f"Printed by {lines[0]}:\n\n```text\n" + "\n".join(lines[1:]) + "\n```"


# Blocks that are one script's saved stdout, verbatim (`_text`).
TEXT_BLOCKS = {
    "ceiling": "cpu_ceiling.txt",
    "before_after": "before_after.txt",
    "walls": "cpu_preset_wall.txt",
    "schedules": "parallel_cpu.txt",
    "before_after_reproduce": "before_after_reproduce.txt",
    "before_after_follow": "before_after_follow.txt",
    "walls_follow": "cpu_follow_wall.txt",
    "budget": "preset_budget.txt",
}


ARTICLE_IMAGES = 4 * 150 * 50_000  # the article's four runs of 150 epochs


def gpu() -> str:
    gdir = ROOT / "docs" / "gpu"
    env = (gdir / "call1" / "env.txt").read_text().splitlines()
    lines = [
        f"One {next((x.split(',')[0] for x in env if 'H200' in x or 'H100' in x), 'GPU')}, "
        f"{next((x.split('|')[1].strip() for x in env if x.startswith('python')), '')}, ResNet-20 width 16, "
        "batch 128, synthetic data on the GPU; `bnwd bench` interleaves steps with and without the Monitor. "
        "The Monitor changed between calls (docs/gpu/README.md), so its overhead is comparable only within a call.",
        "",
        "| call | configuration | img/s, Monitor off | img/s, Monitor on | Monitor overhead | compiled / eager |",
        "|---|---|---|---|---|---|",
    ]
    for call in sorted(p.name for p in gdir.glob("call*")):
        seen = set()
        for f in ("bench_eager.json", "bench_compile.json"):
            path = gdir / call / f
            if not path.exists():
                continue
            for name, r in json.loads(path.read_text())["configs"].items():
                if name in seen:
                    continue
                seen.add(name)
                sp = r.get("speedup_vs_eager")
                lines.append(
                    f"| {call} | {name} | {r['img_per_s']:,.0f} | {r['img_per_s_with_monitor']:,.0f} | "
                    f"+{100 * r['monitor_overhead']:.1f}% | {f'{sp:.2f}x' if sp else ''} |"
                )
    lines += ["", "Runs sharing the GPU (`bnwd train` processes started together, each its own loop):", ""]
    for call in sorted(p.name for p in gdir.glob("call*")):
        tr = gdir / call / "train_runs.json"
        if tr.exists():
            runs = [r for r in json.loads(tr.read_text())["runs"] if "img_per_s" in r]
            if runs:
                ips = [r["img_per_s"] for r in runs]
                lines.append(
                    f"- {call}: the 4 `blog` runs, 2 epochs each, eager, {min(ips):,.0f}–{max(ips):,.0f} img/s per run, "
                    f"{sum(ips):,.0f} together"
                )
        par = gdir / call / "parallel.json"
        if par.exists():
            p = json.loads(par.read_text())
            if p.get("aggregate_img_per_s"):
                lines.append(
                    f"- {call}: {p['runs']} baseline runs of 1 epoch, eager fp32, "
                    f"{min(p['img_per_s_each']):,.0f}–{max(p['img_per_s_each']):,.0f} img/s per run, "
                    f"{p['aggregate_img_per_s']:,.0f} together"
                )
    best = max(
        (
            (r["img_per_s_with_monitor"], call, name)
            for call in (p.name for p in gdir.glob("call*"))
            for f in ("bench_eager.json", "bench_compile.json")
            if (gdir / call / f).exists()
            for name, r in json.loads((gdir / call / f).read_text())["configs"].items()
        )
    )
    lines += [
        "",
        f"PROJECTION, not a measurement: the article's 4 x 150 epochs ({ARTICLE_IMAGES:,} training images) at the "
        f"fastest single-process rate measured with the Monitor on ({best[0]:,.0f} img/s, {best[1]} {best[2]}), one run "
        f"after another, training steps only: {ARTICLE_IMAGES / best[0] / 60:.0f} min. The goal is 10 min; compiled "
        "runs sharing the GPU were not measured.",
    ]
    return "\n".join(lines)


def sweep() -> str:
    d = ROOT / "docs" / "sweep"
    summ = json.loads((d / "summary.json").read_text())
    rec = json.loads((d / "sweep.json").read_text())
    runs = summ["runs"]
    done = [r for r in runs if r["status"] == "done"]
    walls = [r["wall_s"] for r in done if r.get("wall_s")]
    grid = ", ".join(f"`{k}` ∈ {{{', '.join(f'{v:g}' for v in vs)}}}" for k, vs in rec["grid"].items())
    fixed = " ".join(f"{k}={v}" for k, v in rec["overrides"].items())
    keys = list(rec["grid"])
    lines = [
        f"Grid {grid}; seeds {rec['seeds']}; `{rec['variant']}` runs of the `{rec['preset']}` preset with `{fixed}`. "
        f"{len(done)} of {len(runs)} runs finished; their training loops took {sum(walls) / 60:.0f} min in all "
        f"({min(walls) / 60:.1f}–{max(walls) / 60:.1f} min each, one process with 2 threads on the 2-core machine, "
        "sharing it with other work).",
        "",
        "| " + " | ".join(keys) + " | lr·wd | seeds | final test acc (%) | rel step measured / predicted | "
        "conv sum ‖w‖² measured / predicted |",
        "|" + "---|" * (len(keys) + 5),
    ]
    for c in summ["cells"]:
        if not c["seeds_done"]:
            continue
        acc = f"{100 * c['final_test_acc_mean']:.1f}" + (
            f" ± {100 * c['final_test_acc_std']:.1f}" if c["seeds_done"] > 1 else ""
        )
        rel = f"{c['rel_step_measured_mean']:.4f} / {c['rel_step_predicted_mean']:.4f}"
        sq = f"{c['conv_sqsum_measured_mean']:.1f} / {c['conv_sqsum_predicted_mean']:.1f}"
        prod = c.get("lr", 0) * c.get("conv_weight_decay", 0)
        lines.append(
            "| " + " | ".join(f"{c[k]:g}" for k in keys) + f" | {prod:.2g} | {c['seeds_done']} | {acc} | {rel} | {sq} |"
        )
    lines.append("")
    for name, what in (("rel_step", "relative step"), ("conv_sqsum", "conv sum of squared norms")):
        t = summ.get("theory", {}).get(name, {})
        if "ratio" in t:
            lines.append(
                f"- {what}, measured / predicted over {t['cells']} cells: **{t['ratio']:.3f}**, 95% CI "
                f"[{t['ci'][0]:.3f}, {t['ci'][1]:.3f}]: **{t['verdict']}** (band ±{100 * t['band']:.0f}%)"
            )
    il = summ.get("theory", {}).get("intrinsic_lr", {})
    if "p" in il:
        lines.append(
            f"- final test accuracy: lr·wd alone explains {100 * il['eta2_product']:.0f}% of its variance over the "
            f"{il['runs']} runs, the {il['cells']} cells {100 * il['eta2_cell']:.0f}%; between cells of equal lr·wd, "
            f"F({il['df'][0]}, {il['df'][1]}) = {il['F']:.2f}, p = {il['p']:.2f}: **{il['verdict']}** at these seeds"
        )
    return "\n".join(lines)


BLOCKS = {
    "results": results,
    "dimless": dimless,
    "perf": perf,
    **{name: functools.partial(_text, file) for name, file in TEXT_BLOCKS.items()},
    "gpu": gpu,
    "sweep": sweep,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    a = ap.parse_args()
    path = ROOT / "README.md"
    old = path.read_text()
    new = old
    for name, fn in BLOCKS.items():
        pat = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pat.search(new):
            continue
        try:
            body = fn()
        except FileNotFoundError as e:
            print(f"skipping block {name}: {e.filename} missing", file=sys.stderr)
            continue
        new = pat.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), new)
    if a.check:
        if new != old:
            print("README.md is out of date: run python benchmarks/update_readme.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
