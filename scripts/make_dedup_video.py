"""Write the video the frame-dedup benchmark uses: the synthetic scene held still for its first half, then moving,
in lossless FFV1 (Matroska), so the still frames decode bit-identical.

    python scripts/make_dedup_video.py [--output still-then-moving.mkv] [--seconds 8] [--fps 8] [--size 384]
    framefusion bench still-then-moving.mkv --profiles baseline,dedup
"""

from __future__ import annotations

import argparse
from pathlib import Path

from framefusion.video.synthetic import render_still_then_moving_frames, write_video_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("still-then-moving.mkv"), help="where to write it (.mkv)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--size", type=int, default=384, help="width and height in pixels")
    arguments = parser.parse_args()
    frames = render_still_then_moving_frames(seconds=arguments.seconds, fps=arguments.fps, width=arguments.size,
                                             height=arguments.size)
    path = write_video_frames(arguments.output, frames, fps=arguments.fps, codec="ffv1")
    print(f"wrote {path}: {len(frames)} frames ({len(frames) // 2} still), {arguments.size}x{arguments.size}, ffv1")


if __name__ == "__main__":
    main()
