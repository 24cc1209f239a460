"""EVS (Efficient Video Sampling) selection, against a hand computation."""

from __future__ import annotations

import pytest
import torch

from framefusion import core


def test_kept_count_keeps_at_least_the_first_frame():
    assert core.evs_kept_count(frames=8, per_frame=4, pruning_rate=0.75) == 8
    assert core.evs_kept_count(frames=2, per_frame=4, pruning_rate=0.9) == 4  # int(0.8) < one frame
    assert core.evs_kept_count(frames=3, per_frame=3, pruning_rate=0.5) == 4  # int(4.5)


def test_the_most_changed_positions_are_kept_first_frame_always():
    # 3 frames x 2 positions, 2-d embeddings. Position 0 never changes; position 1 turns 90 degrees in frame 2, then
    # turns back half way in frame 3.
    embeddings = torch.tensor([
        [1.0, 0.0], [1.0, 0.0],      # frame 1
        [1.0, 0.0], [0.0, 1.0],      # frame 2: position 1 dissimilarity 1
        [1.0, 0.0], [1.0, 1.0],      # frame 3: position 1 dissimilarity 1 - cos(45 deg)
    ])
    keep = core.evs_keep_mask(embeddings, per_frame=2, pruning_rate=0.5)  # keeps max(2, int(3)) = 3
    assert keep.tolist() == [True, True, False, True, False, False]
    keep = core.evs_keep_mask(embeddings, per_frame=2, pruning_rate=0.3)  # keeps int(4.2) = 4
    assert keep.tolist() == [True, True, False, True, False, True]


def test_ties_keep_the_earlier_token():
    embeddings = torch.ones(4 * 3, 5)  # nothing changes: every later token ties at dissimilarity 0
    keep = core.evs_keep_mask(embeddings, per_frame=3, pruning_rate=0.5)  # keeps 6: frame 1, then frame 2
    assert keep.tolist() == [True] * 6 + [False] * 6


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.75, 0.99])
def test_keep_count_matches_the_rule(rate):
    keep = core.evs_keep_mask(torch.randn(16 * 9, 8), per_frame=9, pruning_rate=rate)
    assert int(keep.sum()) == core.evs_kept_count(16, 9, rate) and bool(keep[:9].all())
