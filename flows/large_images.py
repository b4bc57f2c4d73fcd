"""The large-images run: the DAG on large embedded scenes, trained whole and trained on tiles, scored whole and sliced.

Drone, aerial and surveillance images are 1,000–8,000 px with objects of 4–30 px. This flow measures, on the
embedded large scenes (``data.embedded.image_size`` 1,280 px by default: the usual 6–170 px objects in
clusters, most of the scene empty), what each half of slicing buys:

* ``whole``: training on whole scenes (``prepare.slice.enabled: false``), each resized by the detector to its
  input size (1,280 → 320 px: every object 4× smaller); scored (a) on the whole val scene the same way and
  (b) with sliced inference, tiles of the original pixels at their native scale (``evaluate.sliced.upscale``
  = the inverse of the full image's factor).
* ``tiles``: training on tiles of the original pixels (``prepare.slice.tile`` = the detector's input size, so a
  tile is seen at its native scale); scored (c) sliced, the tiles at the training tiles' scale (sod's default
  rule), and on the whole scene.

Both variants run ``dvc repro evaluate`` in their own copy of the workspace (as the ablation's variants do,
:mod:`flows.ablation`), side by side with ``cores // 2`` threads each, with the same training budget as the
default run. The result, ``reports/large_images/results.json`` (the flow's own directory, marked by its
``.sod-owner``), holds every pass's ``reports/evaluate.json`` and the params; ``sod readme`` writes the README's
"Large images" table from it. Run: ``python -m flows.large_images`` (``--help``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner

from flows.ablation import code_digest, make_workspace, thread_budget, thread_env, variant_params
from flows.pipeline import command_env, run_dvc
from sod.config import flatten
from sod.errors import ConfigError, DataError
from sod.io import check_owner, read_json, write_json, write_owner_marker

RESULTS_DIR = "reports/large_images"
RESULT = "results.json"
OWNER = "large_images"
SCENE = 1280  # px: a small drone frame; 16 detector inputs of 320 px
SCENES = 160  # 120 train, 40 val (prepare.val_fraction 0.25)


def variants(scene: int, scenes: int, input_size: int) -> dict[str, dict[str, Any]]:
    """The two runs' overrides (``dvc exp run -S`` keys) for scenes of ``scene`` px and a detector input of
    ``input_size`` px (``detector.min_size``)."""
    common = {
        "data.embedded.image_size": scene,
        "data.embedded.images": scenes,
        "evaluate.sliced.enabled": True,
        "evaluate.sliced.tile": input_size,  # a tile per detector input at native scale
    }
    return {
        "whole": {
            **common,
            "prepare.slice.enabled": False,
            # Tiles at native scale: the full image is shrunk by input_size / scene, the tiles grown back.
            "evaluate.sliced.upscale": scene / input_size,
        },
        "tiles": {**common, "prepare.slice.enabled": True, "prepare.slice.tile": input_size},
    }


@task(task_run_name="large-images-{name}")
def run_one(root: Path, name: str, overrides: dict[str, Any], work_dir: str | None, threads: int) -> dict[str, Any]:
    """``dvc repro evaluate`` of one variant in its own workspace; returns its params, evaluate.json and wall time."""
    params = variant_params(root / "params.yaml", overrides)
    with tempfile.TemporaryDirectory(prefix=f"sod-large-{name}-", dir=work_dir) as tmp:
        ws = make_workspace(root, Path(tmp) / "ws")
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = command_env(root, {"SOD_TRACKING": "off", **thread_env(threads)})
        start = time.monotonic()
        run_dvc(["repro", "evaluate"], ws, env)
        return {
            "changed": overrides,
            "params": flatten(params),
            "wall_s": round(time.monotonic() - start, 1),
            "prepare": read_json(ws / "reports" / "prepare.json"),
            "evaluate": read_json(ws / "reports" / "evaluate.json"),
        }


@flow(name="sod-large-images", task_runner=ThreadPoolTaskRunner(max_workers=2))
def large_images(root: str = ".", scene: int = SCENE, scenes: int = SCENES, work_dir: str | None = None) -> str:
    """Run ``whole`` and ``tiles`` side by side and write ``reports/large_images/results.json``; returns its path."""
    repo = Path(root).resolve()
    out_dir = repo / RESULTS_DIR
    if out_dir.exists():
        check_owner(out_dir, OWNER)  # a user's directory there stops the flow before it runs anything
    input_size = variant_params(repo / "params.yaml", {})["detector"]["min_size"]
    runs = variants(scene, scenes, input_size)
    for overrides in runs.values():  # a bad key fails here
        variant_params(repo / "params.yaml", overrides)
    threads = thread_budget(len(runs))
    get_run_logger().info("large images: %s px scenes, %d runs at once, %d threads each", scene, len(runs), threads)
    futures = {name: run_one.submit(repo, name, overrides, work_dir, threads) for name, overrides in runs.items()}
    result = {
        "scene_px": scene,
        "scenes": scenes,
        "input_px": input_size,
        "code": code_digest(repo),
        "command": "python -m flows.large_images"
        + ("" if scene == SCENE else f" --scene {scene}")
        + ("" if scenes == SCENES else f" --scenes {scenes}"),
        "runs": {name: future.result() for name, future in futures.items()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_owner_marker(out_dir, OWNER, [RESULT])
    write_json(out_dir / RESULT, result)
    return str(out_dir / RESULT)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.large_images``: the flow from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.large_images",
        description=(
            "Train and score the detector on large embedded scenes: trained on whole scenes (scored whole and "
            "sliced) and trained on tiles (scored sliced and whole). Writes reports/large_images/results.json; "
            "`sod readme` then updates the README's Large images table. Two runs at once, sharing the cores; "
            "46 min on 2 CPU cores (beside other work; reports/large_images/results.json records wall_s)."
        ),
    )
    parser.add_argument("--scene", type=int, default=SCENE, help=f"scene side, px (default {SCENE})")
    parser.add_argument("--scenes", type=int, default=SCENES, help=f"scenes, a quarter for val (default {SCENES})")
    parser.add_argument("--work-dir", default=None, help="where the runs' workspaces go (default: temp dir)")
    args = parser.parse_args(argv)
    try:
        print(large_images(scene=args.scene, scenes=args.scenes, work_dir=args.work_dir))
    except (DataError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
