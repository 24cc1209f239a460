"""VidCom2 selection: the masks vLLM computes on recorded inputs (tests/data/vidcom2), and the edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framefusion.errors import InputError
from framefusion.methods import vidcom2

RECORDED = torch.load(Path(__file__).parent / "data" / "vidcom2" / "cases.pt")["cases"]
WITHOUT_TIES = [case for case in RECORDED if not case["ties"]]
WITH_TIES = [case for case in RECORDED if case["ties"]]


def frames_of(case) -> int:
    return case["embeddings"].shape[0] // case["per_frame"]


def test_the_recording_is_from_the_pinned_vllm_file():
    reference = torch.load(Path(__file__).parent / "data" / "vidcom2" / "cases.pt")["reference"]
    assert reference["commit"] == "0f17ee061e413bf8ab7927f926f69cdff24dc63e"
    assert len(WITHOUT_TIES) >= 10 and len(WITH_TIES) >= 1


@pytest.mark.parametrize("case", WITHOUT_TIES, ids=lambda case: case["name"])
def test_the_mask_equals_vllms(case):
    embeddings = case["embeddings"]
    before = embeddings.clone()
    mask = vidcom2.keep_mask(embeddings, case["per_frame"], case["pruning_rate"])
    assert mask.dtype == torch.bool and mask.shape == case["mask"].shape
    assert torch.equal(mask, case["mask"])
    assert torch.equal(embeddings, before)


@pytest.mark.parametrize("case", WITH_TIES, ids=lambda case: case["name"])
def test_on_tied_scores_the_count_and_the_scores_kept_equal_vllms(case):
    # Which of two equal scores wins is unspecified; how many tokens and which scores are kept is not.
    mask = vidcom2.keep_mask(case["embeddings"], case["per_frame"], case["pruning_rate"])
    redundancy, _ = vidcom2._redundancy(case["embeddings"], frames_of(case), case["per_frame"])
    redundancy = redundancy.reshape(-1)
    assert int(mask.sum()) == case["kept_count"]
    assert torch.equal(redundancy[mask].sort().values, redundancy[case["mask"]].sort().values)


@pytest.mark.parametrize("case", RECORDED, ids=lambda case: case["name"])
def test_kept_count_equals_vllms(case):
    assert vidcom2.kept_count(frames_of(case), case["per_frame"], case["pruning_rate"]) == case["kept_count"]


def test_kept_count_truncates_and_keeps_at_least_a_token_per_frame():
    assert vidcom2.kept_count(10, 100, 0.9) == 99  # 1000 * (1 - 0.9) = 99.99999999999997
    assert vidcom2.kept_count(8, 4, 0.99) == 8  # int(0.32) = 0: the floor is T tokens, not a frame as in EVS
    assert vidcom2.kept_count(6, 12, 0.0) == 72
    assert vidcom2.kept_count(3, 5, 0.5) == 7


def test_the_recordings_exercise_both_directions_of_the_reconciliation():
    # Step 7 drops tokens when the frame budgets add up to more than the count, and adds them when less.
    directions = set()
    for case in WITHOUT_TIES:
        frames, per_frame = frames_of(case), case["per_frame"]
        _, to_video_centre = vidcom2._redundancy(case["embeddings"], frames, per_frame)
        budgets = int(vidcom2._frame_budgets(to_video_centre, per_frame, case["pruning_rate"]).sum())
        directions.add((budgets > case["kept_count"]) - (budgets < case["kept_count"]))
    assert {-1, 1} <= directions


def test_the_reconciliation_can_leave_a_frame_empty():
    case = next(case for case in WITHOUT_TIES if case["name"] == "a frame left empty")
    mask = vidcom2.keep_mask(case["embeddings"], case["per_frame"], case["pruning_rate"])
    assert (mask.reshape(-1, case["per_frame"]).sum(dim=1) == 0).any()


def test_rate_zero_keeps_every_token():
    embeddings = torch.randn(7 * 10, 12, generator=torch.Generator().manual_seed(1))
    assert vidcom2.keep_mask(embeddings, per_frame=10, pruning_rate=0.0).all()


def test_one_frame_keeps_the_tokens_farthest_from_its_mean_in_the_quiet_channels():
    # Channels 0 and 1 vary little and decide; channels 2 and 3 are loud and would pick other tokens.
    quiet = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [0.6, 0.5], [1.0, 0.05]])
    loud = torch.tensor([[40.0, -30.0], [-50.0, 20.0], [30.0, 60.0], [0.0, 0.0], [-20.0, -50.0]])
    embeddings = torch.cat([quiet, loud], dim=1)
    mask = vidcom2.keep_mask(embeddings, per_frame=5, pruning_rate=0.7)  # keeps int(1.5) = 1
    assert mask.tolist() == [False, False, False, True, False]


def test_identical_tokens_still_give_the_exact_count():
    for embeddings in (torch.ones(4 * 6, 8), torch.zeros(4 * 6, 8)):
        mask = vidcom2.keep_mask(embeddings, per_frame=6, pruning_rate=0.6)
        assert int(mask.sum()) == vidcom2.kept_count(4, 6, 0.6)


def test_bfloat16_input_gives_the_exact_count():
    embeddings = torch.randn(8 * 9, 16, generator=torch.Generator().manual_seed(2)).bfloat16()
    mask = vidcom2.keep_mask(embeddings, per_frame=9, pruning_rate=0.8)
    assert int(mask.sum()) == vidcom2.kept_count(8, 9, 0.8)


def test_an_empty_video_gives_an_empty_mask():
    assert vidcom2.keep_mask(torch.zeros(0, 8), per_frame=4, pruning_rate=0.5).shape == (0,)
    assert vidcom2.keep_mask(torch.zeros(0, 8), per_frame=0, pruning_rate=0.5).shape == (0,)


def test_settings_out_of_range_are_refused():
    with pytest.raises(InputError, match="pruning_rate"):
        vidcom2.keep_mask(torch.randn(8, 4), per_frame=4, pruning_rate=1.0)
    with pytest.raises(InputError, match="per_frame"):
        vidcom2.keep_mask(torch.randn(10, 4), per_frame=4, pruning_rate=0.5)
