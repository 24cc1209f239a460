"""Writes the framefusion_smoke dataset: four tiny videos of a coloured square and two multiple-choice questions
about each (its colour, its motion), in data/questions.jsonl. Deterministic: running it again rewrites the same
frames. The videos are committed, so the smoke task needs no download and no run of this script.

    python examples/lmms_eval/make_dataset.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from framefusion.video.synthetic import write_video_frames

HERE = Path(__file__).resolve().parent
SIDE = 112  # one tile of the tiny models' processors: no resizing, a few video tokens per frame
FRAMES, FPS = 16, 8
SQUARE = 28
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
MOTIONS = {  # start and end of the square's top-left corner, (row, column)
    "left to right": ((42, 4), (42, 80)),
    "right to left": ((42, 80), (42, 4)),
    "top to bottom": ((4, 42), (80, 42)),
    "it does not move": ((42, 42), (42, 42)),
}
VIDEOS = (("red_right.mp4", "red", "left to right"), ("blue_left.mp4", "blue", "right to left"),
          ("green_down.mp4", "green", "top to bottom"), ("yellow_still.mp4", "yellow", "it does not move"))
LETTERS = "ABCD"


def background() -> np.ndarray:
    """A static grey checkerboard: its tokens repeat from frame to frame, so FrameFusion has something to merge."""
    rows, columns = np.mgrid[0:SIDE, 0:SIDE]
    shade = np.where(((rows // 14) + (columns // 14)) % 2 == 0, 150, 110).astype(np.uint8)
    return np.repeat(shade[:, :, None], 3, axis=2)


def frames_of(colour: str, motion: str) -> np.ndarray:
    (row0, column0), (row1, column1) = MOTIONS[motion]
    frames = np.empty((FRAMES, SIDE, SIDE, 3), dtype=np.uint8)
    for index in range(FRAMES):
        progress = index / (FRAMES - 1)
        row, column = round(row0 + (row1 - row0) * progress), round(column0 + (column1 - column0) * progress)
        frames[index] = background()
        frames[index, row:row + SQUARE, column:column + SQUARE] = COLOURS[colour]
    return frames


def question(video: str, text: str, options: list[str], answer: str) -> dict:
    return {"video": video, "question": text, "options": [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)],
            "answer": LETTERS[options.index(answer)]}


def main() -> None:
    (HERE / "videos").mkdir(exist_ok=True)
    (HERE / "data").mkdir(exist_ok=True)
    records = []
    for name, colour, motion in VIDEOS:
        write_video_frames(HERE / "videos" / name, frames_of(colour, motion), fps=FPS)
        records.append(question(name, "What colour is the square?", list(COLOURS), colour))
        records.append(question(name, "How does the square move?", list(MOTIONS), motion))
    with open(HERE / "data" / "questions.jsonl", "w", encoding="utf-8") as stream:
        for record in records:
            stream.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
