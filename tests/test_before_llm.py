"""The reductions before the LLM (EVS per video, VidCom2, FastVID, HoliTom's outer step) and the inner merge, on a
prompt's layout and inside real (tiny, random) models: the tokens kept are those the pure functions choose on the
bare video, at their original positions, and cached generation equals recomputation."""

from __future__ import annotations

import pytest
import torch

import tiny_models
from cache_check import assert_cached_equals_recomputed
from framefusion import EVS, FastVID, HoliTom, InnerMerge, VidCom2, apply_framefusion, remove_framefusion
from framefusion.methods import evs, fastvid, holitom, inner_merge, vidcom2
from framefusion.runtime import before_llm


def _prompt(videos: list[tuple[int, int]], width: int = 16, between: int = 2, seed: int = 0):
    """Text, then each video (frames x per_frame tokens, `between` timestamp tokens before each later frame, and a
    trailing newline), then text. Returns (hidden [L, width], patch_types [L], grids: positions [T, P] per video)."""
    generator = torch.Generator().manual_seed(seed)
    types, grids, base = [-1, -1, -1], [], 0
    for frames, per_frame in videos:
        grid = []
        for frame in range(frames):
            if frame:
                types += [-1] * between
            grid.append(list(range(len(types), len(types) + per_frame)))
            types += list(range(base, base + per_frame))
        types += [-1, -1]  # the video's newline, then text before the next video
        grids.append(torch.tensor(grid))
        base += per_frame
    hidden = torch.randn(len(types), width, generator=generator)
    return hidden, torch.tensor(types), grids


def test_video_grids_reads_each_video_frame_by_frame():
    _, patch_types, grids = _prompt([(3, 4), (1, 6), (2, 4)])
    found = before_llm.video_grids(patch_types)
    assert [grid.tolist() for grid in found] == [grid.tolist() for grid in grids]


def _expected(method, hidden, grid):
    """(kept positions, their tokens or None) of one video by the pure function, on the bare video."""
    frames = hidden[grid.reshape(-1)].reshape(*grid.shape, -1)
    flat = frames.reshape(-1, frames.shape[-1])
    per_frame = grid.shape[1]
    if isinstance(method, VidCom2):
        return grid.reshape(-1)[vidcom2.keep_mask(flat, per_frame, method.pruning_rate)], None
    if isinstance(method, EVS):
        return grid.reshape(-1)[evs.keep_mask(flat, per_frame, method.pruning_rate)], None
    attention = before_llm.frame_query_attention(frames)
    if isinstance(method, FastVID):
        run = fastvid.reduce if method.variant == "parallel" else fastvid.reduce_segmentwise
        tokens, kept = run(frames, attention, frames.mean(dim=1), retain_ratio=method.retain_ratio)
    else:
        tokens, kept = holitom.reduce_in_place(frames, attention, retain_ratio=method.retain_ratio, tau=method.tau)
    return grid.reshape(-1)[kept], tokens


@pytest.mark.parametrize("method", [
    VidCom2(0.75), VidCom2(0.0), EVS(0.5, per_video=True),
    FastVID(retain_ratio=0.3, variant="parallel"), FastVID(retain_ratio=0.3, variant="segmentwise"),
    HoliTom(retain_ratio=0.3, tau=0.0),
], ids=["vidcom2", "vidcom2-q0", "evs-per-video", "fastvid-parallel", "fastvid-segmentwise", "holitom"])
def test_on_a_prompt_each_video_is_reduced_as_the_bare_video(method):
    hidden, patch_types, grids = _prompt([(8, 16), (1, 9), (2, 16)])
    hidden[grids[0][4]] = hidden[grids[0][3]]  # a repeated frame: HoliTom finds a static window, FastVID merges
    torch.manual_seed(0)
    rows, keep = before_llm.reduce(method, hidden, patch_types)
    assert keep[patch_types < 0].all()
    assert torch.equal(hidden, _prompt([(8, 16), (1, 9), (2, 16)])[0].index_copy(0, grids[0][4], hidden[grids[0][3]]))
    for grid in grids:
        torch.manual_seed(0)
        positions, tokens = _expected(method, hidden, grid)
        in_video = torch.zeros_like(keep)
        in_video[grid.reshape(-1)] = True
        assert torch.nonzero(keep & in_video).squeeze(1).tolist() == positions.tolist()
        if tokens is None:
            assert torch.equal(rows[positions], hidden[positions])
        else:
            assert torch.allclose(rows[positions], tokens, atol=1e-6)


def test_holitom_in_place_gives_the_official_tokens():
    torch.manual_seed(0)
    features = torch.randn(6, 16, 8)
    features[2:5] = features[1] + 0.01 * torch.randn(3, 16, 8)  # a static stretch
    attention = torch.rand(6, 16)
    torch.manual_seed(1)
    official = holitom.reduce(features, attention, retain_ratio=0.25, tau=0.8, layout="one_token",
                              newline=torch.zeros(8))[:-1]  # its one trailing newline
    torch.manual_seed(1)
    tokens, kept = holitom.reduce_in_place(features, attention, retain_ratio=0.25, tau=0.8)
    assert len(tokens) == len(official) and kept.tolist() == sorted(set(kept.tolist()))
    assert torch.equal(tokens.sort(dim=0).values, official.sort(dim=0).values)


def test_fastvid_is_refused_on_a_family_it_was_not_measured_on():
    class Family:
        name, fastvid_variant = "internvl", None

    with pytest.raises(ValueError, match="FastVID was measured on the LLaVA and Qwen-VL families, not on internvl"):
        FastVID().resolved(Family())
    assert FastVID(variant="parallel").resolved(Family()).retain_ratio == 0.10


@pytest.mark.parametrize("settings, message", [
    (dict(pruning_rate=1.0), r"pruning_rate must be in \[0, 1\), got 1.0"),
    (dict(pruning_rate="half"), "pruning_rate must be a number"),
])
def test_bad_settings_are_refused_when_made(settings, message):
    with pytest.raises(ValueError, match=message):
        VidCom2(**settings)


def _qwen():
    return tiny_models.qwen2_vl(num_layers=6), tiny_models.qwen_video_inputs([(4, 4, 4)])


@pytest.mark.parametrize("method", [VidCom2(0.5), FastVID(), EVS(0.5, per_video=True)],
                         ids=["vidcom2", "fastvid", "evs-per-video"])
def test_cached_generation_equals_recomputation(method):
    model, inputs = _qwen()
    handle = apply_framefusion(model, merge=False, prune=False, before_llm=method)
    assert_cached_equals_recomputed(model, inputs, max_new_tokens=4, pad_token_id=0)
    step = handle.stats.steps[0]
    assert (step.kind, step.where) == (method.kind, "before_llm") and step.tokens_after < step.tokens_before
    assert handle.settings.before_llm == method.resolved(handle.family)


def test_a_reduction_before_the_llm_composes_with_framefusion():
    model, inputs = _qwen()
    handle = apply_framefusion(model, cost=0.3, similarity_lower_bound=0.9, before_llm=VidCom2(0.5))
    with torch.no_grad():
        model(**inputs)
    kinds = [step.kind for step in handle.stats.steps]
    assert kinds[0] == "vidcom2" and "prune" in kinds
    vidcom2_kept = handle.stats.steps[0].video_tokens_after
    assert handle.stats.video_tokens_per_layer[-1] < vidcom2_kept


def test_the_inner_merge_folds_the_video_tokens_as_the_reference_step():
    """The merge layer's input equals inner_merge.merge on the unreduced model's hidden states and its last token's
    attention at the layer before (eager attention gives the reference's weights)."""
    model, inputs = tiny_models.qwen2_vl(num_layers=6, attn="eager"), tiny_models.qwen_video_inputs([(4, 4, 4)])
    with torch.no_grad():
        reference = model(**inputs, output_attentions=True, output_hidden_states=True)
    merge_layer = 4
    is_video = inputs["mm_token_type_ids"][0] == 2
    video = torch.nonzero(is_video).squeeze(1)
    attention = reference.attentions[merge_layer - 1][0, :, -1].mean(dim=0)
    layer_input = reference.hidden_states[merge_layer]
    expected, kept = inner_merge.merge(layer_input[:, video], attention[video], start=0, length=len(video), ratio=0.5)

    seen = {}
    target = model.model.language_model.layers[merge_layer].self_attn
    def keep_input(module, args, kwargs):
        seen.setdefault("input", kwargs)

    hook = target.register_forward_pre_hook(keep_input, with_kwargs=True)
    handle = apply_framefusion(model, merge=False, prune=False, inner_merge=InnerMerge(layer=merge_layer, ratio=0.5),
                               reference_positions=False)  # the positions of the reference run above
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    keep = ~is_video
    keep[video[kept]] = True
    assert handle.stats.kept_positions == torch.nonzero(keep).squeeze(1).tolist()
    assert [(step.kind, step.layer) for step in handle.stats.steps] == [("inner-merge", merge_layer)]
    assert handle.stats.tokens_per_layer == [len(keep)] * merge_layer + [int(keep.sum())] * 2
    # What layer 4's attention receives: the normed rows, the merged video tokens in place of the kept ones.
    layer = model.model.language_model.layers[merge_layer]
    rows = layer_input.clone()
    rows[:, video[kept]] = expected
    normed = layer.input_layernorm(rows[:, keep])
    assert torch.allclose(seen["input"]["hidden_states"], normed, atol=1e-5)
    remove_framefusion(model)


def test_the_inner_merge_layer_scales_with_depth_and_is_checked():
    assert InnerMerge().resolved(28).layer == 18 and InnerMerge().resolved(24).layer == 15
    assert InnerMerge().resolved(2).layer == 1
    with pytest.raises(ValueError, match="layer 6 is past the model's last decoder layer"):
        InnerMerge(layer=6).resolved(6)
    model, _ = _qwen()
    with pytest.raises(ValueError, match="inner_merge replaces FrameFusion's steps"):
        apply_framefusion(model, inner_merge=InnerMerge())
