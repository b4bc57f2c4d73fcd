"""Is the data path ever the bottleneck? Augmented images/s per CPU core vs a detector's training images/s.

Builds a small embedded dataset (``sod prepare`` with default params except the image count) in a temp dir,
then measures, on one thread:
  * the ``augment`` stage with the default params (copy-paste + oversampling, PNG writes included):
    output images per second;
  * the online path: ``CocoDetectionDataset`` + ``train_transforms(augment.online)`` over the augmented file
    (decode, flip, scale jitter, photometric, to float): samples per second;
and the peer, on all threads: training images per second of a torchvision detector train step
(Faster R-CNN MobileNetV3-FPN, no pretrained weights, batch 4 at 320 px). Prints a table with the ratios
(target ≥ 10×: the detector should wait on nothing).

    .venv/bin/python bench/augment.py --images 40 --steps 3
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

from sod.config import load_params
from sod.data.copy_paste import torch_threads
from sod.data.dataset import CocoDetectionDataset, collate_fn, train_transforms
from sod.stages import augment, prepare


def bench_stage(params: object, train_json: Path, work: Path) -> tuple[float, int, int]:
    """Seconds, output images and newly pasted images of one ``augment`` run (single thread)."""
    with torch_threads(1):
        start = time.perf_counter()
        rep = augment.run(params, train_json, work / "augmented", work / "augment.json", work / "p.png", False)
        return time.perf_counter() - start, rep["images_after"], rep["images_added_copy_paste"]


def bench_online(params: object, json_path: Path, n: int) -> tuple[float, int]:
    """Seconds to load and transform ``n`` samples (single thread)."""
    ds = CocoDetectionDataset(json_path, transforms=train_transforms(params.augment.online))
    with torch_threads(1):
        torch.manual_seed(0)
        ds[0]  # warm-up: first-call dispatch
        start = time.perf_counter()
        for i in range(n):
            ds[i % len(ds)]
        return time.perf_counter() - start, n


def bench_detector(params: object, json_path: Path, steps: int, batch: int, threads: int) -> tuple[float, int]:
    """Seconds and images of ``steps`` training steps of Faster R-CNN MobileNetV3-FPN at 320 px (after one warm-up)."""
    ds = CocoDetectionDataset(json_path, transforms=train_transforms(params.augment.online))
    samples = [collate_fn([ds[(s * batch + j) % len(ds)] for j in range(batch)]) for s in range(steps + 1)]
    with torch_threads(threads):
        torch.manual_seed(0)
        model = fasterrcnn_mobilenet_v3_large_fpn(
            weights=None, weights_backbone=None, num_classes=ds.num_classes + 1, min_size=320, max_size=320
        )
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)

        def step(images: list, targets: list) -> None:
            # Faster R-CNN counts label 0 as background: shift the dataset's 0..K-1 labels by one.
            targets = [{**t, "labels": t["labels"] + 1} for t in targets]
            loss = sum(model(images, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()

        step(*samples[0])
        start = time.perf_counter()
        for images, targets in samples[1:]:
            step(images, targets)
        return time.perf_counter() - start, steps * batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=40, help="embedded scenes to build (default: %(default)s)")
    ap.add_argument("--online-samples", type=int, default=200, help="samples through the online path")
    ap.add_argument("--steps", type=int, default=3, help="timed detector train steps (after one warm-up)")
    ap.add_argument("--batch", type=int, default=4, help="detector batch size (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for the detector")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    params = load_params(None, [f"data.embedded.images={args.images}"])
    with tempfile.TemporaryDirectory(prefix="sod-bench-") as tmp:
        work = Path(tmp)
        prepare.run(params, work / "prepared", work / "prep.json", work / "s.csv", work / "s.png", progress=False)
        train = work / "prepared" / "train.json"
        t_stage, n_stage, n_pasted = bench_stage(params, train, work)
        t_online, n_online = bench_online(params, work / "augmented" / "train.json", args.online_samples)
        t_det, n_det = bench_detector(params, work / "augmented" / "train.json", args.steps, args.batch, args.threads)

    det = n_det / t_det
    rows = [
        ("augment stage (1 thread)", n_stage / t_stage, f"{n_stage} images in {t_stage:.1f} s"),
        ("  of which pasted images (new PNGs)", n_pasted / t_stage, f"{n_pasted} pasted images in {t_stage:.1f} s"),
        ("online Dataset + transforms (1 thread)", n_online / t_online, f"{n_online} samples in {t_online:.1f} s"),
    ]
    print(f"detector peer: Faster R-CNN MobileNetV3-FPN, batch {args.batch} at 320 px, {args.threads} threads: "
          f"{det:.2f} train images/s ({n_det} images in {t_det:.1f} s)")  # fmt: skip
    print(f"{'data path':<42}{'images/s/core':>14}{'ratio to detector':>20}   detail")
    for name, rate, detail in rows:
        print(f"{name:<42}{rate:>14.1f}{rate / det:>19.1f}×   {detail}")
    print("target: ratio ≥ 10× (one data core outruns the whole detector step)")


if __name__ == "__main__":
    main()
