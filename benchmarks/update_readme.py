"""Fill the generated blocks of the README and docs/ from files that bnwd wrote, so no number is typed by hand.

    python benchmarks/update_readme.py            # rewrite the blocks in place
    python benchmarks/update_readme.py --check    # exit 1 if a block is out of date

Blocks (between `<!-- NAME:start -->` and `<!-- NAME:end -->`), by file:
  README.md            results   docs/cpu/summary.json and docs/cpu/claims.json (written by
                                 `bnwd plot runs/cpu/runs --out docs/cpu`)
  docs/theory.md       dimless   the dimensionless-numbers table of docs/cpu/report.md
  docs/performance.md  perf      docs/perf.md (`python benchmarks/recipe_vs_bnwd.py --data ../shared/data
                                 --out docs/perf.md --json-out docs/perf.json`)
                       ceiling   docs/cpu_ceiling.txt (`python benchmarks/cpu_ceiling.py --perf-json docs/perf.json`)
                       gpu       docs/gpu/*.json (see docs/gpu/README.md)
  docs/sweep/README.md sweep     docs/sweep/summary.json and sweep.json (see docs/sweep/README.md)
"""

import argparse
import functools
import json
import math
import re
import sys
from pathlib import Path

from bnwd.analysis.stats import seeds_text

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
    report = (CPU / "report.md").read_text()
    seeds = {v: st.get("seeds", []) for v, st in summ["variants"].items()}
    lines = [
        "| run (mean ± std over seeds) | seeds | final test acc (%) | final train loss | test − train loss | final conv sqsum |",
        "|---|---|---|---|---|---|",
    ]
    for v, st in summ["variants"].items():
        lines.append(
            f"| `{v}` | {', '.join(map(str, seeds[v]))} | {_pm(st, 'final_test_acc', True)} | "
            f"{_pm(st, 'final_train_loss')} | {_pm(st, 'gap', fmt='{:.3f}')} | {_pm(st, 'final_conv_sqsum')} |"
        )
    m = re.search(r"\| variant \| seeds \| own \|.*\n(\|.*\|\n)+", report)
    if m:
        lines += [
            "",
            "Stage-1 test accuracy (%), the same weights with four sets of BN statistics (epoch 0.5 to the lr drop):",
            "",
            m.group(0).rstrip("\n"),
        ]
    lines += ["", "| claim (see the report) | kind | verdict | estimate, 95% CI |", "|---|---|---|---|"]

    def f(x):
        return "∞" if x is None or (isinstance(x, float) and math.isinf(x)) else f"{x:.3g}"

    for c in sorted(claims, key=lambda c: c.get("kind") != "evidence"):
        est = ""
        if "estimate" in c:
            u = c["unit"]
            est = f"{f(c['estimate'])}{u} [{f(c['ci'][0])}, {f(c['ci'][1])}]"
            if c.get("indicative"):
                est += " (one seed)"
            if c.get("seeds_needed"):
                lo, hi = c.get("seeds_needed_range") or (None, None)
                est += "; " + seeds_text(c["seeds_needed"], lo, hi)
        else:
            est = "one seed" if "one seed" in c.get("reason", "") else c.get("reason", "")
        lines.append(f"| `{c['id']}` | {c.get('kind', '')} | **{c['verdict']}** | {est} |")
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


ARTICLE_IMAGES = 4 * 150 * 50_000  # the article's four runs of 150 epochs


def gpu() -> str:
    gdir = ROOT / "docs" / "gpu"
    bench = json.loads((gdir / "bench.json").read_text())
    lines = [
        f"`bnwd bench` on one {bench['device_name']}, torch {bench['torch']}, ResNet-20 width {bench['width']}, "
        f"batch {bench['batch_size']}, synthetic data on the GPU, steps with and without the Monitor interleaved:",
        "",
        "| configuration | img/s, Monitor off | img/s, Monitor on | Monitor overhead | compiled / eager | eval img/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in bench["configs"].items():
        sp = r.get("speedup_vs_eager")
        lines.append(
            f"| {name} | {r['img_per_s']:,.0f} | {r['img_per_s_with_monitor']:,.0f} | "
            f"+{100 * r['monitor_overhead']:.1f}% | {f'{sp:.2f}x' if sp else ''} | {r['eval_img_per_s']:,.0f} |"
        )
    lines += ["", "`bnwd train` processes sharing the GPU, eager, Monitor on (`benchmarks/gpu_check.sh`):", ""]
    for f, what in (("shared_bf16.json", "bf16 + channels_last"), ("shared_fp32.json", "fp32")):
        runs = [r for r in json.loads((gdir / f).read_text())["runs"] if "img_per_s" in r]
        ips = [r["img_per_s"] for r in runs]
        lines.append(
            f"- the article's {len(runs)} runs, 2 epochs each, {what}: {min(ips):,.0f}–{max(ips):,.0f} img/s per run, "
            f"{sum(ips):,.0f} together (`{f}`)"
        )
    p = json.loads((gdir / "parallel_fp32.json").read_text())
    lines.append(
        f"- {p['runs']} baseline runs of 1 epoch, fp32: {min(p['img_per_s_each']):,.0f}–"
        f"{max(p['img_per_s_each']):,.0f} img/s per run, {p['aggregate_img_per_s']:,.0f} together (`parallel_fp32.json`)"
    )
    shared = sum(r["img_per_s"] for r in json.loads((gdir / "shared_bf16.json").read_text())["runs"])
    lines += [
        "",
        f"Estimate, not a measurement: the article's 4 × 150 epochs ({ARTICLE_IMAGES:,} training images) at the "
        f"4 shared runs' {shared:,.0f} img/s take {ARTICLE_IMAGES / shared / 60:.0f} min of training steps.",
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


# file -> {block name: function writing its body}
BLOCKS = {
    "README.md": {"results": results},
    "docs/theory.md": {"dimless": dimless},
    "docs/performance.md": {
        "perf": perf,
        "ceiling": functools.partial(_text, "cpu_ceiling.txt"),
        "gpu": gpu,
    },
    "docs/sweep/README.md": {"sweep": sweep},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that the files are up to date")
    a = ap.parse_args()
    stale = []
    for rel, blocks in BLOCKS.items():
        path = ROOT / rel
        old = path.read_text()
        new = old
        for name, fn in blocks.items():
            pat = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
            if not pat.search(new):
                raise SystemExit(f"{rel} has no block {name}")
            body = fn()
            new = pat.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), new)
        if new != old:
            stale.append(rel)
            if not a.check:
                path.write_text(new)
    if a.check and stale:
        print(f"out of date: {', '.join(stale)}; run python benchmarks/update_readme.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
