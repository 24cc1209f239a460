"""The algorithm core on hand-made tensors: budget, similarity, merge runs, ties, top-k branch, pruning."""

import math

import pytest
import torch

from framefusion.methods import framefusion as core


def budget_by_hand(sparsities, num_layers, cost):
    kept, spent = 1.0, 0.0
    for s in sparsities:
        kept *= 1 - s
        spent += kept
    left = num_layers * cost - spent
    ratio = left / ((num_layers - len(sparsities)) * kept)
    return 0.0 if ratio > 1 else 1 - ratio


@pytest.mark.parametrize(
    "sparsities,num_layers,cost",
    [([], 28, 0.3), ([0.5], 28, 0.3), ([0.5, 0.2], 28, 0.3), ([0.3, 0.2], 6, 0.5), ([0.9], 28, 0.3)],
)
def test_required_sparsity_matches_the_formula(sparsities, num_layers, cost):
    assert core.required_sparsity(sparsities, num_layers, cost) == pytest.approx(
        budget_by_hand(sparsities, num_layers, cost)
    )


def test_required_sparsity_first_step_is_one_minus_cost_and_full_cost_needs_nothing():
    assert core.required_sparsity([], 28, 0.3) == pytest.approx(0.7)
    assert core.required_sparsity([], 28, 1.0) == 0.0
    # Generous budget after a big merge: nothing more is required.
    assert core.required_sparsity([0.9], 28, 0.3) == 0.0


def test_required_sparsity_uses_the_model_depth():
    # Same history, different depth, different requirement: the budget is not hard-coded to 28 layers.
    assert core.required_sparsity([0.3], 4, 0.3) != pytest.approx(core.required_sparsity([0.3], 28, 0.3))
    assert core.required_sparsity([0.3], 4, 0.3) == pytest.approx(budget_by_hand([0.3], 4, 0.3))


def test_required_sparsity_spent_budget_is_clamped_not_raised():
    # 4 layers at cost 0.3 = 1.2 token-layers; two steps keeping almost everything overspend it.
    assert core.required_sparsity([0.01, 0.01], 4, 0.3) == 1.0


def frames_of(base: torch.Tensor, num_frames: int, change: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
    """[num_frames * P, d] tokens repeating `base` [P, d], with some (frame, patch) replaced."""
    tokens = base.repeat(num_frames, 1).clone()
    patches = base.shape[0]
    for (frame, patch), value in change.items():
        tokens[frame * patches + patch] = value
    return tokens


def test_similarity_compares_with_the_same_position_of_the_previous_frame():
    torch.manual_seed(0)
    patches, dim = 3, 8
    base = torch.randn(patches, dim)
    other = torch.randn(dim)
    video = frames_of(base, 3, {(1, 2): other})
    text = torch.randn(2, dim)
    hidden = torch.cat([text, video, text])
    patch_types = torch.tensor([-1, -1] + [0, 1, 2] * 3 + [-1, -1])
    positions, similarity = core.similarity_to_previous_frame(hidden, patch_types)
    # By-patch order: all type-0 tokens in frame order, then type 1, then type 2.
    assert positions.tolist() == [2, 5, 8, 3, 6, 9, 4, 7, 10]
    expected = {
        2: core.NO_PREDECESSOR, 5: 1.0, 8: 1.0,
        3: core.NO_PREDECESSOR, 6: 1.0, 9: 1.0,
        4: core.NO_PREDECESSOR,
        7: torch.nn.functional.cosine_similarity(base[2], other, dim=0).item(),
        10: torch.nn.functional.cosine_similarity(other, base[2], dim=0).item(),
    }
    for position, value in zip(positions.tolist(), similarity.tolist()):
        assert value == pytest.approx(expected[position], abs=1e-5)


def test_merge_averages_each_run_into_its_anchor_without_weights():
    # One patch type, five frames: tokens a, m1, m2, b, m3 where m* are merged.
    hidden = torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    positions = torch.arange(5)
    merge = torch.tensor([False, True, True, False, True])
    merged, keep = core.merge_tokens(hidden, positions, merge)
    assert keep.tolist() == [True, False, False, True, False]
    assert merged[0].tolist() == [3.0, 0.0]  # (1 + 3 + 5) / 3
    assert merged[3].tolist() == [0.0, 3.0]  # (2 + 4) / 2
    assert torch.equal(hidden[1], torch.tensor([3.0, 0.0])), "the input must not be modified"


def test_merge_runs_never_cross_patch_types():
    # Two patch types interleaved in the sequence: 0,1,0,1,0,1.
    hidden = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    patch_types = torch.tensor([0, 1, 0, 1, 0, 1])
    positions = core.order_by_patch(patch_types)
    assert positions.tolist() == [0, 2, 4, 1, 3, 5]
    # Merge everything that can be merged: type 0's frames 1, 2 and type 1's frames 1, 2.
    merge = torch.tensor([False, True, True, False, True, True])
    merged, keep = core.merge_tokens(hidden, positions, merge)
    assert keep.tolist() == [True, True, False, False, False, False]
    assert merged[0].tolist() == pytest.approx(((hidden[0] + hidden[2] + hidden[4]) / 3).tolist())
    assert merged[1].tolist() == pytest.approx(((hidden[1] + hidden[3] + hidden[5]) / 3).tolist())


def test_plan_merges_all_candidates_below_the_budget_and_goes_on():
    similarity = torch.tensor([core.NO_PREDECESSOR, 0.9, 0.2, 0.8, core.NO_PREDECESSOR, 0.7, 0.1, 0.95, 0.3, 0.1])
    plan = core.plan_merge(similarity, similarity_lower_bound=0.6, ratio_lower_bound=0.1, sparsity_upper_bound=0.7)
    assert plan.merge_by_patch.tolist() == [s >= 0.6 for s in similarity.tolist()]
    assert plan.ratio == pytest.approx(0.4)
    assert not plan.merging_finished and not plan.pruning_finished


def test_plan_finishes_merging_when_few_tokens_merge():
    similarity = torch.tensor([core.NO_PREDECESSOR, 0.9] + [0.1] * 18)
    plan = core.plan_merge(similarity, 0.6, ratio_lower_bound=0.1, sparsity_upper_bound=0.7)
    assert plan.ratio == pytest.approx(0.05)
    assert plan.merging_finished and not plan.pruning_finished


def test_plan_top_k_branch_meets_the_budget_by_merging_alone():
    similarity = torch.tensor([core.NO_PREDECESSOR, 0.99, 0.97, 0.98, 0.96, 0.95, 0.9, 0.2, 0.94, 0.93])
    plan = core.plan_merge(similarity, 0.6, 0.1, sparsity_upper_bound=0.35)
    # int(0.35 * 10) = 3 most similar: 0.99, 0.98, 0.97.
    assert torch.nonzero(plan.merge_by_patch).squeeze(-1).tolist() == [1, 2, 3]
    assert plan.merging_finished and plan.pruning_finished


def test_plan_top_k_with_zero_budget_changes_nothing():
    similarity = torch.tensor([core.NO_PREDECESSOR, 1.0, 1.0])
    plan = core.plan_merge(similarity, 0.5, 0.1, sparsity_upper_bound=0.0)
    assert not plan.merge_by_patch.any()
    assert plan.merging_finished and plan.pruning_finished


def test_plan_ties_pick_exactly_the_budget():
    similarity = torch.tensor([core.NO_PREDECESSOR] + [0.8] * 9)
    plan = core.plan_merge(similarity, 0.6, 0.1, sparsity_upper_bound=0.5)
    assert int(plan.merge_by_patch.sum()) == 5
    assert not plan.merge_by_patch[0]


def test_plan_exhausted_budget_keeps_one_video_token():
    similarity = torch.tensor([core.NO_PREDECESSOR, 1.0, 1.0, 1.0])
    plan = core.plan_merge(similarity, 0.5, 0.1, sparsity_upper_bound=1.0)
    assert int(plan.merge_by_patch.sum()) == 3


def test_importance_is_the_mean_attention_of_the_last_queries_and_causal_among_them():
    torch.manual_seed(1)
    heads, length, dim, last = 2, 7, 4, 3
    queries_all = torch.randn(heads, length, dim)
    keys = torch.randn(heads, length, dim)
    scale = 1 / math.sqrt(dim)
    full = torch.softmax(
        (queries_all @ keys.transpose(-1, -2) * scale).masked_fill(
            torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf")
        ),
        dim=-1,
    )
    expected = full[:, -last:].mean(dim=(0, 1))
    importance = core.last_query_importance(queries_all[:, -last:], keys, scale)
    assert torch.allclose(importance, expected, atol=1e-6)
    # The last position is only seen by the last query: causal among the last queries.
    assert importance[-1] == pytest.approx(full[:, -1, -1].mean().item() / last, abs=1e-6)


def test_importance_ignores_padding():
    torch.manual_seed(2)
    queries, keys = torch.randn(1, 1, 4), torch.randn(1, 5, 4)
    padding = torch.tensor([False, True, True, True, True])
    importance = core.last_query_importance(queries, keys, 0.5, key_padding_mask=padding)
    assert importance[0] == 0
    assert importance.sum().item() == pytest.approx(1.0)


def test_prune_keeps_the_most_important_video_tokens_and_all_text():
    patch_types = torch.tensor([-1, 0, 1, 0, 1, 0, 1, -1])
    importance = torch.tensor([0.0, 0.5, 0.1, 0.4, 0.3, 0.2, 0.05, 0.0])
    keep = core.prune_keep_mask(importance, patch_types, sparsity=0.5)
    # round(6 * 0.5) = 3 video tokens: 0.5, 0.4, 0.3.
    assert keep.tolist() == [True, True, False, True, True, False, False, True]


def test_prune_rounds_half_to_even_like_python():
    patch_types = torch.tensor([0] * 5)
    importance = torch.arange(5, dtype=torch.float32)
    # 5 * (1 - 0.3) = 3.5 -> round() gives 4 (int() would give 3); 5 * 0.5 = 2.5 -> 2.
    assert int(core.prune_keep_mask(importance, patch_types, 0.3).sum()) == round(5 * (1 - 0.3))
    assert int(core.prune_keep_mask(importance, patch_types, 0.5).sum()) == 2


def test_prune_keeps_at_least_one_video_token():
    patch_types = torch.tensor([-1, 0, 0, -1])
    keep = core.prune_keep_mask(torch.tensor([0.0, 0.2, 0.9, 0.0]), patch_types, sparsity=1.0)
    assert keep.tolist() == [True, False, True, True]
