"""EVS (Efficient Video Sampling) selection, against a hand computation."""

from __future__ import annotations

import pytest
import torch

from framefusion.methods import evs


def test_kept_count_keeps_at_least_the_first_frame():
    assert evs.kept_count(frames=8, per_frame=4, pruning_rate=0.75) == 8
    assert evs.kept_count(frames=2, per_frame=4, pruning_rate=0.9) == 4  # int(0.8) < one frame
    assert evs.kept_count(frames=3, per_frame=3, pruning_rate=0.5) == 4  # int(4.5)


def test_the_most_changed_positions_are_kept_first_frame_always():
    # 3 frames x 2 positions, 2-d embeddings. Position 0 never changes; position 1 turns 90 degrees in frame 2, then
    # turns back half way in frame 3.
    embeddings = torch.tensor([
        [1.0, 0.0], [1.0, 0.0],      # frame 1
        [1.0, 0.0], [0.0, 1.0],      # frame 2: position 1 dissimilarity 1
        [1.0, 0.0], [1.0, 1.0],      # frame 3: position 1 dissimilarity 1 - cos(45 deg)
    ])
    keep = evs.keep_mask(embeddings, per_frame=2, pruning_rate=0.5)  # keeps max(2, int(3)) = 3
    assert keep.tolist() == [True, True, False, True, False, False]
    keep = evs.keep_mask(embeddings, per_frame=2, pruning_rate=0.3)  # keeps int(4.2) = 4
    assert keep.tolist() == [True, True, False, True, False, True]


def test_ties_keep_the_earlier_token():
    embeddings = torch.ones(4 * 3, 5)  # nothing changes: every later token ties at dissimilarity 0
    keep = evs.keep_mask(embeddings, per_frame=3, pruning_rate=0.5)  # keeps 6: frame 1, then frame 2
    assert keep.tolist() == [True] * 6 + [False] * 6


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.75, 0.99])
def test_keep_count_matches_the_rule(rate):
    keep = evs.keep_mask(torch.randn(16 * 9, 8), per_frame=9, pruning_rate=rate)
    assert int(keep.sum()) == evs.kept_count(16, 9, rate) and bool(keep[:9].all())


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.75])
def test_on_a_prompt_the_video_tokens_are_chosen_as_for_the_bare_video(rate):
    # text (3) | 6 frames x 4 positions | a newline token that belongs to no position | text (2)
    torch.manual_seed(0)
    frames, per_frame = 6, 4
    video = torch.randn(frames * per_frame, 16)
    video[per_frame:] += 2 * video[:-per_frame]  # related to the previous frame, so dissimilarities vary
    hidden = torch.cat([torch.randn(3, 16), video, torch.randn(3, 16)])
    patch_types = torch.tensor([-1] * 3 + list(range(per_frame)) * frames + [-1] * 3)
    keep = evs.keep_by_patch(hidden, patch_types, rate)
    assert keep[:3].all() and keep[-3:].all()
    assert keep[3:-3].tolist() == evs.keep_mask(video, per_frame, rate).tolist()


def test_evs_in_the_runtime_drops_tokens_before_layer_0_and_keeps_their_rotary_positions():
    import tiny_models

    from framefusion import apply_framefusion, remove_framefusion

    from framefusion.families import restore_reference_positions

    model = tiny_models.qwen2_vl()
    restore_reference_positions(model)  # as apply_framefusion does: the same positions on both sides
    inputs = tiny_models.qwen_video_inputs([(4, 4, 4)])
    seen = {}

    def capture(name):
        def hook(module, args, kwargs):
            seen[name] = (kwargs["position_embeddings"][0].clone(), kwargs["hidden_states"].clone())
        return hook

    attention = model.model.language_model.layers[0].self_attn
    handle = attention.register_forward_pre_hook(capture("full"), with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    framefusion = apply_framefusion(model, merge=False, prune=False, evs_pruning_rate=0.75)
    handle = attention.register_forward_pre_hook(capture("evs"), with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    stats = framefusion.stats
    remove_framefusion(model)

    # By hand: the embeddings entering layer 0 of the unreduced run, EVS on its 4 frames of 4 positions.
    is_video = inputs["mm_token_type_ids"][0] == 2
    video_positions = torch.nonzero(is_video).squeeze(-1)
    embeddings = model.model.language_model.embed_tokens(inputs["input_ids"])[0]  # text rows; video rows below
    full_cos, _ = seen["full"]
    keep_video = evs.keep_mask(_layer0_video_rows(model, inputs), per_frame=4, pruning_rate=0.75)
    expected = sorted(set(torch.nonzero(~is_video).squeeze(-1).tolist()) | set(video_positions[keep_video].tolist()))
    assert stats.kept_positions == expected and len(expected) == embeddings.shape[0] - 12
    assert [(step.kind, step.layer, step.where) for step in stats.steps] == [("evs", None, "before_llm")]
    evs_cos, _ = seen["evs"]
    assert torch.equal(evs_cos, full_cos[:, expected])  # the kept tokens keep their rotary positions


def _layer0_video_rows(model, inputs) -> torch.Tensor:
    """The video tokens' embeddings after the projector (what the LLM's layer 0 receives at those positions)."""
    features = model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                              video_grid_thw=inputs["video_grid_thw"], return_dict=True)
    return torch.cat(list(features.pooler_output))
