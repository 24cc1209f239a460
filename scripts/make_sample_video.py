"""Write examples/sample.mp4: the synthetic scene (a red ball rolling along a road past a house while the sky
turns from blue to sunset orange), 6 s at 10 frames per second, 320x240, H.264.

    python scripts/make_sample_video.py [--output examples/sample.mp4]

The repository keeps the file; rerun this script only to change it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from framefusion.video.synthetic import write_synthetic_video
from framefusion.video import probe_video

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "examples" / "sample.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the video")
    arguments = parser.parse_args()
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    path = write_synthetic_video(arguments.output, seconds=6.0, fps=10, width=320, height=240, seed=0)
    info = probe_video(path)
    size_kb = path.stat().st_size / 1024
    print(f"wrote {path}: {info.duration:.1f} s, {info.fps:g} fps, {info.width}x{info.height}, {size_kb:.0f} KB")


if __name__ == "__main__":
    main()
