"""Is the data path ever the bottleneck? Images made by augmentation per CPU core vs sod's detector training.

Builds a small embedded dataset (``sod prepare`` with the params of ``params.yaml`` except the image count) in a
temp dir, then measures, on one thread:

  * the ``augment`` stage with those params (copy-paste + oversampling, PNG writes and preview included),
    counting only the images copy-paste produced (``copy_paste.images_augmented``): not the untouched
    originals that ``mode: add`` keeps, nor oversampling's repeats, which reference existing files;
  * the online path: ``CocoDetectionDataset`` + ``train_transforms(augment.online)`` over the augmented file
    (decode, flip, scale jitter, photometric, to float): every sample is a new random augmentation.

The peer, on ``--threads`` threads (default: every core, as ``make run`` gives the detector), is what the
data must feed: sod's own detector training step under the same params — the detector of ``detector.*``
with the anchors the ``anchors`` stage fits to the augmented boxes, batches of ``train.batch_size``, the
optimizer, warm-up/cosine schedule and gradient clipping of ``train.*``, through ``engine.train_one_epoch``,
over pre-loaded batches (data loading is what the first two rows measure) after one warm-up step.
Target: ratio ≥ 10× (one data core outruns the whole detector step). Writes ``bench/results/augment.json``.

    .venv/bin/python bench/augment.py --images 40 --steps 3
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import add_results_arg, machine_info, row, write_result  # noqa: E402
from sod import engine  # noqa: E402
from sod.config import Params, load_params  # noqa: E402
from sod.data.copy_paste import torch_threads  # noqa: E402
from sod.data.dataset import CocoDetectionDataset, collate_fn, train_transforms  # noqa: E402
from sod.io import read_json  # noqa: E402
from sod.models.detector import build_detector  # noqa: E402
from sod.stages import anchors, augment, prepare  # noqa: E402

TARGET = 10.0


def bench_stage(params: Params, train_json: Path, work: Path) -> tuple[float, dict[str, Any]]:
    """Seconds and report of one ``augment`` run (single thread)."""
    with torch_threads(1):
        start = time.perf_counter()
        rep = augment.run(params, train_json, work / "augmented", work / "augment.json", work / "p.png", False)
        return time.perf_counter() - start, rep


def bench_online(params: Params, json_path: Path, n: int) -> tuple[float, int]:
    """Seconds to load and randomly transform ``n`` samples (single thread)."""
    ds = CocoDetectionDataset(json_path, transforms=train_transforms(params.augment.online))
    with torch_threads(1):
        torch.manual_seed(0)
        ds[0]  # warm-up: first-call dispatch
        start = time.perf_counter()
        for i in range(n):
            ds[i % len(ds)]
        return time.perf_counter() - start, n


def bench_detector(params: Params, json_path: Path, anchors_json: Path, steps: int, threads: int) -> tuple[float, int]:
    """Seconds and images of ``steps`` training steps of sod's detector under ``params`` (after one warm-up)."""
    tcfg = params.train
    if params.detector.input_upscale == "sr":
        raise SystemExit("bench/augment.py: detector.input_upscale sr needs models/sr.pt; time bicubic or none")
    ds = CocoDetectionDataset(json_path, transforms=train_transforms(params.augment.online))
    bs = tcfg.batch_size
    torch.manual_seed(0)
    batches = [collate_fn([ds[(s * bs + j) % len(ds)] for j in range(bs)]) for s in range(steps + 1)]
    with torch_threads(threads):
        with engine.seeded(tcfg.seed):
            model = build_detector(params.detector, ds.num_classes, read_json(anchors_json))
        trainable = [p for p in model.parameters() if p.requires_grad]
        # The optimizer train_detector builds from train.* (AdamW, or SGD with momentum).
        if tcfg.optimizer == "sgd":
            opt = torch.optim.SGD(trainable, lr=tcfg.lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay)
        else:
            opt = torch.optim.AdamW(trainable, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, engine.warmup_cosine(10_000, tcfg.warmup_iters))
        cpu = torch.device("cpu")
        clip = tcfg.grad_clip or None
        engine.train_one_epoch(model, opt, batches[:1], cpu, epoch=0, scheduler=sched, grad_clip=clip, progress=False)
        start = time.perf_counter()
        engine.train_one_epoch(model, opt, batches[1:], cpu, epoch=1, scheduler=sched, grad_clip=clip, progress=False)
        return time.perf_counter() - start, steps * bs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=40, help="embedded scenes to build (default: %(default)s)")
    ap.add_argument("--online-samples", type=int, default=200, help="samples through the online path")
    ap.add_argument("--steps", type=int, default=3, help="timed detector train steps (after one warm-up)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for the detector (peer)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param of params.yaml for both sides, e.g. --set train.batch_size=4")  # fmt: skip
    add_results_arg(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    params = load_params(ROOT / "params.yaml", [*args.overrides, f"data.embedded.images={args.images}"])
    with tempfile.TemporaryDirectory(prefix="sod-bench-") as tmp:
        work = Path(tmp)
        prepare.run(params, work / "prepared", work / "prep.json", work / "s.csv", work / "s.png", progress=False)
        t_stage, rep = bench_stage(params, work / "prepared" / "train.json", work)
        aug = work / "augmented" / "train.json"
        t_online, n_online = bench_online(params, aug, args.online_samples)
        anchors.run(params, aug, work / "anchors.json", work / "anchors_report.json", work / "anchors.png")
        t_det, n_det = bench_detector(params, aug, work / "anchors.json", args.steps, args.threads)

    n_made = rep["copy_paste"]["images_augmented"]
    det = n_det / t_det
    made, online = n_made / t_stage, n_online / t_online
    d, t = params.detector, params.train
    which = f"params.yaml with {', '.join(args.overrides)}" if args.overrides else "params.yaml"
    peer = (
        f"sod's detector training step ({which}): {d.arch} {d.backbone} {d.neck}, {d.min_size} px, "
        f"batch {t.batch_size}, {t.optimizer}, {args.threads} threads"
    )
    target = f"≥ {TARGET:g}×"
    rows = [
        row("augment stage: images made by copy-paste, 1 core", "images/s", made, det,
            target=target, met=made / det >= TARGET),
        row("online Dataset + random transforms, 1 core", "images/s", online, det,
            target=target, met=online / det >= TARGET),
    ]  # fmt: skip
    print(f"peer: {peer}: {det:.2f} train images/s ({n_det} images in {t_det:.1f} s)")
    print(f"{'data path (1 thread)':<52}{'images/s':>10}{'ratio':>9}   detail")
    repeats = rep["oversample"].get("repeats_added", 0)
    print(f"{rows[0]['measure']:<52}{made:>10.1f}{made / det:>8.1f}×   {n_made} images made in {t_stage:.1f} s "
          f"(not counted: the stage's {rep['images_before']} originals and {repeats} repeats)")  # fmt: skip
    print(f"{rows[1]['measure']:<52}{online:>10.1f}{online / det:>8.1f}×   {n_online} samples in {t_online:.1f} s")
    print(f"target: ratio {target} (one data core outruns the whole detector step)")
    write_result(
        "augment",
        rows,
        sod="augmented images per second on one core (copy-paste images written by the stage; online samples)",
        peer=peer,
        target=f"ratio {target}",
        machine=machine_info("cpu", args.threads),
        results_dir=args.results_dir,
        details={
            "scenes": args.images,
            "stage_s": round(t_stage, 3),
            "images_made_by_copy_paste": n_made,
            "stage_image_entries": rep["images_after"],
            "stage_originals": rep["images_before"],
            "stage_repeats": repeats,
            "online_samples": n_online,
            "online_s": round(t_online, 3),
            "peer_images": n_det,
            "peer_s": round(t_det, 3),
            "peer_steps": args.steps,
            "data_threads": 1,
        },
    )


if __name__ == "__main__":
    main()
