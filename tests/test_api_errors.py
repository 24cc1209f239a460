"""apply_framefusion refuses what it cannot honour, before touching the model, and its handle takes it off again."""

from __future__ import annotations

import pytest
import torch

from framefusion import apply_framefusion, framefusion_handle
from framefusion.runtime import transformers_compat as compat

import tiny_models


@pytest.fixture(scope="module")
def model():
    return tiny_models.qwen2_vl(num_layers=8)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_models.qwen_video_inputs([(2, 4, 4)])).logits


def refused(model, match: str, **settings) -> None:
    before = {name: getattr(layer, "forward") for name, layer in model.named_modules()}
    with pytest.raises(ValueError, match=match):
        apply_framefusion(model, **settings)
    assert framefusion_handle(model) is None
    # Nothing was installed: every module still has the forward it had.
    assert {name: getattr(layer, "forward") for name, layer in model.named_modules()} == before


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), True])
def test_an_evs_pruning_rate_outside_zero_to_one_is_refused(model, rate):
    refused(model, "evs_pruning_rate", evs_pruning_rate=rate)


@pytest.mark.parametrize("dense_layers", [0, -1, 2.5, True])
def test_dense_layers_must_be_a_whole_number_of_layers_when_merging_is_off(model, dense_layers):
    refused(model, "dense_layers", merge=False, dense_layers=dense_layers)


def test_pruning_alone_needs_a_cost_its_dense_layers_can_meet(model):
    # 8 layers, 2 dense ones: pruning once after them spends at least 2/8 of the video token-layers.
    refused(model, r"too small .* 8 decoder layers and 2 dense layers: use at least 0\.250", merge=False, cost=0.2)
    refused(model, "too small", merge=False, cost=0.9, dense_layers=8)
    handle = apply_framefusion(model, merge=False, cost=0.25)
    handle.remove()


def test_nothing_to_reduce_is_refused(model):
    refused(model, "nothing would be reduced", merge=False, prune=False)


def test_flex_attention_is_refused_with_the_backends_that_work(model, monkeypatch):
    monkeypatch.setattr(compat, "attention_implementation", lambda config: "flex_attention")
    refused(model, "sdpa, eager and flash-attention backends, not flex_attention")


def test_remove_on_the_handle_gives_back_the_exact_model(model):
    dense = logits(model)
    handle = apply_framefusion(model, cost=0.3)
    assert not torch.equal(logits(model), dense)  # FrameFusion changed the computation
    handle.remove()
    assert framefusion_handle(model) is None
    assert torch.equal(logits(model), dense)
    handle.remove()  # a second time changes nothing
    assert torch.equal(logits(model), dense)
