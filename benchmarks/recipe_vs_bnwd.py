"""Side by side on this machine: the standard PyTorch CIFAR-10 recipe vs `bnwd bench`, training img/s.

    python benchmarks/recipe_vs_bnwd.py                              # synthetic images, ~3-4 min on 2 cores
    python benchmarks/recipe_vs_bnwd.py --data /work/shared/data --out docs/perf.md

Runs the two alternately, `--repeats` times each (3), each in its own subprocess, and prints
min / median / max img/s of each and the ratio of the medians (bnwd / recipe).

The standard recipe (as in the PyTorch CIFAR-10 tutorial and kuangliu/pytorch-cifar): a Dataset
of 32x32x3 uint8 images with per-image transforms RandomCrop(32, padding=4),
RandomHorizontalFlip(), ToTensor(), Normalize(mean, std); DataLoader(batch_size=128,
shuffle=True, num_workers=2); the same ResNet-20 (`bnwd.nn.models.resnet20(width=16)`, all convs nn.Conv2d, NCHW);
SGD(lr=0.1, momentum=0.9, weight_decay=2e-4) on all parameters; eager fp32; img/s = images /
wall time of `--recipe-steps` steps after `--recipe-warmup` (data loading included, as a
training loop sees it). With torchvision importable its transforms run on PIL images (as its
CIFAR10 dataset does); otherwise an exact hand-written equivalent on uint8 HWC numpy arrays
(same crop offsets and flip draws from torch's RNG, same arithmetic). The output says which.

bnwd: `python -m bnwd bench --json` (synthetic uint8 data on the device, batched augmentation,
the Monitor on), img/s = batch / mean step time of the with-monitor steps (so both sides are
wall-time throughputs); the median-step figure and the no-monitor one are shown too.

Data: `--data DIR` reads CIFAR-10 with `bnwd.run.data.load_cifar10` (in memory; torchvision's CIFAR10
would insist on the official md5); without it, 50,000 random uint8 images (throughput only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.append(str(ROOT / "src"))

# The usual CIFAR-10 per-channel statistics of the recipe (kuangliu/pytorch-cifar).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


# --------------------------------------------------------------------------- statistics


def summarize(xs: list[float]) -> dict:
    """n, min, median, max of a list of numbers (NaN entries for an empty list)."""
    if not xs:
        return {"n": 0, "min": math.nan, "median": math.nan, "max": math.nan}
    return {"n": len(xs), "min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def compare(recipe: list[float], bnwd: list[float]) -> dict:
    """Statistics of both lists and the ratio of the medians, bnwd / recipe."""
    r, b = summarize(recipe), summarize(bnwd)
    return {"recipe": r, "bnwd": b, "ratio": b["median"] / r["median"] if r["median"] else math.nan}


# --------------------------------------------------------------------------- the recipe (child)


class HandTransform:
    """RandomCrop(32, padding=4), RandomHorizontalFlip(), ToTensor(), Normalize(MEAN, STD) on a uint8 HWC array.

    Same draws as torchvision: crop row then column offset with `torch.randint(0, 9, (1,))`,
    flip when `torch.rand(1) < 0.5`; zero padding; ToTensor = CHW float32 / 255; Normalize =
    (x - mean) / std per channel.
    """

    def __init__(self, mean=MEAN, std=STD, pad: int = 4):
        import torch

        self.pad = pad
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img):
        import numpy as np
        import torch

        p, (h, w) = self.pad, img.shape[:2]
        padded = np.pad(img, ((p, p), (p, p), (0, 0)))
        i = int(torch.randint(0, 2 * p + 1, size=(1,)).item())
        j = int(torch.randint(0, 2 * p + 1, size=(1,)).item())
        img = padded[i : i + h, j : j + w]
        if torch.rand(1) < 0.5:
            img = img[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).to(torch.float32).div(255)
        return x.sub_(self.mean).div_(self.std)


def recipe_transform():
    """(transform, takes_pil, description): torchvision's four transforms if importable, else HandTransform."""
    try:
        import torchvision
        import torchvision.transforms as T

        t = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
        return t, True, f"torchvision {torchvision.__version__} transforms on PIL images"
    except Exception as e:  # ImportError, or a torchvision built for another torch failing at import
        why = f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
        return HandTransform(), False, f"hand-written numpy equivalent of the torchvision transforms ({why})"


class ArrayDataset:
    """uint8 HWC images + labels in memory; PIL images for torchvision's transforms, arrays otherwise."""

    def __init__(self, images, labels, transform, pil: bool):
        self.images, self.labels, self.transform, self.pil = images, labels, transform, pil

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i]
        if self.pil:
            from PIL import Image

            img = Image.fromarray(img)
        return self.transform(img), int(self.labels[i])


def load_images(data: str | None, n: int):
    """(images uint8 [N,32,32,3], labels int64 [N], description)."""
    import numpy as np

    if data:
        from bnwd.run.data import load_cifar10

        ds = load_cifar10(data, download=False)
        x = ds.train_x.permute(0, 2, 3, 1).contiguous().numpy()
        return x, ds.train_y.numpy(), f"CIFAR-10 train split from {Path(ds.source).name} ({len(x)} images)"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    return x, rng.integers(0, 10, size=n).astype(np.int64), f"{n} random uint8 32x32x3 images (synthetic)"


def run_recipe(args) -> dict:
    import torch
    import torch.nn as nn
    from torch.utils.data import DataLoader

    from bnwd.nn.models import PointwiseConv, resnet20

    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels, data_desc = load_images(args.data, args.synthetic_n)
    transform, pil, tdesc = recipe_transform()
    ds = ArrayDataset(images, labels, transform, pil)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    torch.manual_seed(0)
    model = resnet20(width=args.width)
    for m in model.modules():  # the user's plain nn.Conv2d for the 1x1 shortcuts too (bnwd's PointwiseConv
        if type(m) is PointwiseConv:  # exists for its channels_last path; same function)
            m.__class__ = torch.nn.Conv2d
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    crit = nn.CrossEntropyLoss()
    model.train()
    it = iter(loader)
    times, t0, t_prev, n_img = [], 0.0, 0.0, 0
    for step in range(args.recipe_warmup + args.recipe_steps):
        if step == args.recipe_warmup:
            t0 = t_prev = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        if step >= args.recipe_warmup:
            t = time.perf_counter()
            times.append(t - t_prev)
            t_prev = t
            n_img += len(y)
    elapsed = time.perf_counter() - t0
    return {
        "img_per_s": n_img / elapsed,
        "img_per_s_median_step": args.batch_size / statistics.median(times),
        "steps": args.recipe_steps,
        "warmup": args.recipe_warmup,
        "elapsed_s": elapsed,
        "transforms": tdesc,
        "data": data_desc,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# --------------------------------------------------------------------------- orchestration


def _child_env() -> dict:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _last_json(out: str) -> dict:
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    return json.loads(lines[-1])


def recipe_cmd(a) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-recipe"]
    cmd += ["--recipe-steps", str(a.recipe_steps), "--recipe-warmup", str(a.recipe_warmup)]
    cmd += ["--width", str(a.width), "--batch-size", str(a.batch_size), "--workers", str(a.workers)]
    cmd += ["--synthetic-n", str(a.synthetic_n), "--threads", str(a.threads)]
    return cmd + (["--data", a.data] if a.data else [])


def bnwd_cmd(a) -> list[str]:
    cmd = [sys.executable, "-m", "bnwd", "bench", "--json", "--device", "cpu", "--compile", "off"]
    cmd += ["--width", str(a.width), "--batch-size", str(a.batch_size), "--steps", str(a.bnwd_steps)]
    cmd += ["--eval-batches", "2", "--threads", str(a.threads)]
    return cmd


def run_child(cmd: list[str], timeout: float) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), cwd=ROOT, timeout=timeout)
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{shlex.join(cmd)} exited {p.returncode}:\n{tail}")
    return _last_json(p.stdout)


def bnwd_numbers(res: dict) -> dict:
    p = res["configs"][res["primary"]]
    return {
        "img_per_s": p["img_per_s_with_monitor_mean"],
        "img_per_s_median_step": res["train_img_per_s"],
        "img_per_s_no_monitor": res["train_img_per_s_no_monitor"],
        "monitor_overhead": res["monitor_overhead"],
        "layout": res["primary"],
    }


def fmt_stats(s: dict) -> str:
    return f"{s['min']:.0f} / {s['median']:.0f} / {s['max']:.0f}"


def markdown(result: dict) -> str:
    c, meta = result["comparison"], result["meta"]
    nm = summarize([r["img_per_s_no_monitor"] for r in result["bnwd_runs"]])
    rs = summarize([r["img_per_s_median_step"] for r in result["recipe_runs"]])
    bs = summarize([r["img_per_s_median_step"] for r in result["bnwd_runs"]])
    ov = summarize([r["monitor_overhead"] for r in result["bnwd_runs"]])
    lines = [
        "# Training throughput: the standard PyTorch recipe vs bnwd",
        "",
        f"Produced by `{meta['command']}` on {meta['date']}.",
        "",
        f"- CPU: {meta['cpu']} ({meta['cores']} cores visible), torch {meta['torch']}, "
        f"{meta['threads']} torch threads, Python {meta['python']}",
        f"- ResNet-20 width {meta['width']}, batch {meta['batch_size']}, eager fp32, SGD momentum 0.9, L2 2e-4",
        f"- recipe: {meta['recipe_data']}; transforms: {meta['recipe_transforms']}; "
        f"DataLoader num_workers={meta['workers']}, shuffle=True; {meta['recipe_steps']} timed steps after "
        f"{meta['recipe_warmup']}",
        f"- bnwd: `bnwd bench --json`, synthetic uint8 data on the device, batched augmentation, Monitor on, "
        f"{meta['bnwd_steps']} timed steps with and {meta['bnwd_steps']} without the monitor, interleaved",
        f"- {meta['repeats']} runs of each, alternating, each in its own process",
        "",
        "| | img/s min / median / max | median-step img/s min / median / max |",
        "| --- | --- | --- |",
        f"| standard recipe | {fmt_stats(c['recipe'])} | {fmt_stats(rs)} |",
        f"| bnwd (monitor on) | {fmt_stats(c['bnwd'])} | {fmt_stats(bs)} |",
        f"| bnwd (monitor off) | | {fmt_stats(nm)} |",
        "",
        f"Ratio of medians, bnwd / recipe: **{c['ratio']:.2f}x** (img/s = images / wall time of the timed steps).",
        "",
        f"Monitor overhead (bench: with / without the Monitor, interleaved medians) min / median / max: "
        f"{ov['min']:+.1%} / {ov['median']:+.1%} / {ov['max']:+.1%}; bnwd's layout: "
        f"{', '.join(sorted({r.get('layout', '?') for r in result['bnwd_runs']}))}.",
        "",
        "Timings on a shared machine are noisy: compare the ratio, measured side by side, not absolute numbers "
        "across runs.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="CIFAR-10 folder for the recipe (default: synthetic images)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each (alternating)")
    ap.add_argument("--recipe-steps", type=int, default=80, help="timed recipe steps per run")
    ap.add_argument("--recipe-warmup", type=int, default=10, help="untimed recipe steps first (workers start)")
    ap.add_argument("--bnwd-steps", type=int, default=40, help="`bnwd bench --steps` (each of with/without monitor)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2, help="recipe DataLoader workers")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in both (0 = torch's default)")
    ap.add_argument("--synthetic-n", type=int, default=50000, help="synthetic images when no --data")
    ap.add_argument("--out", default=None, help="also write a markdown table here (e.g. docs/perf.md)")
    ap.add_argument("--json-out", default=None, help="also write all numbers as JSON here")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per child run")
    ap.add_argument("--child-recipe", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.child_recipe:
        print(json.dumps(run_recipe(a)), flush=True)
        return 0
    import torch

    from bnwd.run.bench import cpu_model

    recipe_runs, bnwd_runs = [], []
    for i in range(a.repeats):
        for kind, cmd in (("recipe", recipe_cmd(a)), ("bnwd", bnwd_cmd(a))):
            t = time.perf_counter()
            print(f"[{i + 1}/{a.repeats}] {kind}: {shlex.join(cmd[1:])} ...", file=sys.stderr, flush=True)
            try:
                res = run_child(cmd, a.timeout)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                print(f"recipe_vs_bnwd: {e}", file=sys.stderr)
                return 1
            if kind == "recipe":
                recipe_runs.append(res)
            else:
                bnwd_runs.append({**bnwd_numbers(res), "threads": res["threads"]})
            last = (recipe_runs if kind == "recipe" else bnwd_runs)[-1]
            print(
                f"    {kind}: {last['img_per_s']:.0f} img/s ({time.perf_counter() - t:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    c = compare([r["img_per_s"] for r in recipe_runs], [r["img_per_s"] for r in bnwd_runs])
    meta = {
        "command": shlex.join(["python", "benchmarks/recipe_vs_bnwd.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": bnwd_runs[0]["threads"],
        "width": a.width,
        "batch_size": a.batch_size,
        "workers": a.workers,
        "repeats": a.repeats,
        "recipe_steps": a.recipe_steps,
        "recipe_warmup": a.recipe_warmup,
        "bnwd_steps": a.bnwd_steps,
        "recipe_transforms": recipe_runs[0]["transforms"],
        "recipe_data": recipe_runs[0]["data"],
    }
    result = {"meta": meta, "comparison": c, "recipe_runs": recipe_runs, "bnwd_runs": bnwd_runs}
    print(f"recipe transforms: {meta['recipe_transforms']}; data: {meta['recipe_data']}")
    print(f"{'':>18} img/s min / median / max")
    print(f"{'standard recipe':>18} {fmt_stats(c['recipe'])}")
    print(f"{'bnwd (monitor on)':>18} {fmt_stats(c['bnwd'])}")
    print(f"ratio of medians bnwd / recipe: {c['ratio']:.2f}x")
    ov = summarize([r["monitor_overhead"] for r in bnwd_runs])
    print(f"Monitor overhead min / median / max: {ov['min']:+.1%} / {ov['median']:+.1%} / {ov['max']:+.1%}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(markdown(result))
        print(f"wrote {a.out}")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
