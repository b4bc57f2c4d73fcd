"""``sod predict``: a trained detector on a folder or a list of images of any size, COCO results out.

Not a DVC stage: the command a user runs after training (as ``sahi predict`` and ``yolo predict`` are). The
images go through :class:`~sod.evaluation.predictor.Predictor` at their original size, in ``full``, ``sliced``
or ``adaptive`` mode (default: what the ``evaluate`` params ask for), with the ``evaluate`` params' tile,
overlap, merge, ``max_dets`` and ``score_thresh``.

Outputs:
  * ``out``: COCO results, ``[{"image_id", "category_id", "bbox": [x, y, w, h] (bbox_xywh, original
    pixels), "score"}]`` (what pycocotools' ``COCO.loadRes`` takes). Image ids come from ``coco`` (matched by
    ``file_name``: the exact name, else a unique base name), else are 1..N over the input files sorted by
    name, and ``images_json`` lists them (``images``, no ``annotations``, the model's ``categories``: a
    COCO file that ``loadRes`` accepts as ground truth);
  * ``draw_dir`` (optional): one PNG per image with its boxes (score ≥ ``draw_score``) and
    ``<category> <score>`` captions, named after the image.

Nothing a user made is overwritten: ``out`` and ``images_json`` are recorded in their directory's
``.sod-owner`` marker (:func:`sod.io.claim_file`), ``draw_dir`` must be new, empty or ``predict``'s own.

Bad images (missing, corrupt or in a format PIL cannot read) get prepare's policy: ``on_bad_image: error``
stops with one line naming the file; ``skip`` leaves them out and counts them (``images_skipped_missing``,
``images_skipped_corrupt``, ``images_skipped_too_large``: over ``prepare.max_pixels`` or PIL's decompression-bomb
limit).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from sod.config import Params
from sod.engine import resolve_device
from sod.errors import DataError
from sod.evaluation.coco_eval import coco_results
from sod.evaluation.plots import draw_boxes
from sod.evaluation.predictor import Mode, Predictor, config_mode, image_tensor, train_tile
from sod.io import claim_dir, claim_file, finish_dir, load_rgb, read_json, save_png, write_json
from sod.models.detector import load_detector
from sod.progress import progress_bar

log = logging.getLogger(__name__)

STAGE = "predict"
# The files a folder contributes: every extension PIL can open (others, e.g. a README, are not images).
IMAGE_SUFFIXES = frozenset(ext.lower() for ext in Image.registered_extensions())
# What reading an image can raise besides a missing file: prepare's list, plus PIL's decompression-bomb guard.
_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


def run(
    params: Params,
    model: str,
    sources: list[Path],
    out: Path,
    coco: Path | None = None,
    images_json: Path | None = None,
    draw_dir: Path | None = None,
    mode: Mode | None = None,
    on_bad_image: Literal["error", "skip"] = "error",
    draw_score: float = 0.3,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every image of ``sources``; write ``out`` (and ``images_json``, ``draw_dir``).

    Args:
        params: the ``evaluate`` section sets the inference (see the module docstring); ``prepare.slice`` the
            tile scale of images larger than the training tiles (the params the detector was trained with).
        model: a ``models/detector.pt`` file, or ``models:/<name>/<version>`` of the MLflow registry.
        sources: image files and folders (a folder: its files with an image extension, not recursive).
        out: the COCO results JSON.
        coco: a COCO file whose ``images`` give the ids; None numbers the images by sorted name.
        images_json: where the images list goes without ``coco`` (an error with it); None = ``out`` with
            ``.images.json``.
        draw_dir: a folder for pictures with boxes; None draws none.
        mode: ``full``, ``sliced`` or ``adaptive``; None = from ``params.evaluate``.
        on_bad_image: ``error`` or ``skip`` (counted).
        draw_score: the least score drawn.

    Returns:
        ``{"mode", "images", "images_skipped_missing", "images_skipped_corrupt", "images_skipped_too_large",
        "detections", "seconds", "out", "images_json"}``.

    Raises:
        DataError: no image, a bad image under ``error``, an image not in ``coco``, two inputs of one name,
            a model that cannot be loaded, or an output in the way that sod did not write.
    """
    ecfg = params.evaluate
    mode = config_mode(ecfg) if mode is None else mode
    files = collect_images(sources)
    names = [p.name for p in files]
    if coco is not None:
        if images_json is not None:
            raise DataError("--images-json lists the images sod numbered; with --coco the ids are the COCO file's")
        ids, categories = _ids_from_coco(coco, names)
    else:
        ids = {name: i for i, name in enumerate(sorted(names), start=1)}
        categories = None
        images_json = images_json or out.with_name(out.name.removesuffix(".json") + ".images.json")
    # Every output is checked (and claimed) before minutes of inference.
    claim_file(out, STAGE)
    if images_json is not None:
        claim_file(images_json, STAGE)
    if draw_dir is not None:
        claim_dir(draw_dir, STAGE)

    device = resolve_device(ecfg.device)
    detector, meta = _load_model(model, device)
    if categories is not None:
        _check_categories(coco, categories, meta["categories"])
    l2c = meta["label_to_category"]
    names_by_cat = {c["id"]: c["name"] for c in meta["categories"]}
    predictor = Predictor.from_config(detector, ecfg, mode, train_tile=train_tile(params))

    counts = {"images_skipped_missing": 0, "images_skipped_corrupt": 0, "images_skipped_too_large": 0}
    results: list[dict[str, Any]] = []
    image_records: list[dict[str, Any]] = []
    drawn: list[str] = []
    seconds = 0.0
    batch = max(1, ecfg.batch_size)
    order = sorted(files, key=lambda p: ids[p.name])
    bar = progress_bar(range(0, len(order), batch), desc="predict", unit="batch", enabled=progress)
    for start in bar:
        loaded = [
            (path, rgb)
            for path in order[start : start + batch]
            if (rgb := _read(path, on_bad_image, counts)) is not None
        ]
        if not loaded:
            continue
        t0 = time.perf_counter()
        outputs = predictor([image_tensor(rgb, device) for _, rgb in loaded])
        seconds += time.perf_counter() - t0
        for (path, rgb), pred in zip(loaded, outputs, strict=True):
            image_id = ids[path.name]
            image_records.append(
                {"id": image_id, "file_name": path.name, "width": rgb.shape[1], "height": rgb.shape[0]}
            )
            dets = coco_results(image_id, pred, lambda label: _category(l2c, label), ecfg.score_thresh, ecfg.max_dets)
            results.extend(dets)
            if draw_dir is not None:
                drawn.append(_draw(rgb, dets, names_by_cat, draw_score, draw_dir, path.name, drawn))
        bar.set_postfix(detections=len(results))
    if not image_records and files:
        log.warning("no image could be read: %d missing, %d corrupt", *counts.values())

    write_json(out, results)
    if images_json is not None:
        write_json(images_json, {"images": image_records, "annotations": [], "categories": meta["categories"]})
    if draw_dir is not None:
        finish_dir(draw_dir, STAGE, drawn)
    return {
        "mode": mode,
        "images": len(image_records),
        **counts,
        "detections": len(results),
        "seconds": round(seconds, 3),
        "out": str(out),
        "images_json": str(images_json) if images_json else None,
    }


def collect_images(sources: list[Path]) -> list[Path]:
    """The image files named by ``sources``: files as given, folders as their files with an image extension
    (not recursive), in the order given (a folder's sorted by name).

    Raises:
        DataError: no source, no image at all, a source path that does not exist (a file that does exist
            but cannot be read is a bad image, see :func:`run`), or two images of the same file name (their
            ids and pictures would collide).
    """
    if not sources:
        raise DataError("no images given: pass a folder or image files")
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(src)  # a missing file is a bad image: reported or skipped by the policy
    if not files:
        raise DataError(f"no image files in {', '.join(map(str, sources))} (extensions PIL reads, e.g. .png .jpg)")
    seen: dict[str, Path] = {}
    for p in files:
        if p.name in seen and seen[p.name] != p:
            raise DataError(f"two images named {p.name!r} ({seen[p.name]} and {p}): rename one or predict them apart")
        seen[p.name] = p
    return list(dict.fromkeys(files))


def _ids_from_coco(coco: Path, names: list[str]) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Image id per input name from ``coco``'s ``images`` (exact ``file_name``, else a unique base name)."""
    try:
        data = read_json(coco)
        images = data["images"]
        exact = {str(im["file_name"]): int(im["id"]) for im in images}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read image ids from {coco}: {type(exc).__name__}: {exc}") from None
    by_base: dict[str, list[int]] = {}
    for file_name, image_id in exact.items():
        by_base.setdefault(PurePosixPath(file_name).name, []).append(image_id)
    ids, missing = {}, []
    for name in names:
        if name in exact:
            ids[name] = exact[name]
        elif len(by_base.get(name, [])) == 1:
            ids[name] = by_base[name][0]
        else:
            missing.append(name)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"{coco}: no image with file_name {shown} (or its base name, once) in 'images'")
    return ids, data.get("categories") or []


def _check_categories(coco: Path | None, theirs: list[dict[str, Any]], ours: list[dict[str, Any]]) -> None:
    """The COCO file's categories must not give the model's category ids other names."""
    names = {c.get("id"): c.get("name") for c in theirs if isinstance(c, dict)}
    clash = [
        f"{c['id']}: {c['name']!r} vs {names[c['id']]!r}"
        for c in ours
        if c["id"] in names and names[c["id"]] != c["name"]
    ]
    if clash:
        raise DataError(f"{coco}: category ids name other classes than the model's ({'; '.join(clash[:3])})")


def _load_model(model: str, device: Any) -> tuple[Any, dict[str, Any]]:
    if not model.startswith("models:/"):
        return load_detector(model, device)
    from sod import tracking

    with tempfile.TemporaryDirectory(prefix="sod-predict-model-") as tmp:
        return load_detector(tracking.fetch_detector_file(model, tmp), device)


def _read(path: Path, on_bad_image: str, counts: dict[str, int]) -> np.ndarray | None:
    """The image as ``(H, W, 3) uint8`` RGB, or None when it is bad and skipped (counted)."""
    problem = None
    if not path.is_file():
        problem, counter = "is missing", "images_skipped_missing"
    else:
        try:
            return load_rgb(path)
        except Image.DecompressionBombError as exc:
            problem = f"is too large ({exc}); raise prepare.max_pixels (--set prepare.max_pixels=N) to read it"
            counter = "images_skipped_too_large"
        except _UNREADABLE as exc:
            problem, counter = f"cannot be read ({type(exc).__name__}: {exc})", "images_skipped_corrupt"
    if on_bad_image == "error":
        raise DataError(f"image file {path} {problem}; fix it or pass --on-bad-image skip to drop such images")
    log.warning("skipped image %s: it %s", path, problem)
    counts[counter] += 1
    return None


def _category(label_to_category: dict[int, int], label: int) -> int:
    if label not in label_to_category:
        raise DataError(f"model label {label} has no category in the model file")
    return label_to_category[label]


def _draw(
    rgb: np.ndarray,
    dets: list[dict[str, Any]],
    names: dict[int, str],
    min_score: float,
    draw_dir: Path,
    file_name: str,
    taken: list[str],
) -> str:
    """Draw ``dets`` (score ≥ ``min_score``) on ``rgb`` into ``draw_dir``; returns the PNG's name: the image's
    stem, or its whole name where another image has that stem (``a.jpg`` and ``a.tif``)."""
    shown = [d for d in dets if d["score"] >= min_score]
    xywh = np.array([d["bbox"] for d in shown], dtype=np.float64).reshape(-1, 4)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    captions = [f"{names.get(d['category_id'], d['category_id'])} {d['score']:.2f}" for d in shown]
    name = f"{Path(file_name).stem}.png"
    if name in taken:
        name = f"{file_name}.png"
    save_png(draw_dir / name, draw_boxes(rgb, xyxy, captions))
    return name
