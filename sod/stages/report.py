"""``sod report``: the ablation table and the survey-style figures from a directory of variant results.

Input: ``runs_dir`` holds one ``<variant>.seed<k>.json`` per variant and training seed (written by
``flows/ablation.py``; any ``*.json`` of this shape is read)::

    {"variant": "gamma_0", "seed": 0, "changed": {"detector.focal.gamma": 0.0},
     "params": {...every flattened param of the run, train.seed included...}, "evaluate": {...evaluate.json...}}

Outputs:

* ``table`` (``reports/ablation.csv``): one row per variant and seed, ``baseline`` and ``pipeline`` first, then
  the others by name, each variant's rows by ``train.seed``. Columns: ``variant``; every param whose value
  differs between the rows (the row's value, ``train.seed`` among them when seeds vary; so each row shows what
  it changed); ``AP``, ``AP50``, ``AP_small``, ``AP_medium``, ``AP_large`` of
  full-image inference and the same under ``sliced_`` (empty when sliced inference was off or undefined).
* ``plots_dir``: ``ap_vs_<sweep>.png`` — AP_small / AP_medium / AP_large against one lever, from the variants that
  differ from ``pipeline`` in that lever only (plus ``pipeline``; the training seed is not a lever: a point is the
  mean over a variant's seeds, its error bar their sample standard deviation), as in the small-object survey's
  ablations: oversampling ratio, copy-paste count, focal γ, default vs tuned anchors (``kmeans 3/level``: the
  anchors per level of the fit), ATSS vs the IoU matcher (``iou 0.5/0.4``: its fg/bg thresholds), none / bicubic /
  SR input (``detector.input_upscale``; ``sr+finetune`` when the detection loss trained the SR network too); and
  ``full_vs_sliced.png`` (every variant, full-image against sliced inference, mean ± std over seeds). A figure
  whose lever has fewer than two values is not drawn. ``plots_dir/.sod-owner`` lists the figures; a rerun deletes
  the ones it lists and no longer draws, and refuses a non-empty ``plots_dir`` without that marker (a user's file
  is never deleted).
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from sod.config import Params  # noqa: E402
from sod.errors import DataError  # noqa: E402
from sod.io import claim_dir, finish_dir, read_json, save_figure, write_csv  # noqa: E402

log = logging.getLogger(__name__)

METRICS = ["AP", "AP50", "AP_small", "AP_medium", "AP_large"]
COLUMNS = METRICS + [f"sliced_{m}" for m in METRICS]
REFERENCES = ["baseline", "pipeline"]
BUCKETS = ["AP_small", "AP_medium", "AP_large"]
# Lever → (x-axis param, every param the lever may change). ``augment.oversample: none`` is ratio 1.
SWEEPS: dict[str, tuple[str, set[str]]] = {
    "oversampling": ("augment.oversample_ratio", {"augment.oversample_ratio", "augment.oversample"}),
    "copy_paste": ("augment.copy_paste.times", {"augment.copy_paste.times"}),
    "focal_gamma": ("detector.focal.gamma", {"detector.focal.gamma"}),
    # torchvision's anchors against the fit, which may also change the anchors per level ("kmeans 3/level").
    "anchors": ("anchors.method", {"anchors.method", "anchors.anchors_per_level"}),
    # ATSS against torchvision's IoU matcher at params' thresholds or others ("iou 0.5/0.4": fg/bg IoU).
    "assigner": ("detector.assigner", {"detector.assigner", "detector.fg_iou_thresh", "detector.bg_iou_thresh"}),
    # The SR front end; a variant may also change the tile upscale of sliced inference (the front end
    # upscales tiles itself). A fine-tuned SR front end is its own point, "sr+finetune".
    "input_upscale": (
        "detector.input_upscale",
        {"detector.input_upscale", "detector.upscale_factor", "detector.sr_finetune", "evaluate.sliced.upscale"},
    ),
}
# Categorical levers drawn in this order rather than alphabetically.
_X_ORDER = {"input_upscale": ["none", "bicubic", "sr", "sr+finetune"]}
_X_LABEL = {
    "anchors": "anchors.method (kmeans: with anchors_per_level)",
    "assigner": "detector.assigner (iou: with fg/bg IoU thresholds)",
}


def _x_value(sweep: str, params: dict[str, Any]) -> Any:
    """A run's point on ``sweep``'s x axis: the lever's value, labelled with the other params it changes where
    two points could otherwise share a label (a matcher at other thresholds, a fit with other anchor counts)."""
    x = params.get(SWEEPS[sweep][0])
    if sweep == "oversampling" and params.get("augment.oversample") == "none":
        return 1.0
    if sweep == "input_upscale" and params.get("detector.sr_finetune"):
        return f"{x}+finetune"
    if sweep == "anchors" and x == "kmeans":  # torchvision's default rule ignores anchors_per_level
        return f"kmeans {params.get('anchors.anchors_per_level')}/level"
    if sweep == "assigner" and x == "iou":  # ATSS ignores the IoU thresholds
        return f"iou {params.get('detector.fg_iou_thresh')}/{params.get('detector.bg_iou_thresh')}"
    return x


def load_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Read every ``<variant>.json`` of ``runs_dir`` (sorted by file name).

    Raises:
        DataError: a file that is not a variant result (names the file and the missing key).
    """
    runs = []
    for path in sorted(Path(runs_dir).glob("*.json")):
        try:
            run = read_json(path)
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON: {exc}") from None
        missing = [k for k in ("variant", "params", "evaluate") if not isinstance(run, dict) or k not in run]
        if missing:
            raise DataError(f"{path}: not an ablation variant result (missing {', '.join(missing)})")
        runs.append(run)
    return runs


SEED = "train.seed"  # the training seed: rows of one variant that differ in it are its seeds, not levers


def build_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: ``variant``, the params that differ between runs, then :data:`COLUMNS`.

    Rows are ordered references first, then by variant name, then by :data:`SEED`.
    """
    keys = sorted({k for r in runs for k in r["params"]})
    varying = [k for k in keys if len({repr(r["params"].get(k)) for r in runs}) > 1]
    order = {name: i for i, name in enumerate(REFERENCES)}
    rows = []
    for run in sorted(runs, key=lambda r: (order.get(r["variant"], len(order)), r["variant"], _seed(r))):
        ev = run["evaluate"]
        sliced = ev.get("sliced") or {}
        row: dict[str, Any] = {"variant": run["variant"]}
        row.update({k: _cell(run["params"].get(k)) for k in varying})
        row.update({m: ev.get(m) for m in METRICS})
        row.update({f"sliced_{m}": sliced.get(m) for m in METRICS})
        rows.append(row)
    return pd.DataFrame(rows, columns=["variant", *varying, *COLUMNS])


def _seed(run: dict[str, Any]) -> int:
    seed = run["params"].get(SEED, run.get("seed", 0))
    return seed if isinstance(seed, int) else 0


def _cell(value: Any) -> Any:
    return str(value) if isinstance(value, list | dict) else value


def sweep_points(runs: list[dict[str, Any]], sweep: str) -> pd.DataFrame:
    """The variants that differ from ``pipeline`` in ``sweep``'s params only (``pipeline`` included), one point
    per variant: the mean over its seeds.

    Returns:
        Columns ``x`` (the lever's value), ``variant``, ``seeds`` (runs averaged), :data:`BUCKETS` (means) and
        ``<bucket>_std`` (sample standard deviation over the seeds; NaN for one seed), sorted by ``x``; empty
        without a ``pipeline`` run.
    """
    allowed = SWEEPS[sweep][1]
    ref = next((r for r in runs if r["variant"] == "pipeline"), None)
    if ref is None:
        return pd.DataFrame(columns=["x", "variant", *BUCKETS])
    rows = []
    for run in runs:
        keys = (set(run["params"]) | set(ref["params"])) - {SEED}
        diff = {k for k in keys if run["params"].get(k) != ref["params"].get(k)}
        if not diff <= allowed:
            continue
        if sweep == "oversampling" and run["params"].get("augment.oversample") == "repeat_factor":
            continue
        values = {b: run["evaluate"].get(b) for b in BUCKETS}
        rows.append({"x": _x_value(sweep, run["params"]), "variant": run["variant"], **values})
    stds = [f"{b}_std" for b in BUCKETS]
    if not rows:
        return pd.DataFrame(columns=["x", "variant", "seeds", *BUCKETS, *stds])
    runs_df = pd.DataFrame(rows, columns=["x", "variant", *BUCKETS])
    runs_df[BUCKETS] = runs_df[BUCKETS].astype(float)
    grouped = runs_df.groupby("variant", sort=False)
    points = grouped.agg(x=("x", "first"), seeds=("x", "size")).join(grouped[BUCKETS].mean())
    points = points.join(grouped[BUCKETS].std().add_suffix("_std")).reset_index()
    points = points[["x", "variant", "seeds", *BUCKETS, *stds]]
    order = _X_ORDER.get(sweep)
    key = (lambda col: col.map(lambda v: order.index(v) if v in order else len(order))) if order else None
    return points.sort_values("x", kind="stable", key=key)


NOISE_SIGMAS = 2.0
"""How many sample standard deviations of ``pipeline``'s seeds an effect must exceed to be called one."""


def within_noise(value: float | None, reference: list[float], sigmas: float = NOISE_SIGMAS) -> bool:
    """Whether ``value`` lies within ``sigmas`` sample standard deviations of the mean of ``reference``.

    With fewer than two reference values there is no spread to compare with: True (more seeds are needed).
    An undefined ``value`` (None: no metric) is True too. ``flows/ablation.py`` reruns such levers with every
    seed; :func:`effect_verdict` words the README's verdict with the same rule.
    """
    if value is None or len(reference) < 2:
        return True
    return abs(value - statistics.fmean(reference)) <= sigmas * statistics.stdev(reference)


def effect_verdict(values: list[float], reference: list[float], sigmas: float = NOISE_SIGMAS) -> str:
    """One variant's effect on a metric against ``pipeline``'s seeds, in words, for the README's table.

    ``Δ`` is the difference of the means. The effect is measurable when ``Δ`` lies beyond ``sigmas`` sample
    standard deviations of ``reference`` (:func:`within_noise`) and, when the variant has several seeds, its
    seed range does not overlap the reference's; within the noise it is "no measurable effect" once the
    variant has as many seeds as the reference, else more seeds are needed (the ablation flow runs them).

    Example: reference 0.10, 0.12, 0.14 (mean 0.12, std 0.02): 0.05 on one seed → "-0.070, beyond 2 std
    (1 seed)"; 0.11, 0.12, 0.13 → "no measurable effect (+0.000)".
    """
    if not values or not reference:
        return "—"
    delta = statistics.fmean(values) - statistics.fmean(reference)
    seeds = f"{len(values)} seed{'s' if len(values) > 1 else ''}"
    if len(reference) < 2:
        return f"{delta:+.3f} (`pipeline` has one seed: no spread)"
    if not within_noise(statistics.fmean(values), reference, sigmas):
        if len(values) == 1:
            return f"{delta:+.3f}, beyond {sigmas:g} std ({seeds})"
        if max(values) < min(reference) or min(values) > max(reference):
            return f"{delta:+.3f}, beyond {sigmas:g} std, seed ranges apart"
        return f"{delta:+.3f}, beyond {sigmas:g} std but seed ranges overlap"
    if len(values) < len(reference):
        return f"{delta:+.3f}, within {sigmas:g} std on {seeds}: more seeds needed"
    return f"no measurable effect ({delta:+.3f})"


def _plot_sweep(points: pd.DataFrame, sweep: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    numeric = pd.api.types.is_numeric_dtype(points["x"])
    xs = points["x"] if numeric else range(len(points))
    for bucket in BUCKETS:
        err = points[f"{bucket}_std"].astype(float).fillna(0.0)
        ax.errorbar(xs, points[bucket].astype(float), yerr=err, marker="o", capsize=3, label=bucket)
    if not numeric:
        ax.set_xticks(list(xs), [str(v) for v in points["x"]])
    ax.set_xlabel(_X_LABEL.get(sweep, SWEEPS[sweep][0]))
    ax.set_ylabel("AP (IoU 0.50:0.95)")
    seeds = int(points["seeds"].max())
    spread = f"\nmean ± std over ≤ {seeds} training seeds" if seeds > 1 else ""  # own line: fits the 5-inch figure
    ax.set_title(f"AP by object size vs {sweep.replace('_', ' ')}{spread}", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def _plot_full_vs_sliced(table: pd.DataFrame, path: Path) -> None:
    metrics = [prefix + b for b in BUCKETS for prefix in ("", "sliced_")]
    grouped = table.assign(**{m: table[m].astype(float) for m in metrics}).groupby("variant", sort=False)[metrics]
    means, stds = grouped.mean(), grouped.std().fillna(0.0)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(means)) + 1.5, 3.5))
    width = 0.13
    for i, bucket in enumerate(BUCKETS):
        for j, prefix in enumerate(("", "sliced_")):
            offset = (2 * i + j - 2.5) * width
            xs = [k + offset for k in range(len(means))]
            label = f"{bucket} {prefix[:-1] or 'full'}"
            ax.bar(xs, means[prefix + bucket], width, yerr=stds[prefix + bucket], capsize=2, label=label)
    ax.set_xticks(range(len(means)), means.index, rotation=30, ha="right")
    ax.set_ylabel("AP (IoU 0.50:0.95)")
    ax.set_title("Full-image vs sliced inference")
    # Beside the axes: inside, it hides the bars of whichever variant sits under it.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def run(params: Params, runs_dir: Path, table: Path, plots_dir: Path) -> dict[str, Any]:
    """Write the ablation table and figures (see the module docstring); returns variant and row counts and the
    figures drawn.

    ``params`` is unused (every value comes from the variant files); it keeps the stages' signature.

    Raises:
        DataError: a file of ``runs_dir`` that is not a variant result, or ``plots_dir`` is not empty and
            not marked as this stage's (``.sod-owner``); then nothing is written.
    """
    del params
    runs = load_runs(runs_dir)
    df = build_table(runs)
    claim_dir(plots_dir, "report")  # a user's directory is refused before anything is written
    write_csv(table, df)
    figures = []
    for sweep in SWEEPS:
        points = sweep_points(runs, sweep)
        if points["x"].nunique() >= 2:
            _plot_sweep(points, sweep, plots_dir / f"ap_vs_{sweep}.png")
            figures.append(f"ap_vs_{sweep}.png")
    if len(df):
        _plot_full_vs_sliced(df, plots_dir / "full_vs_sliced.png")
        figures.append("full_vs_sliced.png")
    # Figures of levers no longer in the grid: only those the previous run's marker lists go.
    finish_dir(plots_dir, "report", figures)
    missing = [r for r in REFERENCES if r not in set(df["variant"])]
    if missing:
        log.warning("ablation table without the %s row(s): run flows/ablation.py", ", ".join(missing))
    return {"variants": int(df["variant"].nunique()), "rows": len(df), "figures": figures}
