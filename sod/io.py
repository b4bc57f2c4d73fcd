"""Small file helpers shared by the stages: atomic writes, JSON, images as 8-bit RGB arrays, owned directories."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # pandas and matplotlib load only where a stage draws or tabulates
    import pandas as pd
    from matplotlib.figure import Figure


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    A killed process leaves either the old file or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, indented, keys in insertion order (stable bytes for DVC hashes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_csv(path: str | Path, table: pd.DataFrame) -> None:
    """Write a DataFrame as CSV (no index) atomically: the DVC plots read these files."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write a matplotlib figure as PNG atomically, without the software stamp, so reruns give identical bytes."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_png(path: str | Path, image_rgb: np.ndarray) -> None:
    """Save an ``(H, W, 3) uint8`` array as PNG atomically, with deterministic bytes.

    zlib level 1: three times faster than PIL's default for files 9% bigger.
    """
    with atomic_path(path) as tmp:
        Image.fromarray(image_rgb).save(tmp, format="PNG", compress_level=1)


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file written by ``prepare`` (already 8-bit RGB) as a writable ``(H, W, 3) uint8`` array."""
    with open_image(path) as im:
        return np.array(im.convert("RGB"))


# ------------------------------------------------------------------------------------------ pixel limit
# PIL refuses to decode an image of more than 2 × Image.MAX_IMAGE_PIXELS (179 M px) as a decompression-bomb
# guard. Aerial mosaics pass that; ``prepare.max_pixels`` replaces the guard by an explicit limit for the
# whole stage (see :func:`pixel_limit`), checked from the header before anything is decoded.
_max_pixels: int | None = None


def image_pixel_limit() -> int:
    """The pixel count above which an image is refused: ``prepare.max_pixels``, else PIL's (2 × MAX_IMAGE_PIXELS)."""
    return _max_pixels if _max_pixels is not None else 2 * (Image.MAX_IMAGE_PIXELS or 0)


@contextmanager
def pixel_limit(limit: int | None) -> Iterator[None]:
    """Within the block, images of up to ``limit`` pixels are read and larger ones refused; None = PIL's guard.

    Every ``sod`` stage runs inside this with ``prepare.max_pixels`` (``sod/cli.py``), so an image that
    ``prepare`` accepted is readable by the stages after it.
    """
    global _max_pixels
    saved = _max_pixels, Image.MAX_IMAGE_PIXELS
    if limit is not None:
        # PIL's own guard (a warning above MAX_IMAGE_PIXELS, an error above twice that) gives way to ours.
        _max_pixels, Image.MAX_IMAGE_PIXELS = limit, None
    try:
        yield
    finally:
        _max_pixels, Image.MAX_IMAGE_PIXELS = saved


def open_image(path: str | Path) -> Image.Image:
    """``PIL.Image.open`` (lazy: the header only) that raises ``Image.DecompressionBombError`` for an image over
    :func:`image_pixel_limit`, before its pixels are decoded. Use it as a context manager, like ``Image.open``."""
    im = Image.open(path)
    if _max_pixels is not None and im.width * im.height > _max_pixels:
        size = f"{im.width} x {im.height}"
        im.close()
        raise Image.DecompressionBombError(f"{size} px is over prepare.max_pixels ({_max_pixels:,})")
    return im


# ------------------------------------------------------------------------------------ owned directories
# A stage replaces or prunes a directory only when a marker it wrote there proves the directory is its own:
# a mistyped ``--out`` that names a user's folder is refused, and nothing in it is touched.
OWNER_MARKER = ".sod-owner"


def write_owner_marker(directory: str | Path, stage: str, files: Iterable[str]) -> None:
    """Write ``directory/.sod-owner``: ``{"stage": stage, "files": [...]}``, the marker that proves ownership.

    Args:
        directory: an existing directory the stage writes.
        stage: the DVC stage name (``prepare``, ``train_detector``, ...).
        files: the stage's files in ``directory``, as relative POSIX paths (``images/train/000001.png``).

    The bytes depend only on ``stage`` and the set of ``files`` (sorted, deduplicated, the marker itself
    left out), so an identical rerun gives an identical marker and DVC's hash of the directory stays stable.
    """
    names = sorted({PurePosixPath(f).as_posix() for f in files} - {OWNER_MARKER})
    with atomic_path(Path(directory) / OWNER_MARKER) as tmp:
        tmp.write_text(json.dumps({"stage": stage, "files": names}, indent=2, ensure_ascii=False) + "\n")


def _read_marker(directory: Path) -> tuple[str, list[str]] | None:
    """The marker's ``(stage, files)``; None when it is missing or not a well-formed sod marker.

    A marker whose file list leaves the directory (absolute paths, ``..``) is not sod's: it would let a
    stale-file cleanup delete outside the directory.
    """
    try:
        data = json.loads((directory / OWNER_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("stage"), str) or not isinstance(data.get("files"), list):
        return None
    files = data["files"]
    for f in files:
        if not isinstance(f, str) or not f or PurePosixPath(f).is_absolute() or ".." in PurePosixPath(f).parts:
            return None
    return data["stage"], files


def read_owner(directory: str | Path) -> str | None:
    """The stage named by ``directory``'s marker, or None (no marker, or not a well-formed one)."""
    marker = _read_marker(Path(directory))
    return marker[0] if marker else None


def owned_files(directory: str | Path, stage: str) -> list[str]:
    """The files ``directory``'s marker lists for ``stage``; empty when the marker is missing or another's."""
    marker = _read_marker(Path(directory))
    return list(marker[1]) if marker and marker[0] == stage else []


def files_under(directory: str | Path) -> list[str]:
    """Every file under ``directory`` as a sorted relative POSIX path, the marker left out.

    Symbolic links count as files and are not followed (``shutil.rmtree`` removes the link, not its target).
    """
    root = Path(directory)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        links = [d for d in dirnames if (here / d).is_symlink()]
        for name in filenames + links:
            out.append((here / name).relative_to(root).as_posix())
    return sorted(f for f in out if f != OWNER_MARKER)


def check_owner(directory: str | Path, stage: str, *, replace: bool = False) -> None:
    """Refuse unless ``stage`` may write into ``directory``: it is absent, empty, or marked by ``stage``.

    Args:
        replace: the caller will delete the whole directory; then a marked directory must also hold no file
            that its marker does not list (a file the user put there since).

    Raises:
        DataError: one line naming the directory (and a few of the entries in the way); nothing is changed.
    """
    from sod.errors import DataError

    directory = Path(directory)
    if not directory.exists() and not directory.is_symlink():
        return
    if directory.is_symlink():  # replacing it would swap the user's link for a plain directory
        raise DataError(f"{directory} is a symbolic link: pass the directory it points to")
    if not directory.is_dir():
        raise DataError(f"{directory} exists and is not a directory: choose a new or empty directory")
    entries = sorted(p.name for p in directory.iterdir())
    if not entries:
        return
    marker = _read_marker(directory)
    if marker is None or marker[0] != stage:
        whose = f"belongs to sod stage {marker[0]!r}" if marker else f"has no {OWNER_MARKER} marker of sod {stage}"
        raise DataError(
            f"refusing to write {directory}: it is not empty ({_some(entries)}) and {whose}; "
            "choose a new or empty directory (nothing was changed)"
        )
    if replace:
        foreign = sorted(set(files_under(directory)) - set(marker[1]))
        if foreign:
            raise DataError(
                f"refusing to replace {directory}: it holds files sod {stage} did not write ({_some(foreign)}); "
                "move them out or choose another directory (nothing was changed)"
            )


def _some(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def replace_dir(staging: Path, out_dir: Path, stage: str) -> None:
    """Move the finished ``staging`` directory to ``out_dir``, replacing a previous output of ``stage``.

    A stage writes its output directory beside it and swaps it in, so a killed run leaves the old output
    intact. ``staging`` gets the marker (listing every file in it) first. The old ``out_dir`` is replaced only
    if it is empty or its marker names ``stage`` and lists every file it holds (see :func:`check_owner`).

    Raises:
        DataError: ``out_dir`` is a file, or another stage's or the user's directory; nothing is touched.
    """
    check_owner(out_dir, stage, replace=True)
    write_owner_marker(staging, stage, files_under(staging))
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    # Old output aside, new one in, old one deleted: out_dir is missing only between two renames.
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    out_dir.rename(old)  # onto the empty directory just made: rename(2) replaces an empty directory
    staging.rename(out_dir)
    shutil.rmtree(old)


def claim_dir(directory: str | Path, stage: str, files: Iterable[str] = ()) -> None:
    """Make ``directory`` ``stage``'s (creating it), for a stage that writes files into it in place.

    The marker is written before any output, listing ``files`` on top of what it already listed, so a run
    killed halfway leaves a directory the next run recognises as its own.

    Raises:
        DataError: ``directory`` is a file, or is not empty and not marked by ``stage`` (:func:`check_owner`).
    """
    directory = Path(directory)
    check_owner(directory, stage)
    directory.mkdir(parents=True, exist_ok=True)
    marker = _read_marker(directory)
    old = marker[1] if marker else []
    new = sorted(set(old) | set(files))
    if marker is None or new != old:
        write_owner_marker(directory, stage, new)


def finish_dir(directory: str | Path, stage: str, files: Iterable[str]) -> list[str]:
    """Record that ``stage`` now owns exactly ``files`` in ``directory`` (claimed with :func:`claim_dir`).

    Files its previous marker listed and this run did not write are its own stale outputs: they are deleted.
    Nothing the marker does not list is ever touched.

    Returns:
        The relative names deleted, sorted.
    """
    directory = Path(directory)
    check_owner(directory, stage)
    marker = _read_marker(directory)
    keep = set(files)
    removed = []
    for name in sorted(set(marker[1] if marker else []) - keep):
        path = directory / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(name)
    write_owner_marker(directory, stage, keep)
    return removed


def claim_file(path: str | Path, stage: str) -> None:
    """Make the file ``path`` ``stage``'s to (over)write, in a directory that may hold anything else.

    For a command that writes one file where the user asks (``sod predict --out results.json``): the file's
    directory marker records the files ``stage`` wrote there, so a rerun may replace its own file and never a
    user's. The name is recorded (the marker created if missing) before the file is written.

    Raises:
        DataError: ``path`` exists and the marker of its directory does not list it as ``stage``'s, or the
            directory is marked by another stage (its marker is not ``stage``'s to change); nothing is changed.
    """
    from sod.errors import DataError

    path = Path(path)
    directory = path.parent
    marker = _read_marker(directory)
    if marker is not None and marker[0] != stage:
        raise DataError(
            f"refusing to write {path}: {directory} belongs to sod stage {marker[0]!r}; choose another path"
        )
    listed = marker is not None and path.name in marker[1]
    if (path.exists() or path.is_symlink()) and not (listed and path.is_file() and not path.is_symlink()):
        raise DataError(
            f"refusing to overwrite {path}: sod {stage} did not write it (not listed in {directory / OWNER_MARKER}); "
            "move it or choose another path (nothing was changed)"
        )
    if not listed:
        directory.mkdir(parents=True, exist_ok=True)
        write_owner_marker(directory, stage, [*(marker[1] if marker else []), path.name])


def remove_owned(path: str | Path, stage: str) -> bool:
    """Delete the file ``path`` only if its directory's marker names ``stage`` and lists the file.

    The file is then dropped from the marker's list. Anything else (a user's file, another stage's, a
    directory) is left alone.

    Returns:
        True if the file was deleted.
    """
    path = Path(path)
    marker = _read_marker(path.parent)
    if marker is None or marker[0] != stage or path.name not in marker[1]:
        return False
    if not (path.is_file() or path.is_symlink()):
        return False
    path.unlink()
    write_owner_marker(path.parent, stage, [f for f in marker[1] if f != path.name])
    return True
