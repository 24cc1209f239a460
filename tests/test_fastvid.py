"""FastVID: what the official code computes on recorded inputs (tests/data/fastvid), the edge cases where the
official code crashes (handled as the spec says), and a few results worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framefusion.errors import InputError
from framefusion.methods import fastvid

RECORDED = torch.load(Path(__file__).parent / "data" / "fastvid" / "cases.pt")
ATOL = 1e-5


@pytest.fixture(autouse=True)
def seeded():
    # The density adds torch.rand tie noise: a fixed seed makes every run the same, without touching other tests.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


def name_of(case) -> str:
    return case["name"]


def test_the_recording_is_from_the_pinned_commit_and_covers_every_function():
    assert RECORDED["reference"]["commit"] == "a40a109cb8df20e8c2c17c6850f8269717369990"
    for function in ("segment", "allocate", "density_score", "merge", "reduce", "reduce_segmentwise"):
        assert len(RECORDED[function]) >= 2, function


# ------------------------------------------------------------------------------------------------------------ DySeg
@pytest.mark.parametrize("case", RECORDED["segment"],
                         ids=lambda case: f"T{case['global_features'].shape[0]}-c{case['c']}-tau{case['tau']}")
def test_segment_equals_the_official(case):
    before = case["global_features"].clone()
    assert fastvid.segment(case["global_features"], c=case["c"], tau=case["tau"]) == case["segment_sizes"]
    assert torch.equal(case["global_features"], before)


def test_segment_with_fewer_frames_than_c_cuts_every_transition():
    global_features = torch.randn(5, 16)
    assert fastvid.segment(global_features, c=8, tau=-2.0) == [1, 1, 1, 1, 1]
    assert fastvid.segment(global_features[:1], c=8) == [1]
    assert fastvid.segment(global_features[:1], c=1) == [1]


def test_segment_without_a_cut_is_one_segment():
    alike = torch.ones(6, 4) + 0.01 * torch.randn(6, 4)
    assert fastvid.segment(alike, c=1, tau=0.5) == [6]


def test_segment_cuts_the_least_similar_transitions_and_every_one_below_tau():
    # Unit vectors at angles 0, 10, 60, 65, 120, 121 degrees: cosines 0.985, 0.643, 0.996, 0.574, 0.9998.
    angles = torch.tensor([0.0, 10.0, 60.0, 65.0, 120.0, 121.0]).deg2rad()
    global_features = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [3.0], [0.5], [2.0],
                                                                                      [1.0], [7.0]])
    assert fastvid.segment(global_features, c=2, tau=0.0) == [4, 2]  # the least similar transition: 3 -> 4
    assert fastvid.segment(global_features, c=3, tau=0.0) == [2, 2, 2]
    assert fastvid.segment(global_features, c=1, tau=0.9) == [2, 2, 2]  # cos < 0.9 only
    assert fastvid.segment(global_features, c=2, tau=0.99) == [1, 1, 2, 2]


def test_segment_refuses_c_below_one():
    with pytest.raises(InputError, match="c"):
        fastvid.segment(torch.randn(4, 3), c=0)


# ----------------------------------------------------------------------------------------------------------- budget
@pytest.mark.parametrize("case", RECORDED["allocate"],
                         ids=lambda case: f"{case['segment_sizes']}-S{case['frame_tokens']}-p{case['p']}")
def test_allocate_equals_the_official(case):
    salient, anchors = fastvid.allocate(case["segment_sizes"], case["frame_tokens"],
                                        retain_ratio=case["retain_ratio"], d=case["d"], p=case["p"])
    assert (salient, anchors) == (case["salient"], case["anchors"])


def test_allocate_worked_example():
    # S = 196, 10%: r = 19, X = int(7.6) = 7, s = 12; the paper's segments keep 384 + 222 = 606 tokens.
    salient, anchors = fastvid.allocate([1, 2, 1, 3, 9, 7, 5, 4], 196)
    assert salient == [12] * 32 and sum(salient) + sum(anchors) == 606
    # The last frame of each segment, then every 4th before it: [1] [2] [1] ... [4] -> 7 | 0 14 | 7 | ... 0 0 0 28
    assert anchors[:4] == [7, 0, 14, 7] and anchors[-4:] == [0, 0, 0, 28]
    assert fastvid.allocate([2], 169)[0] == [10, 10]  # 169 * 0.1 = 16.900000000000002 -> 16, 16 - int(6.4)


def test_settings_out_of_range_are_refused():
    with pytest.raises(InputError, match="p=0"):
        fastvid.allocate([3], 196, p=0)
    features, attention, global_features = video(4, 16)
    for function in (fastvid.reduce, fastvid.reduce_segmentwise):
        with pytest.raises(InputError, match="retain_ratio=1.5"):
            function(features, attention, global_features, retain_ratio=1.5)
        with pytest.raises(InputError, match="p=0"):
            function(features, attention, global_features, p=0)


# ---------------------------------------------------------------------------------------------------------- density
@pytest.mark.parametrize("case", RECORDED["density_score"], ids=lambda case: str(list(case["tokens"].shape)))
def test_density_score_equals_the_official(case):
    score = fastvid.density_score(case["tokens"])
    assert score.dtype == torch.float32 and score.shape == case["density"].shape
    torch.testing.assert_close(score, case["density"], atol=ATOL, rtol=0)


def test_density_score_rows_are_independent_and_bfloat16_gives_float32():
    tokens = torch.randn(3, 20, 8)
    together = fastvid.density_score(tokens)
    for row in range(3):
        torch.testing.assert_close(fastvid.density_score(tokens[row:row + 1])[0], together[row], atol=ATOL, rtol=0)
    assert fastvid.density_score(tokens.bfloat16()).dtype == torch.float32


def test_density_score_on_fewer_tokens_than_k_does_not_crash():
    # The official topk(k=4) raises on fewer than 4 tokens; all of them are used instead.
    assert torch.isfinite(fastvid.density_score(torch.randn(2, 3, 5))).all()
    assert fastvid.density_score(torch.randn(2, 0, 5)).shape == (2, 0)


# ------------------------------------------------------------------------------------------------------------ merge
@pytest.mark.parametrize("case", RECORDED["merge"],
                         ids=lambda case: f"beta{case['beta']}-{'own' if case['pool_holds_targets'] else 'qwen'}-pool")
def test_merge_equals_the_official(case):
    merged = fastvid.merge(case["targets"], case["pool"], beta=case["beta"])
    torch.testing.assert_close(merged, case["merged"], atol=ATOL, rtol=0)


def test_a_target_no_pool_token_chose_is_kept_as_it_is():
    unchanged = [case for case in RECORDED["merge"] if not case["pool_holds_targets"]
                 and (case["merged"] == case["targets"]).all(dim=-1).any()]
    assert unchanged  # the recordings hold such a target
    for case in unchanged:
        merged = fastvid.merge(case["targets"], case["pool"], beta=case["beta"])
        assert torch.equal((merged == case["targets"]).all(dim=-1), (case["merged"] == case["targets"]).all(dim=-1))


def test_merge_weights_worked_example():
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    pool = torch.tensor([[[1.0, 0.0], [3.0, 0.1], [0.1, 2.0]]])  # the first target gets two, the second one
    assert torch.allclose(fastvid.merge(targets, pool, beta=0.6), torch.tensor([[[1.4, 0.02], [0.04, 1.4]]]))
    # beta 0: the weight is 1 / (n + 1): 1/3 and 1/2.
    expected = torch.tensor([[[1 / 3 + 2 / 3 * 2.0, 2 / 3 * 0.05], [0.05, 0.5 + 0.5 * 2.0]]])
    assert torch.allclose(fastvid.merge(targets, pool, beta=0.0), expected)
    assert torch.equal(fastvid.merge(targets, pool[:, :0], beta=0.6), targets)  # empty pool
    assert fastvid.merge(targets[:, :0], pool).shape == (1, 0, 2)


# ---------------------------------------------------------------------------------------------------- whole methods
def check_reduce(function, case):
    inputs = (case["features"], case["attention"], case["global_features"])
    before = [tensor.clone() for tensor in inputs]
    tokens, kept = function(*inputs, **case["settings"])
    assert kept.dtype == torch.int64 and tokens.dtype == case["features"].dtype
    assert torch.equal(kept, case["kept"])
    torch.testing.assert_close(tokens, case["tokens"], atol=ATOL, rtol=0)
    assert all(torch.equal(tensor, copy) for tensor, copy in zip(inputs, before))


@pytest.mark.parametrize("case", RECORDED["reduce"], ids=name_of)
def test_reduce_equals_the_official_llava_onevision_code(case):
    check_reduce(fastvid.reduce, case)


@pytest.mark.parametrize("case", RECORDED["reduce_segmentwise"], ids=name_of)
def test_reduce_segmentwise_equals_the_official_qwen25_vl_code(case):
    check_reduce(fastvid.reduce_segmentwise, case)


def recorded(function: str, name: str) -> dict:
    return next(case for case in RECORDED[function] if case["name"].startswith(name))


def test_the_recordings_hold_the_cases_where_the_official_code_crashes():
    # Fewer frames than c: recorded from the official code at c = T, called here with the larger c.
    for function in ("reduce", "reduce_segmentwise"):
        case = recorded(function, "fewer frames than c")
        assert case["settings"]["c"] > case["features"].shape[0] == case["reference_c"]
    # No cut: Qwen2.5-VL's official code raises; its STPrune was recorded on the one segment [T].
    for name in ("no cut", "one frame"):
        case = recorded("reduce_segmentwise", name)
        assert case["injected_segments"] == [case["features"].shape[0]]
        assert fastvid.segment(case["global_features"], c=case["settings"]["c"],
                               tau=case["settings"]["tau"]) == case["injected_segments"]


def test_a_run_of_near_duplicates_collapses_onto_one_whole_frame():
    case = recorded("reduce_segmentwise", "collapsed run")
    _, kept = fastvid.reduce_segmentwise(case["features"], case["attention"], case["global_features"],
                                         **case["settings"])
    per_frame = case["features"].shape[1]
    assert (torch.bincount(kept // per_frame) == per_frame).any()


def test_with_ignore_at_most_tau_only_the_last_frame_of_each_segment_keeps_tokens():
    case = recorded("reduce_segmentwise", "ignore <= tau")
    _, kept = fastvid.reduce_segmentwise(case["features"], case["attention"], case["global_features"],
                                         **case["settings"])
    last_frames = torch.tensor(case["segment_sizes"]).cumsum(0) - 1
    assert torch.equal(torch.unique(kept // case["features"].shape[1]), last_frames)


def video(frames: int, per_frame: int, width: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(frames, per_frame, width, generator=generator),
            torch.rand(frames, per_frame, generator=generator), torch.randn(frames, 16, generator=generator))


@pytest.mark.parametrize("settings", [dict(retain_ratio=0.01), dict(retain_ratio=0.4, d=0.0)], ids=["rho0.01", "d0"])
def test_reduce_without_anchor_tokens_keeps_the_salient_tokens(settings):
    # The official code raises on an empty argmax here; what it means to do is keep only the salient tokens.
    features, attention, global_features = video(6, 196 if settings["retain_ratio"] == 0.01 else 25)
    tokens, kept = fastvid.reduce(features, attention, global_features, c=2, **settings)
    salient = fastvid.allocate([6], features.shape[1], retain_ratio=settings["retain_ratio"],
                               d=settings.get("d", 0.4))[0][0]
    expected = (torch.topk(attention, salient, dim=1).indices + torch.arange(6)[:, None] * features.shape[1])
    assert torch.equal(kept, expected.reshape(-1).sort().values)
    assert torch.equal(tokens, features.reshape(-1, features.shape[-1])[kept])


def test_reduce_with_more_anchor_tokens_than_a_frame_has_left_does_not_crash():
    # rho 0.6 on S = 36: r = 21, X = 8, s = 13, 23 tokens left; a 4-frame segment gives its anchor frame 32.
    features, attention, _ = video(4, 36)
    alike = torch.ones(4, 16)
    _, kept = fastvid.reduce(features, attention, alike, retain_ratio=0.6, c=1)
    assert kept.numel() == 4 * 13 + 23 and torch.equal(kept, torch.unique(kept))


def test_reduce_segmentwise_with_segments_without_salient_or_anchor_tokens_does_not_crash():
    # r = int(16 * 0.05) = 0: no salient token; the official code raises on torch.cat([]).
    features, attention, global_features = video(6, 16)
    tokens, kept = fastvid.reduce_segmentwise(features, attention, global_features, retain_ratio=0.05, c=3)
    assert tokens.shape == (kept.numel(), 8) and torch.equal(kept, torch.unique(kept))
    assert kept.numel() == len(fastvid.segment(global_features, c=3, tau=0.84))  # max(int(0 * d), 1): one anchor each
    single = fastvid.reduce_segmentwise(features[:1, :1], attention[:1, :1], global_features[:1])
    assert single[1].tolist() == [0]  # one token, kept as its anchor (the official topk(k=4) raises)


def test_the_parallel_count_is_the_budget_and_outputs_keep_the_input_dtype():
    features, attention, global_features = video(32, 196, width=4)
    tokens, kept = fastvid.reduce(features, attention, global_features)
    salient, anchors = fastvid.allocate(fastvid.segment(global_features), 196)
    assert kept.numel() == sum(salient) + sum(anchors) <= 32 * 19
    assert torch.equal(kept, torch.unique(kept))
    for function in (fastvid.reduce, fastvid.reduce_segmentwise):
        tokens, kept = function(features[:8].bfloat16(), attention[:8], global_features[:8])
        assert tokens.dtype == torch.bfloat16 and kept.dtype == torch.int64
