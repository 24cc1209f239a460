"""The folder side of captioning: which files of a folder are videos (by extension), found without following link
loops, and the checks on the folder itself. No model, no decoding."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from framefusion.errors import InputError

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")


@dataclass(frozen=True)
class FolderListing:
    """videos: files with a video extension; others: every other file. Both sorted, paths relative to the folder."""

    videos: tuple[str, ...]
    others: tuple[str, ...]


def is_video_name(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_EXTENSIONS


def find_videos(folder: str | os.PathLike, *, recursive: bool = False, exclude: tuple[Path, ...] = ()) -> FolderListing:
    """The files of `folder` (and its subfolders with recursive), split by extension, hidden files left out.

    exclude: files never listed (the output file, when it lies inside the folder).
    """
    root = Path(folder)
    excluded = {Path(os.path.realpath(path)) for path in exclude}
    pattern = root.rglob("*") if recursive else root.iterdir()
    videos, others = [], []
    for path in pattern:
        relative = path.relative_to(root)
        # A video-named entry that is no regular file (FIFO, link loop, dangling link) stays listed: reading it
        # fails with a clear error record instead of the file vanishing from the batch unnoticed.
        if any(part.startswith(".") for part in relative.parts) or path.is_dir():
            continue
        if not path.is_file() and not is_video_name(path.name):
            continue
        if Path(os.path.realpath(path)) in excluded:  # realpath: a link loop must not raise here
            continue
        (videos if is_video_name(path.name) else others).append(relative.as_posix())
    return FolderListing(tuple(sorted(videos)), tuple(sorted(others)))


def check_folder(folder: str | os.PathLike) -> Path:
    path = Path(folder)
    if not path.exists():
        raise InputError(f"{path}: no such folder; check the path")
    if not path.is_dir():
        raise InputError(f"{path}: not a folder; pass the folder that holds the videos (use `framefusion ask` for one file)")
    return path
