"""Sliced inference: sod's batched tiles against SAHI's ``get_sliced_prediction`` with the same detector.

Both slice every val image into the same tiles (``evaluate.sliced.tile``/``overlap``), run the trained
detector with each tile seen at the detector's input size, add the full-image prediction, and merge the
same way (``evaluate.sliced.merge``/``match``/``match_thresh``, class-aware). The table gives images/s, the ratio
sod / SAHI (target ≥ 3×), and AP / AP_small of both from the same pycocotools evaluator (they should agree
within 0.01). ``--select small`` also times sod's mode that runs only the tiles around small full-image
candidates. Needs the `bench` extra (``pip install -e '.[bench]'``) and a trained ``models/detector.pt``.
``--device`` picks CPU or CUDA (default: CUDA when available); both methods run on the same device.
Writes ``bench/results/sliced.json``.

    python bench/sliced.py --images 40 [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import add_results_arg, machine_info, row, write_result  # noqa: E402
from sod.config import load_params  # noqa: E402
from sod.data.coco import image_path  # noqa: E402
from sod.engine import resolve_device  # noqa: E402
from sod.evaluation.coco_eval import CocoEvaluator  # noqa: E402
from sod.evaluation.predictor import Predictor, image_tensor  # noqa: E402
from sod.io import load_rgb, read_json  # noqa: E402
from sod.models.detector import load_detector  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # CUDA runs asynchronously: wait before reading the clock
        torch.cuda.synchronize(device)


def sahi_predict(model, meta, images: list[np.ndarray], cfg, device: torch.device) -> tuple[list[dict], float]:
    from sahi.models.torchvision import TorchVisionDetectionModel
    from sahi.predict import get_sliced_prediction

    names = {c["id"]: c["name"] for c in meta["categories"]}
    mapping = {str(label): names[cat] for label, cat in meta["label_to_category"].items()}
    detector = TorchVisionDetectionModel(
        model=model,
        confidence_threshold=meta["detector"]["score_thresh"],
        image_size=int(cfg.sliced.tile * cfg.sliced.upscale),  # tiles seen at the detector's input size
        device=str(device),
        category_mapping=mapping,
        load_at_init=True,
    )
    outputs = []
    _sync(device)
    t0 = time.perf_counter()
    for rgb in images:
        res = get_sliced_prediction(
            rgb,
            detector,
            slice_height=cfg.sliced.tile,
            slice_width=cfg.sliced.tile,
            overlap_height_ratio=cfg.sliced.overlap,
            overlap_width_ratio=cfg.sliced.overlap,
            perform_standard_pred=True,
            postprocess_type={"nms": "NMS", "greedy_nmm": "GREEDYNMM"}[cfg.sliced.merge],
            postprocess_match_metric=cfg.sliced.match.upper(),
            postprocess_match_threshold=cfg.sliced.match_thresh,
            postprocess_class_agnostic=False,
            verbose=0,
        )
        preds = res.object_prediction_list
        outputs.append(
            {
                "boxes": torch.tensor([p.bbox.to_xyxy() for p in preds], dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor([p.score.value for p in preds], dtype=torch.float32),
                "labels": torch.tensor([int(p.category.id) for p in preds], dtype=torch.int64),
            }
        )
    _sync(device)
    return outputs, time.perf_counter() - t0


def sod_predict(model, images: list[np.ndarray], cfg, select: str, device: torch.device) -> tuple[list[dict], float]:
    predictor = Predictor.from_config(model, cfg, "adaptive" if select == "small" else "sliced")
    outputs = []
    _sync(device)
    t0 = time.perf_counter()
    for start in range(0, len(images), cfg.batch_size):
        chunk = [image_tensor(a, device) for a in images[start : start + cfg.batch_size]]
        outputs.extend({k: v.cpu() for k, v in o.items()} for o in predictor(chunk))
    _sync(device)
    return outputs, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models/detector.pt")
    ap.add_argument("--val", type=Path, default=ROOT / "data/prepared/val.json")
    ap.add_argument("--images", type=int, default=40, help="val images to run (default: %(default)s)")
    ap.add_argument("--select", choices=["all", "small"], action="append", default=None,
                    help="sod tile selection modes to time (default: all and small)")  # fmt: skip
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="where both methods run (default: %(default)s = CUDA when available)")  # fmt: skip
    add_results_arg(ap)
    args = ap.parse_args()

    cfg = load_params(ROOT / "params.yaml").evaluate
    device = resolve_device(args.device)
    model, meta = load_detector(args.model, device)
    gt = read_json(args.val)
    ims = sorted(gt["images"], key=lambda im: im["id"])[: args.images]
    images = [load_rgb(image_path(args.val, im["file_name"])) for im in ims]
    inputs = [{"image_id": im["id"]} for im in ims]

    def score(outputs: list[dict]) -> dict:
        ev = CocoEvaluator(args.val, cfg.max_dets, meta["label_to_category"])
        ev.process(inputs, outputs)
        return ev.evaluate()

    rows = []
    out, secs = sahi_predict(model, meta, images, cfg, device)
    rows.append(("SAHI get_sliced_prediction (peer)", secs, score(out)))
    for select in args.select or ["all", "small"]:
        out, secs = sod_predict(model, images, cfg, select, device)
        rows.append((f"sod Predictor select={select}", secs, score(out)))

    peer_ips = len(images) / rows[0][1]
    sl = cfg.sliced
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(
        f"{len(images)} val images, tile {sl.tile} px, overlap {sl.overlap}, upscale {sl.upscale}, "
        f"batch {sl.batch_size}, device {device}{threads}"
    )
    print(f"{'method':<38}{'images/s':>9}{'ratio':>7}{'AP':>8}{'AP_small':>10}")
    for name, secs, m in rows:
        ips = len(images) / secs
        print(f"{name:<38}{ips:>9.2f}{ips / peer_ips:>7.2f}{m['AP'] or 0:>8.4f}{m['AP_small'] or 0:>10.4f}")

    # Speed against SAHI per selection mode, then agreement of AP_small (a check, not a rate: no ratio).
    peer_small = rows[0][2]["AP_small"]
    results = []
    for name, secs, _ in rows[1:]:
        select = name.rsplit("=", 1)[1]
        ips = len(images) / secs
        met = ips >= 3 * peer_ips
        results.append(row(f"images/s, select={select}", "images/s", ips, peer_ips, target="≥ 3×", met=met))
    for name, _, m in rows[1:]:
        select = name.rsplit("=", 1)[1]
        ok = None if m["AP_small"] is None or peer_small is None else abs(m["AP_small"] - peer_small) <= 0.01
        results.append(row(f"AP_small, select={select}", "AP_small", m["AP_small"], peer_small,
                           target="within 0.01", met=ok, ratio=None))  # fmt: skip
    write_result(
        "sliced",
        results,
        sod=f"sod Predictor, batched tiles ({len(images)} val images, tile {sl.tile} px, batch {sl.batch_size})",
        peer=f"SAHI get_sliced_prediction, same detector, tiles and merge ({sl.merge} on {sl.match})",
        target="ratio ≥ 3×, AP_small within 0.01",
        machine=machine_info(str(device)),
        results_dir=args.results_dir,
        details={"images": len(images), "model": str(args.model), "seconds": {n: round(s, 3) for n, s, _ in rows}},
    )


if __name__ == "__main__":
    main()
