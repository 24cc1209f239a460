"""The vision-feature cache: exact round trips of every family's encoder output, keys, damage, limits, concurrency."""

from __future__ import annotations

import errno
import os
import time
import warnings

import numpy as np
import pytest
import torch

from framefusion.pipeline import feature_cache
from framefusion.pipeline.feature_cache import CachedVideo, CacheWarning, FeatureCache, cache_key, video_fingerprint
from framefusion.model_zoo import load_model
from framefusion.runtime.transformers_compat import processor_videos

CLIP = {"timestamps": [0.0, 0.5], "sampled_fps": 2.0, "frame_shape": [2, 8, 8, 3]}


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def entry(value: float = 1.0, size: int = 4) -> CachedVideo:
    return CachedVideo("video", {"pooled": torch.full((size, 8), float(value)), "grid": None}, dict(CLIP), {"model": "m"})


def encoder_output(family: str):
    loaded = load_model(f"random:tiny-{family}", dtype=torch.float32, device="cpu")
    from framefusion.families import find_family

    frames = np.random.default_rng(0).integers(0, 255, (4, 112, 112, 3), dtype=np.uint8)
    metadata = {"fps": 2.0, "total_num_frames": 4, "frames_indices": list(range(4))}
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what?"}]}]
    prompt = loaded.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = loaded.processor(text=[prompt], videos=processor_videos(frames), video_metadata=[metadata],
                              do_sample_frames=False, return_tensors="pt")
    video_inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    with torch.inference_mode():
        return find_family(loaded.model).encode_video(loaded.model, video_inputs)


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen3-vl", "llava-onevision", "internvl", "smolvlm"])
def test_every_family_encoder_output_comes_back_identical(tmp_path, family):
    modality, features = encoder_output(family)
    cache = FeatureCache(tmp_path)
    assert cache.store("k" * 40, CachedVideo(modality, features, dict(CLIP), {"frames_encoded": 4}))
    loaded = cache.load("k" * 40)
    assert loaded.modality == modality and loaded.clip == CLIP and loaded.details == {"frames_encoded": 4}
    assert type(loaded.features) is type(features)
    assert same(dict(features.items()), dict(loaded.features.items()))


def test_the_key_changes_with_each_thing_that_changes_the_features(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"0" * 3_000_000)
    base = dict(video=video_fingerprint(video), sampling={"frames": 8}, stages=[], model="m", dtype="float32",
                device_type="cpu")
    key = cache_key(**base)
    assert cache_key(**base) == key
    for change in ({"sampling": {"frames": 16}}, {"stages": [{"kind": "frame-dedup"}]}, {"model": "other"},
                   {"dtype": "bfloat16"}, {"device_type": "cuda"}):
        assert cache_key(**{**base, **change}) != key, change
    # The same size and time but other content at the end of the file.
    with video.open("r+b") as handle:
        handle.seek(-10, os.SEEK_END)
        handle.write(b"1" * 10)
    status = video.stat()
    os.utime(video, ns=(status.st_atime_ns, base["video"]["mtime_ns"]))
    assert cache_key(**{**base, "video": video_fingerprint(video)}) != key


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_entry_is_a_miss_with_one_warning_and_is_dropped(tmp_path, damage):
    cache = FeatureCache(tmp_path)
    cache.store("d" * 40, entry())
    path = next(tmp_path.glob("*/*.safetensors"))
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(300), "empty": b""}[damage])
    with pytest.warns(CacheWarning, match="damaged"):
        assert cache.load("d" * 40) is None
    assert not path.exists()
    assert cache.load("d" * 40) is None  # now simply absent


def test_an_unwritable_or_full_folder_warns_once_and_goes_on(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cache = FeatureCache(blocker / "cache")
    with pytest.warns(CacheWarning, match="cannot write"):
        assert not cache.store("u" * 40, entry())
    assert cache.load("u" * 40) is None

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    full = FeatureCache(tmp_path / "full")
    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.warns(CacheWarning, match="No space left"):
        assert not full.store("f" * 40, entry())
    assert not list((tmp_path / "full").glob("*/*"))  # no partial file left behind


def test_least_recently_used_entries_go_first_when_the_folder_is_full(tmp_path):
    probe = FeatureCache(tmp_path / "probe")
    probe.store("p" * 40, entry(size=1000))
    one_entry = probe.info().bytes
    cache = FeatureCache(tmp_path / "cache", max_bytes=int(2.5 * one_entry))
    for index, key in enumerate(["a" * 40, "b" * 40]):
        cache.store(key, entry(index, size=1000))
        os.utime(cache._path(key), (time.time() - 100 + index, time.time() - 100 + index))
    assert cache.load("a" * 40) is not None  # a is now the most recently used
    cache.store("c" * 40, entry(2, size=1000))
    assert cache.load("b" * 40) is None
    assert cache.load("a" * 40) is not None and cache.load("c" * 40) is not None
    assert cache.info().entries == 2 and cache.info().bytes <= cache.max_bytes


def test_clear_by_model_and_by_age(tmp_path):
    cache = FeatureCache(tmp_path)
    for key, model in (("a" * 40, "m1"), ("b" * 40, "m2"), ("c" * 40, "m2")):
        cache.store(key, CachedVideo("video", torch.ones(2), dict(CLIP), {"model": model}))
    old = time.time() - 3 * 86400
    os.utime(cache._path("c" * 40), (old, old))
    assert cache.clear(older_than_seconds=86400) == 1
    assert cache.clear(model="m2") == 1
    assert [path.stem for path, _, _ in cache._entries()] == ["a" * 40]
    assert cache.clear() == 1 and cache.info().entries == 0


def pooled_entry(value: float) -> CachedVideo:
    return CachedVideo("video", {"pooled": torch.full((20_000, 8), value)}, {}, {})


def test_two_writers_of_one_entry_caught_mid_write_never_expose_a_partial_one(tmp_path, monkeypatch):
    """Two writers of one key, each with its own FeatureCache as two processes would have, are both held half-way
    through writing their file while a third reader loads the key; then both finish and their renames race."""
    import threading

    import safetensors.torch

    key = "s" * 40
    assert FeatureCache(tmp_path).store(key, pooled_entry(0.0))
    half_written = threading.Barrier(3, timeout=60)  # both writers and the reader
    go_on = threading.Barrier(3, timeout=60)

    def save_in_two_halves(tensors, filename, metadata=None):
        data = safetensors.torch.save(tensors, metadata=metadata)
        with open(filename, "wb") as stream:
            stream.write(data[: len(data) // 2])
            stream.flush()
            half_written.wait()
            go_on.wait()
            stream.write(data[len(data) // 2:])

    monkeypatch.setattr(safetensors.torch, "save_file", save_in_two_halves)
    stored = {}

    def write(value: float) -> None:
        stored[value] = FeatureCache(tmp_path).store(key, pooled_entry(value))

    writers = [threading.Thread(target=write, args=(value,)) for value in (1.0, 2.0)]
    for writer in writers:
        writer.start()
    reader = FeatureCache(tmp_path)
    try:
        half_written.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a damaged-entry warning is a failure here
            during = reader.load(key)
        assert during is not None and torch.equal(during.features["pooled"], torch.zeros(20_000, 8))
        assert reader.info().entries == 1  # the halves are not entries
    finally:
        go_on.wait()
        for writer in writers:
            writer.join()
    assert stored == {1.0: True, 2.0: True}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        after = reader.load(key)
    pooled = after.features["pooled"]
    assert pooled.shape == (20_000, 8) and float(pooled[0, 0]) in (1.0, 2.0) and bool((pooled == pooled[0, 0]).all())
    assert [path.name for path in tmp_path.glob("*/*")] == [f"{key}.safetensors"]  # no temporary file left


def test_the_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("FRAMEFUSION_FEATURE_CACHE")
    monkeypatch.setenv("FRAMEFUSION_CACHE", str(tmp_path / "here"))
    assert feature_cache.default_cache_folder() == tmp_path / "here" / "features"
    monkeypatch.setenv("FRAMEFUSION_FEATURE_CACHE", str(tmp_path / "features"))
    assert FeatureCache().folder == tmp_path / "features"
