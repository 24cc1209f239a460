"""HoliTom, EarlyTom and their inner-LLM merge: equal to their official code on recorded cases
(tests/data/holitom_earlytom, CPU float32), and the edge cases that code does not show."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from framefusion.errors import InputError
from framefusion.methods import earlytom, holitom, inner_merge

CASES = torch.load(Path(__file__).parent / "data" / "holitom_earlytom" / "cases.pt", weights_only=False)
ATOL = 1e-5


def recorded(kind: str):
    return pytest.mark.parametrize("case", CASES[kind], ids=[case["name"] for case in CASES[kind]])


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def neighbour_similarity(features: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(features, p=2, dim=-1)
    return F.cosine_similarity(unit[:-1], unit[1:], dim=-1)


# ---- HoliTom ---------------------------------------------------------------------------------------------------------

@recorded("holitom_windows")
def test_static_windows_match_official(case):
    windows, reduced = holitom.static_windows(case["similarity"], case["tau"], case["max_window"])
    assert windows == case["windows"]
    assert reduced == case["reduced"]


@recorded("holitom_reduce")
def test_reduce_matches_official(case):
    features, attention = case["features"].clone(), case["attention"].clone()
    torch.manual_seed(case["seed"])  # the density noise, drawn as the official code draws it
    tokens = holitom.reduce(features, attention, newline=case["newline"], **case["settings"])
    assert_same(tokens, case["tokens"])
    assert torch.equal(features, case["features"]) and torch.equal(attention, case["attention"])
    settings = case["settings"]
    windows, reduced = holitom.static_windows(neighbour_similarity(features), settings["tau"], settings["max_window"])
    assert (windows, reduced) == (case["windows"], case["reduced"])


def best_split_by_enumeration(similarity: torch.Tensor, tau: float, max_window: int) -> int:
    frames = similarity.shape[0] + 1
    best = 0
    for cuts in itertools.product([False, True], repeat=frames - 1):
        bounds = [0] + [index + 1 for index, cut in enumerate(cuts) if cut] + [frames]
        windows = [(start, end - 1) for start, end in itertools.pairwise(bounds)]
        if any(end - start + 1 > max_window for start, end in windows):
            continue
        removed = sum(int((similarity[start:end] > tau).all(dim=0).sum()) * (end - start)
                      for start, end in windows if end > start)
        best = max(best, removed)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_static_windows_are_optimal(seed):
    generator = torch.Generator().manual_seed(seed)
    similarity = torch.rand(7, 5, generator=generator) * 0.4 + 0.6
    for max_window in (2, 3, 1024):
        windows, reduced = holitom.static_windows(similarity, 0.75, max_window)
        assert reduced == best_split_by_enumeration(similarity, 0.75, max_window)
        assert [start for start, _ in windows] == [0] + [end + 1 for _, end in windows[:-1]]
        assert windows[-1][1] == 7 and all(end - start < max_window for start, end in windows)


def test_static_windows_extremes():
    assert holitom.static_windows(torch.zeros(0, 9), 0.8) == ([(0, 0)], 0)
    assert holitom.static_windows(torch.zeros(4, 9), 0.8) == ([(index, index) for index in range(5)], 0)
    assert holitom.static_windows(torch.ones(4, 9), 0.8) == ([(0, 4)], 9 * 4)
    assert holitom.static_windows(torch.ones(4, 9), 0.8, max_window=2) == ([(0, 1), (2, 3), (4, 4)], 18)
    assert holitom.static_windows(torch.ones(4, 9), 0.8, max_window=1) == ([(index, index) for index in range(5)], 0)
    with pytest.raises(InputError):
        holitom.static_windows(torch.ones(4, 9), 0.8, max_window=0)


def test_reduce_counts_and_layouts():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(6, 16, 8, generator=generator)
    features[:, :10] = features[0, :10]  # 10 positions static across the whole video
    attention = torch.rand(6, 16, generator=generator)
    newline = torch.full((8,), 7.0)
    tokens = holitom.reduce(features, attention, retain_ratio=0.2, tau=0.8, layout="one_token", newline=newline)
    ratio = 0.2 / ((96 - 50) / 96)
    assert len(tokens) == round(10 * ratio) + 6 * math.ceil(6 * ratio) + 1
    assert torch.equal(tokens[-1], newline) and not (tokens[:-1] == 7.0).all(dim=1).any()
    grid = holitom.reduce(features, attention, retain_ratio=0.2, tau=0.8, layout="grid", newline=newline)
    is_newline = (grid == 7.0).all(dim=1)
    assert int((~is_newline).sum()) == len(tokens) - 1 and is_newline[-1] and not is_newline[0]
    assert not (is_newline[1:] & is_newline[:-1]).any()  # never an empty row


def test_reduce_one_frame_keeps_the_most_attended():
    features = torch.arange(16 * 2, dtype=torch.float32).reshape(1, 16, 2)
    attention = torch.zeros(1, 16)
    attention[0, [14, 3, 9]] = torch.tensor([3.0, 2.0, 1.0])
    newline = torch.tensor([-1.0, -1.0])
    one_token = holitom.reduce(features, attention, retain_ratio=0.15, tau=0.8, layout="one_token", newline=newline)
    assert torch.equal(one_token, torch.cat([features[0, [3, 9, 14]], newline[None]]))
    grid = holitom.reduce(features, attention, retain_ratio=0.15, tau=0.8, layout="grid", newline=newline)
    assert torch.equal(grid, torch.stack([features[0, 3], newline, features[0, 9], newline, features[0, 14], newline]))


def test_reduce_rejects_bad_layouts():
    features, attention = torch.randn(2, 10, 4), torch.rand(2, 10)
    with pytest.raises(InputError):
        holitom.reduce(features, attention, retain_ratio=0.2, tau=0.8, layout="frame", newline=torch.zeros(4))
    with pytest.raises(InputError):  # rows of a 10-token frame are not defined
        holitom.reduce(features, attention, retain_ratio=0.2, tau=0.8, layout="grid", newline=torch.zeros(4))


def test_density_peaks_skip_repeated_tokens():
    distinct = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    tokens = distinct.repeat(4, 1)  # every token four times: equal densities
    torch.manual_seed(0)
    merged, peaks = holitom.density_peak_merge(tokens, 3, knn=4)
    assert len({index % 3 for index in peaks.tolist()}) == 3
    assert torch.allclose(merged, distinct[peaks % 3])  # members equal to their peak: merging changes nothing


# ---- EarlyTom --------------------------------------------------------------------------------------------------------

@recorded("earlytom_merge_frames")
def test_merge_frames_matches_official(case):
    merged, merged_scores, groups = earlytom.merge_frames(case["hidden"], case["scores"], **case["settings"])
    assert groups == case["groups"]
    assert_same(merged, case["merged"])
    assert_same(merged_scores, case["merged_scores"])


@recorded("earlytom_select_tokens")
def test_select_tokens_matches_official(case):
    tokens = earlytom.select_tokens(case["features"], case["scores"], case["groups"],
                                    retain_ratio=case["retain_ratio"], frames_in=case["frames_in"])
    assert_same(tokens, case["tokens"])


def alike_frames(frames: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 9, 4, generator=generator) + 1e-3 * torch.randn(frames, 9, 4, generator=generator)


def test_merge_frames_one_and_two_frames():
    hidden, scores = alike_frames(1), torch.rand(1, 9)
    assert earlytom.merge_frames(hidden, scores, tau=0.6, max_window=6, ema=0.9, regroup=True) == (hidden, scores,
                                                                                                   [(0, 0)])
    hidden, scores = alike_frames(2), torch.rand(2, 9)
    merged, merged_scores, groups = earlytom.merge_frames(hidden, scores, tau=0.6, max_window=6, ema=0.9,
                                                          regroup=False)
    assert groups == [(0, 1)] and torch.equal(merged, hidden) and torch.equal(merged_scores, scores)


def test_merge_frames_segments_stay_under_max_window():
    hidden = alike_frames(12)
    merged, _, groups = earlytom.merge_frames(hidden, torch.rand(12, 9), tau=0.6, max_window=6, ema=0.9,
                                              regroup=False)
    assert groups == [(0, 4), (5, 9), (10, 11)]
    # Segments of 5 keep their ends; their 3 middle frames become 1 or 2 (the last one is always lost).
    assert 2 * (2 + 1) + 2 <= len(merged) <= 2 * (2 + 2) + 2
    assert torch.equal(merged[0], hidden[0]) and torch.equal(merged[-1], hidden[-1])


def test_mix_middle_frames_loses_the_last_frame():
    frames = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(1))
    scores = torch.rand(2, 9)
    never, never_scores = earlytom.mix_middle_frames(frames, scores, torch.tensor(1.5))
    assert torch.equal(never, frames[:1]) and torch.equal(never_scores, scores[:1])
    always, _ = earlytom.mix_middle_frames(frames, scores, torch.tensor(-1.5))  # weight 1 on the first frame
    assert torch.equal(always, frames[:1])
    one, one_scores = earlytom.mix_middle_frames(frames[:1], scores[:1], torch.tensor(0.0))
    assert torch.equal(one, frames[:1]) and torch.equal(one_scores, scores[:1])


def test_merge_frames_regroups_the_merged_frames():
    hidden = torch.cat([alike_frames(7, seed=0), alike_frames(7, seed=1)])
    merged, _, groups = earlytom.merge_frames(hidden, torch.rand(14, 9), tau=0.6, max_window=8, ema=0.9,
                                              regroup=True)
    assert groups[0][0] == 0 and groups[-1][1] == len(merged) - 1
    assert all(start == previous_end + 1 for (_, previous_end), (start, _) in itertools.pairwise(groups))


def test_select_tokens_counts():
    features, scores = torch.randn(8, 25, 4), torch.rand(8, 25)
    groups = [(0, 0), (1, 2), (3, 7)]
    tokens = earlytom.select_tokens(features, scores, groups, retain_ratio=0.1, frames_in=8)
    # 25 * 0.1 = 2.5: end frames keep ceil = 3, middle frames round-half-even = 2.
    assert len(tokens) == 3 + 2 * 3 + (3 + 3 * 2 + 3)
    tokens = earlytom.select_tokens(features, scores, groups, retain_ratio=0.1, frames_in=16)  # r = 0.2
    assert len(tokens) == 5 + 2 * 5 + (5 + 3 * 5 + 5)
    with pytest.raises(InputError):
        earlytom.select_tokens(features, scores, groups, retain_ratio=0.1, frames_in=7)


def test_best_per_run_takes_each_runs_most_attended():
    frames = torch.arange(10, dtype=torch.float32).reshape(1, 10, 1)
    scores = torch.tensor([[0.0, 5, 0, 0, 0, 9, 1, 0, 0, 2]])  # runs of 4, 3, 3: positions 0-3, 4-6, 7-9
    assert earlytom.best_per_run(frames, scores, 3).flatten().tolist() == [1.0, 5.0, 9.0]


# ---- inner-LLM merge -------------------------------------------------------------------------------------------------

@recorded("inner_merge")
def test_inner_merge_matches_official(case):
    hidden = case["hidden"].clone()
    merged, keep = inner_merge.merge(hidden, case["attention"], start=case["start"], length=case["length"],
                                     ratio=case["ratio"])
    assert torch.equal(keep, case["keep"])
    assert_same(merged, case["merged"])
    assert torch.equal(hidden, case["hidden"])


def test_inner_merge_halves_in_order():
    hidden = torch.tensor([[[9.0, 0.0], [1.0, 0.0], [2.0, 0.0], [4.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    attention = torch.tensor([0.0, 0.1, 0.2, 0.9, 0.8, 0.0])  # span 1..4 keeps 3 (x axis) and 4 (y axis)
    merged, keep = inner_merge.merge(hidden, attention, start=1, length=4, ratio=0.5)
    assert keep.tolist() == [0, 3, 4, 5]
    # 1 and 2 both join 3: ((4 + 1) / 2 + 2) / 2 = 2.25, not the mean 7/3.
    assert merged[0, 1].tolist() == [2.25, 0.0]
    assert torch.equal(merged[0, [0, 2, 3]], hidden[0, [0, 4, 5]])


def test_inner_merge_ratio_extremes_and_checks():
    hidden, attention = torch.randn(1, 12, 4), torch.rand(12)
    merged, keep = inner_merge.merge(hidden, attention, start=2, length=6, ratio=0.0)
    assert torch.equal(merged, hidden) and keep.tolist() == list(range(12))
    merged, keep = inner_merge.merge(hidden, attention, start=2, length=6, ratio=1.0)
    assert keep.tolist() == [0, 1, 8, 9, 10, 11] and torch.equal(merged, hidden[:, keep])
    merged, keep = inner_merge.merge(hidden, attention, start=3, length=0, ratio=0.5)
    assert torch.equal(merged, hidden)
    with pytest.raises(InputError):
        inner_merge.merge(hidden, attention, start=8, length=6, ratio=0.5)
    with pytest.raises(InputError):
        inner_merge.merge(hidden, attention, start=2, length=6, ratio=1.5)
