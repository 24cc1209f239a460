"""Seeded fuzzing of the two paths that read untrusted files: video reading and profile loading.

Property: whatever the bytes, `read_video` returns a valid clip or raises one of our own errors (one line), and
`read_profiles_file` returns profiles or raises ProfileError (one line, naming the file). Videos are decoded in a
separate worker process, so a decoder that aborts or hangs fails the test instead of killing the test run.

Deterministic and bounded by default (derandomized hypothesis, FUZZ_EXAMPLES examples a test). The longer run:
`python scripts/fuzz_long.py` (it sets FRAMEFUSION_FUZZ_EXAMPLES, FRAMEFUSION_FUZZ_SEED, FRAMEFUSION_FUZZ_REPORT).
"""

from __future__ import annotations

import collections
import json
import os
import select
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import videos
from framefusion.errors import ProfileError
from framefusion.profiles.catalog import Profile, read_profiles_file

FUZZ_EXAMPLES = int(os.environ.get("FRAMEFUSION_FUZZ_EXAMPLES", "300"))
FUZZ_SEED = os.environ.get("FRAMEFUSION_FUZZ_SEED")
REPORT_PATH = os.environ.get("FRAMEFUSION_FUZZ_REPORT")
# A read of a file of a few KB takes milliseconds; this long means the decoder hangs.
DECODE_TIMEOUT_SECONDS = 30.0
BUILTIN_PROFILES = Path(__file__).resolve().parent.parent / "profiles" / "builtin.yaml"

FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=FUZZ_SEED is None,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Outcomes by path and kind, for the reliability table (written when FRAMEFUSION_FUZZ_REPORT is set).
OUTCOMES: collections.Counter[tuple[str, str]] = collections.Counter()


# ------------------------------------------------------------------------------------------------- mutations

# Each mutation is (kind, where as a fraction of the size, argument).
mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(None)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("overwrite"), st.floats(0, 1), st.binary(min_size=1, max_size=512)),
    st.tuples(st.just("zero_run"), st.floats(0, 1), st.integers(1, 1024)),
    st.tuples(st.just("duplicate"), st.floats(0, 1), st.floats(0, 1)),
)
mutations = st.lists(mutation, min_size=1, max_size=4)


def mutate(data: bytes, changes: list[tuple[str, float, Any]]) -> bytes:
    """Apply the mutations in order. Positions are fractions of the current length, so any list applies."""
    buffer = bytearray(data)
    for kind, where, argument in changes:
        at = min(len(buffer), int(where * len(buffer)))
        if kind == "truncate":
            del buffer[at:]
        elif kind == "flip" and at < len(buffer):
            buffer[at] ^= argument
        elif kind == "insert":
            buffer[at:at] = argument
        elif kind == "overwrite":
            buffer[at:at + len(argument)] = argument
        elif kind == "zero_run":
            end = min(len(buffer), at + argument)
            buffer[at:end] = bytes(end - at)
        elif kind == "duplicate":
            source = min(len(buffer), int(argument * len(buffer)))
            buffer[at:at] = buffer[source:source + 256]
    return bytes(buffer)


def test_mutate_is_deterministic_and_does_what_it_says():
    data = bytes(range(100))
    assert mutate(data, [("truncate", 0.5, None)]) == data[:50]
    assert mutate(data, [("flip", 0.0, 0xFF)])[0] == 0xFF
    assert mutate(data, [("insert", 0.1, b"xyz")]) == data[:10] + b"xyz" + data[10:]
    assert mutate(data, [("zero_run", 0.9, 50)]) == data[:90] + bytes(10)
    assert mutate(b"", [("flip", 0.5, 3), ("duplicate", 0.5, 0.5)]) == b""


# --------------------------------------------------------------------------------------------- decode sandbox

WORKER = textwrap.dedent("""
    import json, sys, traceback
    import numpy as np
    from framefusion.errors import FrameFusionError
    from framefusion.video import read_video

    for line in sys.stdin:
        request = json.loads(line)
        try:
            clip = read_video(request["path"], num_frames=request["frames"], backend=request["backend"])
            frames = clip.frames
            valid = (frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[0] == request["frames"]
                     and frames.shape[3] == 3 and min(frames.shape[1:3]) >= 1
                     and list(clip.timestamps) == sorted(clip.timestamps))
            answer = {"outcome": "clip" if valid else "invalid clip",
                      "detail": f"frames {frames.dtype} {frames.shape}, timestamps {clip.timestamps}"}
        except FrameFusionError as error:
            answer = {"outcome": "our error", "detail": type(error).__name__ + ": " + str(error)}
        except BaseException as error:
            answer = {"outcome": "escaped", "detail": traceback.format_exc()}
        sys.stdout.write("@@" + json.dumps(answer) + "\\n")
        sys.stdout.flush()
""")


class DecodeSandbox:
    """A worker process that runs read_video on request; an abort or a hang is reported, never inherited."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.pending = b""

    def _start(self) -> None:
        environment = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environment)
        self.pending = b""

    def read(self, path: Path, backend: str, frames: int = 3) -> dict[str, str]:
        """{"outcome": "clip" | "invalid clip" | "our error" | "escaped" | "crashed" | "hung", "detail": ...}."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        request = json.dumps({"path": str(path), "backend": backend, "frames": frames}) + "\n"
        self.process.stdin.write(request.encode())
        self.process.stdin.flush()
        return self._answer()

    def _answer(self) -> dict[str, str]:
        stdout = self.process.stdout.fileno()
        while True:
            while b"\n" in self.pending:
                line, self.pending = self.pending.split(b"\n", 1)
                if line.startswith(b"@@"):  # other lines are a library's chatter on stdout
                    return json.loads(line[2:])
            ready, _, _ = select.select([stdout], [], [], DECODE_TIMEOUT_SECONDS)
            if not ready:
                self.stop()
                return {"outcome": "hung", "detail": f"no answer in {DECODE_TIMEOUT_SECONDS} s"}
            chunk = os.read(stdout, 65536)
            if not chunk:
                code = self.process.wait()
                self.process = None
                return {"outcome": "crashed", "detail": f"the decoding process died (exit status {code})"}
            self.pending += chunk

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def sandbox():
    worker = DecodeSandbox()
    yield worker
    worker.stop()


class SeedVideos(dict):
    """name -> bytes, printed by name only (hypothesis prints the arguments of a failing example)."""

    def __repr__(self) -> str:
        return f"SeedVideos({', '.join(self)})"


@pytest.fixture(scope="module")
def seed_videos(tmp_path_factory) -> SeedVideos:
    """Small real videos in the containers users have: MP4 (index at the end and at the start), MKV, WebM, TS."""
    folder = tmp_path_factory.mktemp("seeds")
    small = dict(seconds=1.0, fps=8, width=32, height=24)
    paths = {
        "mp4": videos.write_indexed_video(folder, "clip.mp4", **small),
        "mp4_faststart": videos.write_indexed_video(folder, "fast.mp4", container_options={"movflags": "faststart"},
                                                    **small),
        "mkv": videos.write_indexed_video(folder, "clip.mkv", **small),
        "webm": videos.write_indexed_video(folder, "clip.webm", codec="libvpx-vp9", **small),
        "mpeg_ts": videos.write_indexed_video(folder, "clip.ts", **small),
        # Many keyframes: the reader seeks in it instead of decoding forward.
        "mp4_seekable": videos.write_indexed_video(folder, "seekable.mp4", seconds=6.0, fps=10, width=32, height=24,
                                                   keyframe_interval=5),
    }
    return SeedVideos((name, path.read_bytes()) for name, path in paths.items())


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzzed")


@pytest.fixture(scope="module", autouse=True)
def outcome_report():
    yield
    if REPORT_PATH:
        rows = [{"path": path, "outcome": outcome, "count": count} for (path, outcome), count in sorted(OUTCOMES.items())]
        Path(REPORT_PATH).write_text(json.dumps(rows, indent=1))


def check_decoded(answer: dict[str, str], label: str) -> None:
    OUTCOMES[("video", answer["outcome"])] += 1
    assert answer["outcome"] in ("clip", "our error"), f"{label}: {answer['outcome']}: {answer['detail']}"
    if answer["outcome"] == "our error":
        assert "\n" not in answer["detail"], answer["detail"]


def test_the_unmutated_seeds_are_read(sandbox, seed_videos, fuzz_folder):
    for name, data in seed_videos.items():
        path = fuzz_folder / f"seed_{name}"
        path.write_bytes(data)
        for backend in ("pyav", "decord"):
            assert sandbox.read(path, backend)["outcome"] == "clip", (name, backend)


@FUZZ
@given(seed=st.sampled_from(["mp4", "mp4_faststart", "mkv", "webm", "mpeg_ts", "mp4_seekable"]), changes=mutations,
       backend=st.sampled_from(["pyav", "decord"]))
def test_fuzzed_video_gives_a_clip_or_our_error(sandbox, seed_videos, fuzz_folder, seed, changes, backend):
    path = fuzz_folder / f"fuzzed_{seed}"  # no extension: the content decides, as for a user's odd file
    path.write_bytes(mutate(seed_videos[seed], changes))
    check_decoded(sandbox.read(path, backend), f"{seed} {changes} {backend}")


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("frames", [3, 8])
def test_frames_stamped_out_of_order_still_give_ascending_times(sandbox, seed_videos, fuzz_folder, backend, frames):
    # Found by the long run (seed 2): a copy of the stream's first packets in its middle repeats early timestamps.
    path = fuzz_folder / "repeated_start.ts"
    path.write_bytes(mutate(seed_videos["mpeg_ts"], [("duplicate", 0.5, 0.0), ("duplicate", 0.75, 0.0625)]))
    check_decoded(sandbox.read(path, backend, frames=frames), "repeated start")


def test_sandbox_reports_a_crashing_decoder(tmp_path):
    # The sandbox itself must tell an abort apart from an answer, or the property above proves nothing.
    sandbox = DecodeSandbox()
    sandbox._start()
    sandbox.process.kill()
    sandbox.process.wait()
    assert sandbox._answer()["outcome"] == "crashed"


# ---------------------------------------------------------------------------------------------- profile files


@pytest.fixture(scope="module")
def builtin_yaml() -> bytes:
    return BUILTIN_PROFILES.read_bytes()


@FUZZ
@given(changes=mutations)
def test_fuzzed_profiles_file_gives_profiles_or_one_line_profile_error(builtin_yaml, fuzz_folder, changes):
    path = fuzz_folder / "profiles.yaml"
    path.write_bytes(mutate(builtin_yaml, changes))
    try:
        profiles = read_profiles_file(path)
    except ProfileError as error:
        OUTCOMES[("profiles", "our error")] += 1
        assert "\n" not in str(error) and str(error).startswith(str(path))
    else:
        OUTCOMES[("profiles", "profiles")] += 1
        assert all(isinstance(profile, Profile) for profile in profiles.values())
