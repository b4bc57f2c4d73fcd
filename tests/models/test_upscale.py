"""The upscaling front end: sizes in and boxes out by hand, frozen vs fine-tuned SR, build-time checks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from sod.config import DetectorConfig
from sod.errors import DataError
from sod.models.detector import build_detector
from sod.models.sr import bicubic_resize, build_sr
from sod.models.upscale import UpscaledDetector, bicubic_input


class Recorder(nn.Module):
    """A stand-in detector: records what it is given; one fixed box per image; loss = mean input pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Tensor] = []
        self.targets: list[dict[str, Tensor]] | None = None

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):  # noqa: ANN201
        self.seen, self.targets = list(images), targets
        if self.training:
            return {"loss": torch.stack([im.mean() for im in images]).mean()}
        box = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
        return [{"boxes": box, "labels": torch.tensor([1]), "scores": torch.tensor([0.9])} for _ in images]


def test_inputs_are_upscaled_and_boxes_mapped_back() -> None:
    model = UpscaledDetector(Recorder(), factor=2).eval()
    images = [torch.rand(3, 16, 24), torch.rand(3, 8, 8), torch.rand(3, 16, 24)]
    out = model(images)
    assert [tuple(im.shape) for im in model.detector.seen] == [(3, 32, 48), (3, 16, 16), (3, 32, 48)]
    # The detector's box (10, 20, 30, 40) is in 2× pixels: (5, 10, 15, 20) in the caller's.
    assert all(torch.equal(o["boxes"], torch.tensor([[5.0, 10.0, 15.0, 20.0]])) for o in out)
    # Bicubic, clamped to the 0..1 range the detector expects; the same image whatever it is batched with.
    torch.testing.assert_close(model.detector.seen[1], bicubic_resize(images[1][None], (16, 16))[0].clamp(0, 1))
    assert all(im.min() >= 0 and im.max() <= 1 for im in model.detector.seen)


def test_inputs_are_first_resized_to_the_native_size() -> None:
    # min_size = max_size = 8: a 16×24 image is scaled by min(8/16, 8/24) = 1/3 to floor(16/3) × 8 = 5 × 8,
    # then upscaled ×2 to 10 × 16. Box factors: x 2·8/24 = 2/3, y 2·5/16 = 5/8.
    model = UpscaledDetector(Recorder(), factor=2, min_size=8, max_size=8).eval()
    (out,) = model([torch.rand(3, 16, 24)])
    assert tuple(model.detector.seen[0].shape) == (3, 10, 16)
    torch.testing.assert_close(out["boxes"], torch.tensor([[15.0, 32.0, 45.0, 64.0]]))
    model.train()
    model([torch.rand(3, 16, 24)], [{"boxes": torch.tensor([[15.0, 32.0, 45.0, 64.0]]), "labels": torch.tensor([1])}])
    torch.testing.assert_close(model.detector.targets[0]["boxes"], torch.tensor([[10.0, 20.0, 30.0, 40.0]]))


def test_training_targets_are_scaled_with_the_image() -> None:
    model = UpscaledDetector(Recorder(), factor=3).train()
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([2])}]
    losses = model([torch.rand(3, 10, 10)], targets)
    assert set(losses) == {"loss"}
    assert torch.equal(model.detector.targets[0]["boxes"], torch.tensor([[3.0, 6.0, 9.0, 12.0]]))
    assert torch.equal(targets[0]["boxes"], torch.tensor([[1.0, 2.0, 3.0, 4.0]]))  # the caller's are untouched


@pytest.mark.parametrize("finetune", [False, True])
def test_sr_trains_only_when_fine_tuned(finetune: bool) -> None:
    torch.manual_seed(0)
    sr = build_sr("espcn", 2, "y", residual=True)
    model = UpscaledDetector(Recorder(), factor=2, upscaler=sr, finetune=finetune).train()
    assert model.mode == "sr" and sr.training is finetune  # a frozen SR net stays in eval mode
    loss = model([torch.rand(3, 12, 12)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])["loss"]
    if finetune:
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sr.parameters())
    else:  # no graph through the SR net at all: the detector's loss cannot reach it
        assert not loss.requires_grad and not any(p.requires_grad for p in sr.parameters())


def test_bicubic_control_swaps_the_front_end_and_restores_it() -> None:
    sr = build_sr("espcn", 2, "rgb", residual=False)  # far from bicubic when untrained
    model = UpscaledDetector(Recorder(), factor=2, upscaler=sr).eval()
    x = torch.rand(3, 8, 8)
    with torch.no_grad():
        model([x])
        by_sr = model.detector.seen[0]
        with bicubic_input(model) as m:
            assert m.mode == "bicubic"
            m([x])
        by_bicubic = model.detector.seen[0]
    assert model.mode == "sr" and model.upscaler is sr
    torch.testing.assert_close(by_bicubic, bicubic_resize(x[None], (16, 16))[0].clamp(0, 1))
    assert not torch.allclose(by_sr, by_bicubic)


def test_wrapper_refuses_inconsistent_arguments() -> None:
    with pytest.raises(ValueError, match="×3"):
        UpscaledDetector(Recorder(), factor=2, upscaler=build_sr("espcn", 3, "y", True))
    with pytest.raises(ValueError, match="finetune"):
        UpscaledDetector(Recorder(), factor=2, finetune=True)


def _cfg(**kw: object) -> DetectorConfig:
    base = {"min_size": 64, "max_size": 64, "fpn_channels": 16, "pretrained": "none"}
    return DetectorConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_built_detector_sees_the_upscaled_size() -> None:
    model = build_detector(_cfg(input_upscale="bicubic", upscale_factor=2), 3, load_pretrained=False)
    assert isinstance(model, UpscaledDetector) and model.mode == "bicubic"
    assert model.transform.min_size == (128,) and model.transform.max_size == 128
    with torch.inference_mode():
        (out,) = model.eval()([torch.rand(3, 64, 64)])
    assert out["boxes"].shape[1] == 4 and (out["boxes"] <= 64 + 1e-3).all()  # boxes in the 64 px input's pixels
    assert not isinstance(build_detector(_cfg(), 3, load_pretrained=False), UpscaledDetector)


def test_build_checks_anchors_size_and_sr_model() -> None:
    anchors = {"levels": [3, 4, 5], "anchors_wh": [[[8.0, 8.0]], [[16.0, 16.0]], [[32.0, 32.0]]]}
    build_detector(_cfg(input_upscale="bicubic"), 3, {**anchors, "min_size": 128, "max_size": 128}, False)
    with pytest.raises(DataError, match="rerun `sod anchors`"):
        build_detector(_cfg(input_upscale="bicubic"), 3, {**anchors, "min_size": 64, "max_size": 64}, False)
    with pytest.raises(DataError, match="no SR model"):
        build_detector(_cfg(input_upscale="sr"), 3, load_pretrained=False)
    with pytest.raises(DataError, match="×3"):
        build_detector(_cfg(input_upscale="sr"), 3, load_pretrained=False, upscaler=build_sr("espcn", 3, "y", True))
    model = build_detector(
        _cfg(input_upscale="sr"), 3, load_pretrained=False, upscaler=build_sr("fsrcnn", 2, "y", True)
    )
    assert model.mode == "sr" and any(k.startswith("upscaler.net.") for k in model.state_dict())
