"""Run the official FrameFusion (transformers 4.51.3) on the hand-made inputs; instrument it from outside.

Run: PYTHONPATH=<official checkout>:<this folder> <venv with transformers 4.51.3>/bin/python official_run.py CKPT [OUT_DIR]
Without OUT_DIR it only prints the trace (used to choose inputs whose decisions are far from flipping).
"""
import hashlib
import os
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import Qwen2VLForConditionalGeneration

# The official package (our library has no framefusion.main / framefusion.interface, so this cannot pick up ours).
from framefusion.interface import apply_framefusion
from framefusion.main import FrameFusion

from official_inputs import make_case

assert transformers.__version__ == "4.51.3"

CKPT = Path(sys.argv[1])
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else None
CASES = {
    "long": dict(num_frames=16, seed=4),
    "short": dict(num_frames=8, seed=33),
}
if os.environ.get("CASE_SEEDS"):  # tuning only: "long=5,short=7"
    for item in os.environ["CASE_SEEDS"].split(","):
        case_name, case_seed = item.split("=")
        CASES[case_name]["seed"] = int(case_seed)
if os.environ.get("CASE_ONLY"):  # tuning only
    CASES = {os.environ["CASE_ONLY"]: CASES[os.environ["CASE_ONLY"]]}
THRESHOLDS = [0.6, 0.4]
COST, RATIO_LOWER_BOUND = 0.3, 0.1
NEW_TOKENS = 8


def load():
    return Qwen2VLForConditionalGeneration.from_pretrained(CKPT, torch_dtype=torch.float32, attn_implementation="sdpa").eval()


class Tracer:
    """Follows the official FrameFusion object from outside: positions kept, steps, margins to the decisions."""

    def __init__(self, model):
        self.model = model
        fusion: FrameFusion = model.framefusion
        self.fusion = fusion
        self.reset(0)
        tracer = self

        original_forward = fusion.forward

        def traced_forward(hidden_states, position_embeddings, attention_mask, self_attn_weights=None):
            q_len = hidden_states.shape[1]
            if q_len == 1:
                return original_forward(hidden_states, position_embeddings, attention_mask, self_attn_weights)
            flags = (fusion.finish_merging, fusion.finish_pruning)
            where = "after_attention" if self_attn_weights is not None or tracer.attention_done else "before_attention"
            kind = None
            if flags[0] and not flags[1]:
                kind = "prune"
                tracer.record_prune_margin(self_attn_weights, q_len)
            elif not flags[0]:
                kind = "merge"
                tracer.record_merge_margin(hidden_states)
            video_before = int((fusion.patch_type != -1).sum()) if kind == "merge" else None
            out = original_forward(hidden_states, position_embeddings, attention_mask, self_attn_weights)
            if kind is not None:
                tracer.steps.append(
                    {
                        "layer": tracer.layer,
                        "kind": kind,
                        "where": where,
                        "tokens_before": q_len,
                        "tokens_after": out[0].shape[1],
                        "sparsity_list": list(fusion.sparsity_list),
                        "finish_merging": fusion.finish_merging,
                        "finish_pruning": fusion.finish_pruning,
                    }
                )
            return out

        fusion.forward = traced_forward

        original_merge_handler = fusion.position_embedding_handler_at_merging
        original_prune_handler = fusion.position_embedding_handler_at_pruning

        def merge_handler(position_embeddings, token_mask):
            tracer.positions = tracer.positions[token_mask[0].cpu()]
            return original_merge_handler(position_embeddings, token_mask)

        def prune_handler(position_embeddings, keep_indexs):
            tracer.positions = tracer.positions[keep_indexs.cpu()]
            return original_prune_handler(position_embeddings, keep_indexs)

        fusion.position_embedding_handler_at_merging = merge_handler
        fusion.position_embedding_handler_at_pruning = prune_handler

        for index, layer in enumerate(model.model.layers):
            layer.register_forward_pre_hook(self._layer_hook(index))
            layer.self_attn.register_forward_pre_hook(self._attention_hook, with_kwargs=True)
            layer.self_attn.register_forward_hook(self._attention_done_hook)

    def reset(self, length):
        self.positions = torch.arange(length)
        self.tokens_per_layer = []
        self.steps = []
        self.merge_margins = []
        self.prune_margins = []
        self.layer = -1
        self.attention_done = False

    def _layer_hook(self, index):
        def hook(module, args):
            if args[0].shape[1] > 1:
                self.layer = index
                self.attention_done = False

        return hook

    def _attention_hook(self, module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if hidden.shape[1] > 1:
            self.tokens_per_layer.append(hidden.shape[1])

    def _attention_done_hook(self, module, args, output):
        self.attention_done = True

    def record_merge_margin(self, hidden_states):
        fusion = self.fusion
        similarity, _ = fusion.compute_similarity_and_token_index_by_patch(
            hidden_states, fusion.patch_type.to(hidden_states.device), fusion.patch_num
        )
        valid = similarity[similarity > -1.5]
        margin = (valid - fusion.similarity_lower_bound).abs().min().item() if valid.numel() else float("inf")
        # top-k ties matter only in the top-k branch; record the smallest gap between distinct sorted similarities
        self.merge_margins.append({"layer": self.layer, "threshold_margin": margin,
                                   "candidates": int((similarity >= fusion.similarity_lower_bound).sum()),
                                   "video": int((fusion.patch_type != -1).sum())})

    def record_prune_margin(self, weights, q_len):
        fusion = self.fusion
        start = int(fusion.image_token_start_index)
        length = int(fusion.image_token_length - (fusion.original_length - q_len))
        importance = weights.mean(dim=(1, 2))[0][start : start + length]
        ratio = fusion._compute_pruning_ratio(fusion.sparsity_list, fusion.cost)
        keep = round(length * (1 - ratio))
        ordered = importance.sort(descending=True).values
        gap = (ordered[keep - 1] - ordered[keep]).item() if keep < length else float("inf")
        self.prune_margins.append({"layer": self.layer, "keep": keep, "video": length, "ratio": ratio,
                                   "boundary_gap": gap, "relative_gap": gap / ordered[keep - 1].item()})


def run_case(name, inputs, threshold):
    model = load()
    apply_framefusion(model, cost=COST, similarity_lower_bound=threshold, ratio_lower_bound=RATIO_LOWER_BOUND)
    tracer = Tracer(model)
    length = inputs["input_ids"].shape[1]
    tracer.reset(length)
    with torch.no_grad():
        output = model(**inputs, use_cache=True)
    prefill = {
        "kept_positions": tracer.positions.tolist(),
        "tokens_per_layer": list(tracer.tokens_per_layer),
        "steps": list(tracer.steps),
        "merge_margins": list(tracer.merge_margins),
        "prune_margins": list(tracer.prune_margins),
        "cache_lengths": [output.past_key_values.get_seq_length(i) for i in range(len(model.model.layers))],
    }
    logits = output.logits[0].clone()
    tracer.reset(length)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                                   output_scores=True, return_dict_in_generate=True)
    new_tokens = generated.sequences[0, length:].tolist()
    prefill["greedy_top2_gaps"] = top2_gaps(generated.scores)
    generate_trace = {"kept_positions": tracer.positions.tolist(), "tokens_per_layer": list(tracer.tokens_per_layer)}
    return prefill, logits, new_tokens, generate_trace


def run_unpatched(inputs):
    model = load()
    with torch.no_grad():
        logits = model(**inputs).logits[0].clone()
        generated = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                                   output_scores=True, return_dict_in_generate=True)
    return logits, generated.sequences[0, inputs["input_ids"].shape[1]:].tolist(), top2_gaps(generated.scores)


def top2_gaps(scores):
    """Per greedy step, the gap between the best and second-best logit (how safely the argmax is decided)."""
    gaps = []
    for step_scores in scores:
        top = step_scores[0].topk(2).values
        gaps.append(float(top[0] - top[1]))
    return gaps


def main():
    record = {"source": "github.com/thu-nics/FrameFusion at 561e156e026fccb19c18c77b8fdd964eea3169ea "
                        "(framefusion/main.py, utils.py, models/qwen2/modeling_qwen2_vl.py, models/qwenvl/modeling_qwen2_vl.py "
                        "as published; interface.py cut down to its Qwen2-VL branch), kept outside this repository; "
                        "observed from outside (hooks and wrappers), never edited",
              "transformers": transformers.__version__, "torch": torch.__version__, "cost": COST,
              "ratio_lower_bound": RATIO_LOWER_BOUND, "max_new_tokens": NEW_TOKENS, "cases": {}}
    tensors = {}
    for name, options in CASES.items():
        inputs = make_case(**options)
        tensors[f"{name}.frames"] = inputs.pop("frames")
        for key in ("input_ids", "video_grid_thw"):
            tensors[f"{name}.{key}"] = inputs[key]
        case_pixel_sha = hashlib.sha256(inputs["pixel_values_videos"].numpy().tobytes()).hexdigest()
        unpatched_logits, unpatched_tokens, unpatched_gaps = run_unpatched(inputs)
        tensors[f"{name}.unpatched_logits"] = unpatched_logits
        case = {"frames": options["num_frames"], "seed": options["seed"],
                "video_grid_thw": inputs["video_grid_thw"][0].tolist(),
                "prompt_tokens": inputs["input_ids"].shape[1],
                "pixel_values_videos_sha256": case_pixel_sha,
                "unpatched_greedy_tokens": unpatched_tokens, "unpatched_greedy_top2_gaps": unpatched_gaps,
                "framefusion": {}}
        for threshold in THRESHOLDS:
            prefill, logits, new_tokens, generate_trace = run_case(name, inputs, threshold)
            key = f"{name}.s{threshold}"
            tensors[f"{key}.logits"] = logits
            prefill["greedy_tokens"] = new_tokens
            prefill["generate_kept_positions_equal"] = generate_trace["kept_positions"] == prefill["kept_positions"]
            prefill["generate_tokens_per_layer_equal"] = generate_trace["tokens_per_layer"] == prefill["tokens_per_layer"]
            case["framefusion"][str(threshold)] = prefill
            print(f"== {name} S_th={threshold}: L={inputs['input_ids'].shape[1]} -> {len(prefill['kept_positions'])}")
            print("   tokens_per_layer", prefill["tokens_per_layer"])
            for step in prefill["steps"]:
                print("   step", step)
            print("   merge margins", prefill["merge_margins"])
            print("   prune margins", prefill["prune_margins"])
            print("   greedy", new_tokens, "unpatched", unpatched_tokens)
            print("   min gaps", min(prefill["greedy_top2_gaps"]), min(unpatched_gaps))
            print("   generate trace equal:", prefill["generate_kept_positions_equal"], prefill["generate_tokens_per_layer_equal"])
        record["cases"][name] = case
    if OUT is not None:
        OUT.mkdir(parents=True, exist_ok=True)
        torch.save(tensors, OUT / "official_inputs_and_logits.pt")
        (OUT / "official_results.json").write_text(json.dumps(record, indent=1) + "\n")
        print("saved", OUT)


if __name__ == "__main__":
    main()
