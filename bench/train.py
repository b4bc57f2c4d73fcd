"""Training throughput of sod's engine against a plain PyTorch loop over the same model, data and batch size.

The peer is the loop anyone would write first::

    for images, targets in loader:
        loss = sum(model(images, targets).values())
        optimizer.zero_grad(); loss.backward(); optimizer.step()

sod's ``engine.train_one_epoch`` adds the warm-up/cosine scheduler step, gradient clipping, the
non-finite-loss check, loss bookkeeping and the progress bar; this benchmark shows what they cost
(target: ratio ≥ 0.95). Both run the detector ``params.yaml`` describes on the prepared embedded data
(built into a temp dir when ``--data`` is not given), alternating so that machine noise hits both.
Writes ``bench/results/train.json``.

    python bench/train.py --iters 6 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import add_results_arg, machine_info, row, write_result  # noqa: E402
from sod import engine  # noqa: E402
from sod.config import load_params  # noqa: E402
from sod.data.dataset import CocoDetectionDataset, collate_fn, train_transforms  # noqa: E402
from sod.models.detector import build_detector  # noqa: E402


def plain_loop(model, optimizer, batches) -> None:
    model.train()
    for images, targets in batches:
        loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def sod_loop(model, optimizer, batches, scheduler) -> None:
    engine.train_one_epoch(
        model, optimizer, batches, torch.device("cpu"), epoch=0, scheduler=scheduler, grad_clip=10.0, progress=True
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a prepared train.json (default: build a small embedded set)")
    ap.add_argument("--iters", type=int, default=6, help="training steps per timed run (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each loop, alternated (default: %(default)s)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    add_results_arg(ap)
    args = ap.parse_args()

    params = load_params(ROOT / "params.yaml", args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        train_json = args.data
        if train_json is None:
            from sod.stages import prepare

            small = load_params(ROOT / "params.yaml", ["data.embedded.images=40", *args.overrides])
            r = Path(tmp)
            prepare.run(small, r / "prepared", r / "p.json", r / "s.csv", r / "s.png", progress=False)
            train_json = r / "prepared" / "train.json"
        dataset = CocoDetectionDataset(train_json, transforms=train_transforms(params.augment.online))
        bs = params.train.batch_size
        loader = DataLoader(dataset, batch_size=bs, shuffle=True, collate_fn=collate_fn, drop_last=True)
        # The same pre-loaded batches for both loops: the comparison is about the training step machinery.
        batches = []
        while len(batches) < args.iters:
            batches.extend(list(loader))
        batches = batches[: args.iters]

        torch.manual_seed(0)
        model = build_detector(params.detector, dataset.num_classes, None)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, engine.warmup_cosine(10_000, 10))
        plain_loop(model, opt, batches[:1])  # warm-up: allocator, one-time kernels

        times: dict[str, list[float]] = {"plain": [], "sod": []}
        for _ in range(args.repeats):
            for name in ("plain", "sod"):
                t0 = time.perf_counter()
                if name == "plain":
                    plain_loop(model, opt, batches)
                else:
                    sod_loop(model, opt, batches, sched)
                times[name].append(time.perf_counter() - t0)

    n = args.iters * bs
    ips = {k: n / statistics.median(v) for k, v in times.items()}
    d = params.detector
    print(f"model: {d.arch} {d.backbone} {d.neck} levels {d.levels} fpn {d.fpn_channels}, {d.min_size} px, batch {bs}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.iters} steps x {args.repeats} runs")
    print(f"{'loop':<28}{'images/s':>10}")
    print(f"{'plain PyTorch loop (peer)':<28}{ips['plain']:>10.2f}")
    print(f"{'sod engine.train_one_epoch':<28}{ips['sod']:>10.2f}")
    ratio = ips["sod"] / ips["plain"]
    print(f"ratio sod / peer: {ratio:.3f} (target >= 0.95)")
    write_result(
        "train",
        [row("training images/s", "images/s", ips["sod"], ips["plain"], target="≥ 0.95", met=ratio >= 0.95)],
        sod="sod engine.train_one_epoch (scheduler step, gradient clipping, non-finite check, progress)",
        peer="plain PyTorch loop, same model, optimizer and pre-loaded batches",
        target="ratio ≥ 0.95",
        machine=machine_info("cpu"),
        results_dir=args.results_dir,
        details={
            "model": f"{d.arch} {d.backbone} {d.neck} levels {d.levels} fpn {d.fpn_channels}, {d.min_size} px",
            "batch_size": bs,
            "iters": args.iters,
            "repeats": args.repeats,
            "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        },
    )


if __name__ == "__main__":
    main()
