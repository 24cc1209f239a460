"""Write the videos the frame-dedup benchmarks use.

Default: the synthetic scene held still for its first half, then moving, in lossless FFV1 (Matroska), so the still
frames decode bit-identical. --camera: camera-like footage instead, as a phone or a security camera records it: a
fixed camera filming a room with sensor noise (sigma --noise), still for the first half, then a small object (0.5% of
the frame) crossing, in lossy H.264 (crf 23), so that no two decoded frames are identical.

    python scripts/make_dedup_video.py [--output still-then-moving.mkv] [--seconds 8] [--fps 8] [--size 384]
    python scripts/make_dedup_video.py --camera --output camera-still-then-moving.mp4
    framefusion bench still-then-moving.mkv --profiles baseline,dedup
"""

from __future__ import annotations

import argparse
from pathlib import Path

from framefusion.video.synthetic import render_still_then_moving_frames, write_camera_video, write_video_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write it (default still-then-moving.mkv, or camera-still-then-moving.mp4)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--size", type=int, default=384, help="width and height in pixels (the synthetic scene)")
    parser.add_argument("--camera", action="store_true", help="camera-like lossy footage with sensor noise")
    parser.add_argument("--width", type=int, default=640, help="--camera: width in pixels")
    parser.add_argument("--height", type=int, default=360, help="--camera: height in pixels")
    parser.add_argument("--noise", type=float, default=2.0, help="--camera: sensor noise sigma (0-255 scale)")
    parser.add_argument("--still-fraction", type=float, default=0.5,
                        help="--camera: share of the video, from the start, in which nothing moves")
    arguments = parser.parse_args()
    if arguments.camera:
        output = arguments.output or Path("camera-still-then-moving.mp4")
        path = write_camera_video(output, seconds=arguments.seconds, fps=arguments.fps, width=arguments.width,
                                  height=arguments.height, noise=arguments.noise,
                                  still_fraction=arguments.still_fraction)
        print(f"wrote {path}: {round(arguments.seconds * arguments.fps)} frames, {arguments.width}x{arguments.height}, "
              f"H.264 crf 23, sensor noise {arguments.noise:g}, still for {arguments.still_fraction:.0%}")
        return
    output = arguments.output or Path("still-then-moving.mkv")
    frames = render_still_then_moving_frames(seconds=arguments.seconds, fps=arguments.fps, width=arguments.size,
                                             height=arguments.size)
    path = write_video_frames(output, frames, fps=arguments.fps, codec="ffv1")
    print(f"wrote {path}: {len(frames)} frames ({len(frames) // 2} still), {arguments.size}x{arguments.size}, ffv1")


if __name__ == "__main__":
    main()
