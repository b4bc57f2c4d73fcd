"""Run a trained detector on images of any size: the one inference path of ``evaluate``, ``predict`` and the
benchmarks.

:class:`Predictor` takes images at their *original* size and returns boxes in their original pixels. From
the detector it reads its input size (``detector.min_size``/``max_size``) and its upscaling front end; from the
``evaluate`` params the inference mode:

* ``full``: the whole image resized by torchvision's factor ``min(min_size / short side, max_size / long
  side)`` (:func:`~sod.evaluation.sliced.full_image_factor`), plus the test-time pyramid
  (``evaluate.scales``, relative to that factor), merged;
* ``sliced``: tiles of ``evaluate.sliced.tile`` px cut from the *original* pixels (so a 4,000 px image does
  not shrink its objects before a tile is cut), each resized by the factor its objects were trained at (the
  full image's; for an image larger than ``prepare.slice.tile`` with slicing on, the training tiles'),
  times ``evaluate.sliced.upscale`` when set; run in batches of ``evaluate.sliced.batch_size`` tiles of one shape
  (edge tiles zero-padded), mapped back and merged with the full-image pass (``include_full``);
* ``adaptive``: ``sliced`` with ``select: small``: the full-image pass runs first, then one tile per small
  candidate of it (the tile holding the candidate farthest from its border).

The tiling and merging is :class:`~sod.evaluation.sliced.SlicedPredictor`'s; this class owns the model side:
it resizes every input itself (bilinear, or antialiased bicubic in front of an upscaling front end, the way
``sod train-sr`` makes its low-resolution images) and runs the detector with torchvision's own resize turned
into the identity, so the scale it decided is the scale the network sees. A detector with
``detector.input_upscale`` bicubic or sr then upscales each input (image or tile) by its factor;
``bicubic_input=True`` swaps SR for bicubic at the same factor (SR's control in ``evaluate``).

Label 0 (no class) is dropped from every output: torchvision's RetinaNet scores its unused label 0 like the
others and returns it above a low ``score_thresh``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from sod.config import EvaluateConfig, Params
from sod.evaluation.sliced import OBJECTNESS, OBJECTNESS_BOXES, MatchMetric, MergeMethod, Prediction, SlicedPredictor
from sod.models.fusion import fold_batch_norm
from sod.models.sr import bicubic_resize
from sod.models.upscale import UpscaledDetector, bicubic_input

Mode = Literal["full", "sliced", "adaptive"]
MODES: tuple[Mode, ...] = ("full", "sliced", "adaptive")


def config_mode(cfg: EvaluateConfig, sliced: bool | None = None) -> Mode:
    """The mode the ``evaluate`` params ask for: ``full`` unless ``sliced.enabled`` (or ``sliced``) is on, then
    ``adaptive`` for ``sliced.select: small``, else ``sliced``."""
    on = cfg.sliced.enabled if sliced is None else sliced
    if not on:
        return "full"
    return "adaptive" if cfg.sliced.select == "small" else "sliced"


def train_tile(params: Params) -> int | None:
    """``prepare.slice.tile`` when training on tiles is on, else None: the ``train_tile`` of a Predictor
    for a detector trained with ``params``."""
    return params.prepare.slice.tile if params.prepare.slice.enabled else None


def detector_input_size(model: nn.Module) -> tuple[int, int]:
    """``(min_size, max_size)``: the size a loaded detector resizes its inputs to (``detector.min_size``/
    ``max_size``); for an :class:`UpscaledDetector`, its native size before the upscaling."""
    if isinstance(model, UpscaledDetector) and model.min_size is not None and model.max_size is not None:
        return model.min_size, model.max_size
    t = model.transform
    factor = model.input_factor if isinstance(model, UpscaledDetector) else 1
    return int(t.min_size[-1]) // factor, int(t.max_size) // factor


def image_tensor(rgb: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """``(H, W, 3) uint8`` RGB → float ``Tensor[3, H, W]`` in 0..1 on ``device``: the Predictor's input."""
    return torch.from_numpy(rgb).to(device).permute(2, 0, 1).float().div_(255)


def _bicubic(image: Tensor, size_hw: tuple[int, int]) -> Tensor:
    return bicubic_resize(image[None], size_hw)[0].clamp(0, 1)


class Predictor:
    """A loaded detector run on images of any size; boxes come back in the original pixels.

    Args:
        model: a detector from :func:`sod.models.detector.load_detector` (eval mode), or any torchvision
            RetinaNet/FasterRCNN (or :class:`UpscaledDetector`).
        mode: ``full``, ``sliced`` or ``adaptive`` (see the module docstring).
        tile, overlap: tile side (px of the original image) and the fraction shared by neighbours.
        batch_size: detector inputs per forward pass (full images and tiles).
        merge, match, match_thresh: how passes are merged (:func:`~sod.evaluation.sliced.merge_predictions`).
        include_full: in ``sliced``/``adaptive``, merge the full-image pass with the tiles.
        upscale: None = tiles resized by the full image's factor; x = x times more.
        scales: full-image pyramid scales, relative to the full image's factor.
        max_dets: keep at most this many best boxes per image; None keeps all.
        select_score: ``adaptive``: a full-image small box scoring at least this makes its tile run.
        bicubic_input: run an SR-input detector with bicubic upscaling instead (SR's control).
        train_tile: ``prepare.slice.tile`` when training was sliced, else None: the tiles of an image larger
            than it are resized like the training tiles were (:meth:`SlicedPredictor.tile_scale`).
        fold_bn: run a copy of ``model`` with its frozen batch norms folded into the convolutions before them
            (:func:`~sod.models.fusion.fold_batch_norm`: the same boxes up to float rounding, 1.3–1.5× faster on
            CPU); ``model`` itself is not changed. False, or a model without batch norm: ``model`` as given.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mode: Mode = "full",
        tile: int = 160,
        overlap: float = 0.25,
        batch_size: int = 8,
        merge: MergeMethod = "greedy_nmm",
        match: MatchMetric = "ios",
        match_thresh: float = 0.5,
        include_full: bool = True,
        upscale: float | None = None,
        scales: Sequence[float] = (1.0,),
        max_dets: int | None = None,
        select_score: float = 0.05,
        bicubic_input: bool = False,
        train_tile: int | None = None,
        fold_bn: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; want one of {', '.join(MODES)}")
        folded, pairs = fold_batch_norm(model) if fold_bn else (model, 0)
        self.model = folded if pairs else model  # nothing to fold: the model as given, no copy
        self.mode = mode
        self.input_size = detector_input_size(model)
        self.bicubic_input = bicubic_input
        weight = next(model.parameters(), None)
        self.device = weight.device if weight is not None else torch.device("cpu")
        self.engine = SlicedPredictor(
            self._forward,
            sliced=mode != "full",
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            merge=merge,
            match=match,
            match_thresh=match_thresh,
            include_full=include_full,
            upscale=upscale,
            scales=scales,
            max_dets=max_dets,
            select="small" if mode == "adaptive" else "all",
            select_score=select_score,
            input_size=self.input_size,
            # An SR front end was trained on antialiased-bicubic low-resolution images: give it the same.
            resize=_bicubic if isinstance(model, UpscaledDetector) else None,
            train_tile=train_tile,
            probe_fn=self._probe,
        )

    @classmethod
    def from_config(
        cls,
        model: nn.Module,
        cfg: EvaluateConfig,
        mode: Mode | None = None,
        *,
        bicubic_input: bool = False,
        train_tile: int | None = None,
    ) -> Predictor:
        """Build from the ``evaluate`` params section; ``mode`` None = :func:`config_mode` of ``cfg``;
        ``train_tile``: :func:`train_tile` of the params the detector was trained with."""
        s = cfg.sliced
        return cls(
            model,
            mode=config_mode(cfg) if mode is None else mode,
            tile=s.tile,
            overlap=s.overlap,
            batch_size=s.batch_size,
            merge=s.merge,
            match=s.match,
            match_thresh=s.match_thresh,
            include_full=s.include_full,
            upscale=s.upscale,
            scales=cfg.scales,
            max_dets=cfg.max_dets,
            select_score=s.select_score,
            bicubic_input=bicubic_input,
            train_tile=train_tile,
        )

    def __call__(self, images: Sequence[Tensor]) -> list[Prediction]:
        """Predict ``images`` (float ``Tensor[3, H, W]`` in 0..1 each, any sizes, at their original scale).

        Returns:
            Per image ``{"boxes": Tensor[N, 4] xyxy in the image's pixels, "scores": Tensor[N], "labels":
            Tensor[N] int64 (1..K, the model's labels)}``, best score first after a merge, on the model's device.
        """
        with torch.inference_mode():
            return self.engine([im.to(self.device) for im in images])

    # ------------------------------------------------------------------------------------------ model side
    def _forward(self, images: list[Tensor], probe: bool = False) -> list[Prediction]:
        """The detector on ``images`` at the size they come in; inputs of one shape share a forward pass.

        With ``probe`` (the full-image round of ``select: small``) and a RetinaNet, each prediction also carries
        the cells of the finest pyramid level as boxes (:data:`~sod.evaluation.sliced.OBJECTNESS_BOXES`, xyxy in
        input pixels) and their objectness (max class probability over the level's anchors): read from the same
        forward pass by a hook on the classification head, at no extra cost.
        """
        out: list[Prediction | None] = [None] * len(images)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(tuple(im.shape[-2:]), []).append(i)
        front = bicubic_input(self.model) if self.bicubic_input else nullcontext()
        with front, _head_logits(self.model if probe else None) as logits:
            for (h, w), idx in by_shape.items():
                with _native_size(self.model, min(h, w), max(h, w)):
                    for n, (i, o) in enumerate(zip(idx, self.model([images[i] for i in idx]), strict=True)):
                        keep = o["labels"] > 0  # label 0 is no class (see the module docstring)
                        out[i] = {k: v[keep] for k, v in o.items()}
                        if logits:
                            out[i] |= _finest_level_cells(*logits[-1], n, (h, w))
        return out  # type: ignore[return-value]

    def _probe(self, images: list[Tensor]) -> list[Prediction]:
        return self._forward(images, probe=True)


@contextmanager
def _head_logits(model: nn.Module | None) -> Iterator[list[tuple[tuple[int, int], list[tuple[int, int]], Tensor]]]:
    """Within the block, each forward pass of a torchvision RetinaNet ``model`` appends ``(padded input size,
    [(H, W) of each pyramid level], classification logits [N, sum H*W*A, K])``; a no-op list for None or for a
    model without ``backbone`` and ``head.classification_head`` (Faster R-CNN, an SR front end)."""
    calls: list[tuple[tuple[int, int], list[tuple[int, int]], Tensor]] = []
    head = getattr(getattr(model, "head", None), "classification_head", None)
    backbone = getattr(model, "backbone", None)
    if model is None or head is None or backbone is None or isinstance(model, UpscaledDetector):
        yield calls
        return
    padded: list[tuple[int, int]] = []
    hooks = [
        backbone.register_forward_hook(lambda _m, args, _o: padded.append(tuple(args[0].shape[-2:]))),
        head.register_forward_hook(
            lambda _m, args, o: calls.append((padded[-1], [tuple(f.shape[-2:]) for f in args[0]], o))
        ),
    ]
    try:
        yield calls
    finally:
        for hook in hooks:
            hook.remove()


def _finest_level_cells(
    padded_hw: tuple[int, int], levels: list[tuple[int, int]], logits: Tensor, n: int, input_hw: tuple[int, int]
) -> Prediction:
    """Input ``n``'s cells of the first (finest) level: ``{OBJECTNESS_BOXES: Tensor[C, 4] xyxy input px,
    OBJECTNESS: Tensor[C]}``, the max sigmoid class score over the cell's anchors; cells wholly in the batch
    padding are left out. torchvision's head lays its logits out level by level, each as (H, W, A, K)."""
    h0, w0 = levels[0]
    anchors = logits.shape[1] // sum(h * w for h, w in levels)
    score = logits[n, : h0 * w0 * anchors].sigmoid().amax(-1).view(h0, w0, anchors).amax(-1)  # [H0, W0]
    sy, sx = padded_hw[0] / h0, padded_hw[1] / w0
    ys = torch.arange(h0, device=logits.device, dtype=torch.float32) * sy
    xs = torch.arange(w0, device=logits.device, dtype=torch.float32) * sx
    y0, x0 = torch.meshgrid(ys, xs, indexing="ij")
    boxes = torch.stack([x0, y0, x0 + sx, y0 + sy], dim=-1).view(-1, 4)
    inside = (boxes[:, 0] < input_hw[1]) & (boxes[:, 1] < input_hw[0])
    return {OBJECTNESS_BOXES: boxes[inside], OBJECTNESS: score.flatten()[inside]}


@contextmanager
def _native_size(model: nn.Module, min_size: int, max_size: int) -> Iterator[None]:
    """Within the block, ``model`` resizes an input whose sides are ``min_size``/``max_size`` by exactly 1
    (an upscaling front end: by its factor only); the sizes are restored afterwards."""
    t = model.transform
    saved = (t.min_size, t.max_size)
    if isinstance(model, UpscaledDetector):  # inputs stay as they are, then the network sees them f× larger
        front = (model.min_size, model.max_size)
        model.min_size, model.max_size = min_size, max_size
        min_size, max_size = min_size * model.input_factor, max_size * model.input_factor
    t.min_size, t.max_size = (min_size,), max_size
    try:
        yield
    finally:
        t.min_size, t.max_size = saved
        if isinstance(model, UpscaledDetector):
            model.min_size, model.max_size = front
