"""Record HoliTom's and EarlyTom's official functions on small seeded float32 inputs, for
tests/test_holitom_earlytom.py.

    python tests/data/holitom_earlytom/record_holitom_earlytom.py --holitom DIR --earlytom DIR [--output PATH]

DIR: a clone (or bare git directory) of github.com/cokeshao/HoliTom, resp. github.com/viridisGreen/EarlyTom, that
holds the commits below; or a plain copy of the files, whose git blob hashes are then checked. The official files
import LLaVA-NeXT and transformers 4.5x, so they are not imported: the methods named below and a few statement ranges
of the official files (checked by their first and last lines) are cut out with `ast` and run unchanged on CPU, bound
to a stub `self` that holds the settings they read. See README.md.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import math
import os
import subprocess
import textwrap
import types
from pathlib import Path

import torch
import torch.nn.functional as F

HOLITOM = ("e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0", {
    "holitom/llava_arch.py": "463b22c2bbba8c0569b35005913a969248f2bbfb",
    "holitom/modeling_qwen2.py": "4583cb75ef360931e271ff9653ab12ec5d837a6d",
})
EARLYTOM = ("b90932217325d986d11364c5d31466ab1812caa1", {
    "earlytom/llava_arch.py": "1cd237e84bff23701b398718ebde88cc0fcfba30",
    "earlytom/modeling_qwen2.py": "55af560a6c4a9e6551c2388bff78592939ddd6f5",
    "LLaVA-NeXT/llava/model/multimodal_encoder/siglip_encoder.py": "98d51a1d1b8a6a28fc67a0d96e91993d851f41b5",
})
# The official code logs with rank0_print and print; both are silenced.
SCOPE = {"torch": torch, "math": math, "F": F, "os": os, "nn": torch.nn,
         "rank0_print": lambda *args, **kwargs: None, "print": lambda *args, **kwargs: None}


# ---- reading the official code -------------------------------------------------------------------------------------

def read_official(directory: Path, commit: str, path: str, blob: str) -> str:
    copy = directory / path
    if copy.is_file():
        data = copy.read_bytes()
        found = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if found != blob:
            raise SystemExit(f"{copy}: git blob {found}, expected {blob} (commit {commit})")
        return data.decode()
    return subprocess.run(["git", "-C", str(directory), "show", f"{commit}:{path}"], capture_output=True, text=True,
                          check=True).stdout


def methods(source: str, class_name: str, names: list[str]) -> dict[str, types.FunctionType]:
    """The named methods of a class, compiled unchanged in SCOPE."""
    tree = ast.parse(source)
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name)
    found = {node.name: node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name in names}
    missing = set(names) - set(found)
    if missing:
        raise SystemExit(f"{class_name}: no method {sorted(missing)}")
    namespace = dict(SCOPE)
    # exec runs the official code itself (here and below): it cannot be imported without LLaVA-NeXT.
    module = ast.Module(body=list(found.values()), type_ignores=[])
    exec(compile(module, class_name, "exec"), namespace)  # noqa: S102
    return {name: namespace[name] for name in names}


def statements(source: str, first: int, last: int, first_text: str, last_text: str) -> types.CodeType:
    """Lines first..last (1-based) of a file, dedented and compiled; the ends are checked against the texts."""
    lines = source.splitlines()[first - 1:last]
    if lines[0].strip() != first_text or lines[-1].strip() != last_text:
        raise SystemExit(f"lines {first}-{last} are not what was read: {lines[0]!r} ... {lines[-1]!r}")
    return compile(textwrap.dedent("\n".join(lines)), f"lines {first}-{last}", "exec")


class Official:
    def __init__(self, holitom_dir: Path, earlytom_dir: Path):
        commit, files = HOLITOM
        arch = read_official(holitom_dir, commit, "holitom/llava_arch.py", files["holitom/llava_arch.py"])
        qwen = read_official(holitom_dir, commit, "holitom/modeling_qwen2.py", files["holitom/modeling_qwen2.py"])
        self.holitom_methods = methods(arch, "LlavaMetaForCausalLM_holitom", [
            "cluster_dpc_knn", "select_static_windows", "merge_tokens_by_clustering",
            "merge_tokens_by_attention_density", "merge_tokens_by_density", "add_newline_token", "holitom",
            "get_static_dynamic_features"])
        # prepare_inputs_labels_for_multimodal, per video after pooling: similarity, windows, budget, per window.
        self.holitom_outer = statements(arch, 375, 407, "batch_size, seq_len, embed_dim = pooled_image_feat.shape",
                                        "image_features.append(torch.cat(segment_features, dim=0))")
        # The "one_token" branch that appends the one newline.
        self.one_token_newline = statements(arch, 458, 461, "image_feature = torch.cat((", "), dim=0)")
        self.holitom_inner = statements(qwen, 147, 208, "# compute pruned tokens, generate fastv sign",
                                        "cache_position = cache_position[:new_seq_length]")

        commit, files = EARLYTOM
        arch = read_official(earlytom_dir, commit, "earlytom/llava_arch.py", files["earlytom/llava_arch.py"])
        qwen = read_official(earlytom_dir, commit, "earlytom/modeling_qwen2.py", files["earlytom/modeling_qwen2.py"])
        siglip_path = "LLaVA-NeXT/llava/model/multimodal_encoder/siglip_encoder.py"
        siglip = read_official(earlytom_dir, commit, siglip_path, files[siglip_path])
        self.earlytom_methods = methods(arch, "LlavaMetaForCausalLM_earlytom", [
            "cluster_dpc_knn", "merge_tokens_by_clustering", "add_newline_token", "merge_tokens_by_attention_frame",
            "merge_tokens_by_local_window", "spatial_compression", "divided_static_dynamic"])
        self.earlytom_outer = statements(arch, 394, 415, "reduced_frames, seq_len, _ = pooled_image_feat.shape",
                                         "image_features.append(torch.cat(segment_features, dim=0))")
        self.encoder_methods = methods(siglip, "SigLipEncoder", ["compression", "coarse_segment", "fine_segment"])
        self.earlytom_inner = statements(qwen, 242, 305, "last_layer_attention = layer_outputs[1]",
                                         "cache_position = cache_position[:new_seq_length]")

    def holitom_reduce(self, features, attention, *, retain_ratio, tau, layout, newline, max_window, beta, knn):
        stub = types.SimpleNamespace(model=types.SimpleNamespace(image_newline=newline))
        for name, function in self.holitom_methods.items():
            setattr(stub, name, types.MethodType(function, stub))
        scope = dict(SCOPE, self=stub, pooled_image_feat=features.clone(), attn_weights=attention.clone(), tau=tau,
                     max_window_size=max_window, retain_ratio=retain_ratio, D=0.0, Beta=beta, K=knn,
                     images_dtype=features.dtype, mm_newline_position=layout, image_features=[])
        exec(self.holitom_outer, scope)  # noqa: S102
        tokens = scope["image_features"][0]
        if layout == "one_token":
            newline_scope = dict(SCOPE, self=stub, image_feature=tokens)
            exec(self.one_token_newline, newline_scope)  # noqa: S102
            tokens = newline_scope["image_feature"]
        return tokens, scope["selected_frames"], scope["total_reduced"]

    def holitom_windows(self, similarity, tau, max_window):
        stub = types.SimpleNamespace()
        return self.holitom_methods["select_static_windows"](stub, similarity, similarity.shape[0] + 1, tau,
                                                             max_window)

    def earlytom_merge_frames(self, hidden, scores, *, tau, max_window, ema, regroup):
        stub = types.SimpleNamespace(ema=ema, mode="mixing", max_window=max_window)
        for name, function in self.encoder_methods.items():
            setattr(stub, name, types.MethodType(function, stub))
        return stub.compression(hidden.clone(), scores.clone(), tau, last_layer=regroup)

    def earlytom_select_tokens(self, features, scores, groups, *, retain_ratio, frames_in):
        stub = types.SimpleNamespace(model=types.SimpleNamespace(image_newline=None))
        for name, function in self.earlytom_methods.items():
            setattr(stub, name, types.MethodType(function, stub))
        scope = dict(SCOPE, self=stub, pooled_image_feat=features.clone(), attn_weights=scores.clone(),
                     selected_frames=list(groups), init_frames=frames_in, retain_ratio=retain_ratio, D=0.0,
                     Beta=0.6, K=7, images_dtype=features.dtype, mm_newline_position="one_token", image_features=[])
        exec(self.earlytom_outer, scope)  # noqa: S102
        return scope["image_features"][0]

    def inner_merge(self, code, prefix, hidden, head_attention, *, start, length, ratio):
        """One of the two inner blocks; head_attention [1, H, N, N] plays layer k-1's attention."""
        tokens = hidden.shape[1]
        stub = types.SimpleNamespace(rotary_emb=lambda states, positions: None)
        scope = dict(SCOPE, self=stub, layer_outputs=(None, head_attention), hidden_states=hidden.clone(),
                     seq_length_with_past=tokens, position_ids=torch.arange(tokens)[None],
                     cache_position=torch.arange(tokens))
        scope.update({f"{prefix}_image_token_start_index": start, f"{prefix}_image_token_length": length,
                      f"{prefix}_r": ratio})
        exec(code, scope)  # noqa: S102
        return scope["hidden_states"], scope["keep_indexs"]


# ---- inputs --------------------------------------------------------------------------------------------------------

def drifting_video(frames: int, per_frame: int, channels: int, seed: int, *, cuts=(), calm: float = 1.0,
                   still: bool = False) -> torch.Tensor:
    """[T, S, C] float32 random walk: most positions move little from frame to frame, a few a lot (cosine to the
    next frame from about 0.99 down to 0.5), a new scene at each cut. calm scales the moves; still: none at all."""
    generator = torch.Generator().manual_seed(seed)
    scene = torch.randn(per_frame, channels, generator=generator)
    step = torch.rand(per_frame, 1, generator=generator) ** 3 * 1.5 * calm
    video = []
    for frame in range(frames):
        if frame in cuts:
            scene = torch.randn(per_frame, channels, generator=generator)
        elif frame and not still:
            scene = scene + step * torch.randn(per_frame, channels, generator=generator)
        video.append(scene.clone())
    return torch.stack(video)


def noise_video(frames: int, per_frame: int, channels: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(frames, per_frame, channels, generator=generator)


def attention_map(frames: int, per_frame: int, seed: int, *, levels: int = 0) -> torch.Tensor:
    """[T, S] positive scores; levels > 0 rounds them to that many values (ties)."""
    scores = torch.rand(frames, per_frame, generator=torch.Generator().manual_seed(seed + 1000))
    if levels:
        scores = torch.round(scores * (levels - 1)) / (levels - 1)
    return scores / scores.sum(dim=1, keepdim=True)


def newline_token(channels: int, seed: int) -> torch.Tensor:
    return torch.randn(channels, generator=torch.Generator().manual_seed(seed + 2000))


# ---- cases ---------------------------------------------------------------------------------------------------------

def record_holitom_windows(official: Official) -> list[dict]:
    cases = []
    for name, frames, per_frame, tau, max_window, seed in [
        ("random, tau 0.8", 10, 12, 0.8, 1024, 0),
        ("random, tau 0.65", 16, 20, 0.65, 1024, 1),
        ("random, max window 3", 16, 20, 0.65, 3, 1),
        ("random, max window 2", 12, 8, 0.5, 2, 2),
        ("long, tau 0.9", 32, 30, 0.9, 1024, 3),
        ("two frames", 2, 9, 0.8, 1024, 4),
    ]:
        video = drifting_video(frames, per_frame, 8, seed, cuts=(frames // 2,))
        unit = F.normalize(video, p=2, dim=-1)
        similarity = F.cosine_similarity(unit[:-1], unit[1:], dim=-1)
        windows, reduced = official.holitom_windows(similarity, tau, max_window)
        cases.append({"name": name, "similarity": similarity, "tau": tau, "max_window": max_window, "windows": windows,
                      "reduced": reduced})
    # Hand-made. Tie: (0, 1) + (2, 2) and (0, 2) both remove 2; the shorter last window wins. At tau: not static.
    for name, similarity, tau in [
        ("tie keeps the shorter window", [[0.9, 0.9], [0.9, 0.1]], 0.8),
        ("similarity equal to tau is not static", [[0.5, 0.5], [0.5, 0.75]], 0.5),
        ("one frame", torch.zeros(0, 4), 0.8),
    ]:
        similarity = torch.as_tensor(similarity, dtype=torch.float32)
        windows, reduced = official.holitom_windows(similarity, tau, 1024)
        cases.append({"name": name, "similarity": similarity, "tau": tau, "max_window": 1024, "windows": windows,
                      "reduced": reduced})
    return cases


HOLITOM_REDUCE = [
    # (name, video kind, T, S, C, retain_ratio, tau, layout, max_window, attention levels, seed)
    ("one_token, typical", "drift", 8, 16, 8, 0.25, 0.8, "one_token", 1024, 0, 0),
    ("grid, typical", "drift", 8, 16, 8, 0.25, 0.8, "grid", 1024, 0, 0),
    ("one_token, tau 0.65 ratio 0.1", "drift", 12, 25, 8, 0.10, 0.65, "one_token", 1024, 0, 1),
    ("grid, tau 0.65 ratio 0.1", "drift", 12, 25, 8, 0.10, 0.65, "grid", 1024, 0, 1),
    ("one_token, OV-size frames", "drift", 4, 196, 4, 0.15, 0.8, "one_token", 1024, 0, 2),
    ("grid, LLaVA-Video-size frames", "drift", 4, 169, 4, 0.15, 0.8, "grid", 1024, 0, 3),
    ("one_token, max window 2", "drift", 10, 16, 8, 0.2, 0.7, "one_token", 2, 0, 4),
    ("grid, max window 3", "drift", 10, 16, 8, 0.2, 0.7, "grid", 3, 0, 4),
    ("one_token, one frame", "drift", 1, 16, 8, 0.25, 0.8, "one_token", 1024, 0, 5),
    ("grid, one frame", "drift", 1, 16, 8, 0.25, 0.8, "grid", 1024, 0, 5),
    ("one_token, two frames", "drift", 2, 16, 8, 0.25, 0.8, "one_token", 1024, 0, 6),
    ("grid, two frames", "drift", 2, 16, 8, 0.25, 0.8, "grid", 1024, 0, 6),
    ("one_token, no static token", "noise", 6, 16, 8, 0.25, 0.8, "one_token", 1024, 0, 7),
    ("grid, no static token", "noise", 6, 16, 8, 0.25, 0.8, "grid", 1024, 0, 7),
    ("one_token, all static", "still", 5, 16, 8, 0.1, 0.8, "one_token", 1024, 0, 8),
    ("grid, all static", "still", 5, 16, 8, 0.1, 0.8, "grid", 1024, 0, 8),
    ("one_token, attention ties", "drift", 8, 16, 8, 0.3, 0.8, "one_token", 1024, 3, 9),
    ("grid, attention ties", "drift", 8, 16, 8, 0.3, 0.8, "grid", 1024, 3, 9),
    ("one_token, ratio capped at 1", "drift", 6, 9, 8, 0.9, 0.8, "one_token", 1024, 0, 10),
    ("grid, 3x3 frames, calm", "calm", 12, 9, 8, 0.2, 0.8, "grid", 1024, 0, 11),
    ("one_token, one static position, rounded to no token", "one still", 2, 16, 8, 0.1, 0.8, "one_token", 1024, 0, 13),
    ("grid, one static position, rounded to no token", "one still", 2, 16, 8, 0.1, 0.8, "grid", 1024, 0, 13),
    ("one_token, repeated static tokens (density ties)", "repeats", 4, 16, 8, 0.1, 0.8, "one_token", 1024, 0, 12),
    ("grid, repeated static tokens (density ties)", "repeats", 4, 16, 8, 0.1, 0.8, "grid", 1024, 0, 12),
]


def make_video(kind: str, frames: int, per_frame: int, channels: int, seed: int) -> torch.Tensor:
    if kind == "noise":
        return noise_video(frames, per_frame, channels, seed)
    if kind == "still":
        return drifting_video(frames, per_frame, channels, seed, still=True)
    if kind == "one still":  # noise but for position 0, the same in every frame
        video = noise_video(frames, per_frame, channels, seed)
        video[:, 0] = video[0, 0]
        return video
    if kind == "repeats":  # a still video whose 16 positions hold 4 distinct tokens
        return drifting_video(frames, 4, channels, seed, still=True).repeat(1, per_frame // 4, 1)
    if kind == "calm":
        return drifting_video(frames, per_frame, channels, seed, calm=0.4)
    return drifting_video(frames, per_frame, channels, seed, cuts=(frames // 2,) if frames > 3 else ())


def record_holitom_reduce(official: Official) -> list[dict]:
    cases = []
    for name, kind, frames, per_frame, channels, retain_ratio, tau, layout, max_window, levels, seed in HOLITOM_REDUCE:
        features = make_video(kind, frames, per_frame, channels, seed)
        attention = attention_map(frames, per_frame, seed, levels=levels)
        newline = newline_token(channels, seed)
        settings = {"retain_ratio": retain_ratio, "tau": tau, "layout": layout, "max_window": max_window,
                    "beta": 0.6, "knn": 7}
        # The official density noise draws from the global RNG, once per clustered window, in window order.
        torch.manual_seed(seed)
        tokens, windows, reduced = official.holitom_reduce(features, attention, newline=newline, **settings)
        cases.append({"name": name, "features": features, "attention": attention, "newline": newline, "seed": seed,
                      "settings": settings, "tokens": tokens, "windows": windows, "reduced": reduced})
    return cases


def record_earlytom_merge_frames(official: Official) -> list[dict]:
    cases = []
    for name, kind, frames, per_frame, width, tau, max_window, ema, regroup, seed in [
        ("typical", "drift", 16, 16, 8, 0.6, 6, 0.9, False, 0),
        ("typical, last prune layer", "drift", 16, 16, 8, 0.6, 6, 0.9, True, 0),
        ("calm, M 8", "calm", 20, 16, 8, 0.5, 8, 0.9, False, 1),
        ("calm, M 8, last prune layer", "calm", 20, 16, 8, 0.5, 8, 0.9, True, 1),
        ("tau 0.8, ema 0.5", "calm", 12, 9, 8, 0.8, 6, 0.5, True, 2),
        ("all alike: windows of M-1", "still", 13, 9, 8, 0.6, 6, 0.9, True, 3),
        ("all different: single frames", "noise", 7, 9, 8, 0.6, 6, 0.9, True, 4),
        ("one frame", "drift", 1, 9, 8, 0.6, 6, 0.9, True, 5),
        ("two frames", "calm", 2, 9, 8, 0.6, 6, 0.9, True, 6),
        ("three frames", "calm", 3, 9, 8, 0.6, 6, 0.9, False, 7),
    ]:
        hidden = make_video(kind, frames, per_frame, width, seed)
        if kind == "still":  # a whisper of noise, so that the middle frames differ at all
            hidden = hidden + 1e-3 * noise_video(frames, per_frame, width, seed)
        scores = attention_map(frames, per_frame, seed)
        settings = {"tau": tau, "max_window": max_window, "ema": ema, "regroup": regroup}
        merged, merged_scores, groups = official.earlytom_merge_frames(hidden, scores, **settings)
        cases.append({"name": name, "hidden": hidden, "scores": scores, "settings": settings, "merged": merged,
                      "merged_scores": merged_scores, "groups": [tuple(group) for group in groups]})
    return cases


def record_earlytom_select_tokens(official: Official) -> list[dict]:
    cases = []
    for name, groups, per_frame, channels, retain_ratio, frames_in, levels, seed in [
        ("segments of 1, 2, 3 and 5 frames", [(0, 0), (1, 2), (3, 5), (6, 10)], 16, 8, 0.25, 16, 0, 0),
        ("OV-size: ceil 40 vs round 39", [(0, 1), (2, 5)], 196, 4, 0.2, 6, 0, 1),
        ("LLaVA-Video size", [(0, 2), (3, 3), (4, 6)], 169, 4, 0.15, 10, 0, 2),
        ("half rounds to even: 2.5 -> 2 runs", [(0, 3), (4, 4)], 25, 8, 0.1, 5, 0, 3),
        ("ratio capped at 1", [(0, 4), (5, 6)], 9, 8, 0.5, 14, 0, 4),
        ("one frame", [(0, 0)], 16, 8, 0.25, 1, 0, 5),
        ("score ties", [(0, 4), (5, 7)], 16, 8, 0.3, 10, 3, 6),
        ("many runs of two lengths", [(0, 5)], 49, 8, 0.3, 8, 0, 7),
    ]:
        frames = groups[-1][1] + 1
        features = noise_video(frames, per_frame, channels, seed)
        scores = attention_map(frames, per_frame, seed, levels=levels)
        tokens = official.earlytom_select_tokens(features, scores, groups, retain_ratio=retain_ratio,
                                                 frames_in=frames_in)
        cases.append({"name": name, "features": features, "scores": scores, "groups": groups,
                      "retain_ratio": retain_ratio, "frames_in": frames_in, "tokens": tokens})
    return cases


def record_inner_merge(official: Official) -> list[dict]:
    cases = []
    for name, tokens, width, start, length, ratio, heads, similar, seed in [
        ("typical", 48, 16, 6, 33, 0.5, 4, False, 0),
        ("odd span, round(3.5) = 4 kept", 14, 8, 3, 7, 0.5, 2, False, 1),
        ("ratio 0.75", 40, 8, 2, 30, 0.75, 2, False, 2),
        ("ratio 0 keeps all", 20, 8, 4, 10, 0.0, 2, False, 3),
        ("span at the start", 24, 8, 0, 16, 0.5, 2, False, 4),
        ("span to the end", 24, 8, 8, 16, 0.5, 2, False, 5),
        ("many fold into one (halving order)", 30, 8, 4, 20, 0.8, 2, True, 6),
        ("attention ties", 30, 8, 4, 20, 0.5, 1, False, 7),
    ]:
        generator = torch.Generator().manual_seed(seed)
        hidden = torch.randn(1, tokens, width, generator=generator) * 3
        if similar:  # one direction dominates the span, so that most tokens choose the same kept token
            hidden[0, start:start + length] += 4 * torch.randn(width, generator=generator)
        logits = torch.randn(1, heads, tokens, tokens, generator=generator)
        if name == "attention ties":
            logits = torch.round(logits)
        head_attention = logits.softmax(dim=-1)
        if name == "attention ties":  # exact ties: the last row of the single head, quantised after the softmax
            head_attention[0, 0, -1] = torch.round(head_attention[0, 0, -1] * 20) / 20
        attention = torch.mean(head_attention, dim=1)[0][-1]  # as the reference reduces it
        merged, keep = official.inner_merge(official.holitom_inner, "HOLITOM", hidden, head_attention, start=start,
                                            length=length, ratio=ratio)
        merged_et, keep_et = official.inner_merge(official.earlytom_inner, "INNER", hidden, head_attention,
                                                  start=start, length=length, ratio=ratio)
        if not (torch.equal(merged, merged_et) and torch.equal(keep, keep_et)):
            raise SystemExit(f"{name}: HoliTom's and EarlyTom's inner steps differ")
        cases.append({"name": name, "hidden": hidden, "attention": attention, "start": start, "length": length,
                      "ratio": ratio, "merged": merged, "keep": keep})
    return cases


def compact(value):
    """A copy whose tensors own their storage (torch.save writes a view's whole storage)."""
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, dict):
        return {key: compact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(compact(item) for item in value)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holitom", type=Path, required=True, help="clone of github.com/cokeshao/HoliTom")
    parser.add_argument("--earlytom", type=Path, required=True, help="clone of github.com/viridisGreen/EarlyTom")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("cases.pt"))
    arguments = parser.parse_args()
    os.environ.pop("NO_BETA", None)  # the official cluster merge reads it: unset means beta is used
    torch.set_num_threads(1)
    official = Official(arguments.holitom, arguments.earlytom)
    cases = {
        "meta": {"holitom_commit": HOLITOM[0], "earlytom_commit": EARLYTOM[0], "torch": torch.__version__},
        "holitom_windows": record_holitom_windows(official),
        "holitom_reduce": record_holitom_reduce(official),
        "earlytom_merge_frames": record_earlytom_merge_frames(official),
        "earlytom_select_tokens": record_earlytom_select_tokens(official),
        "inner_merge": record_inner_merge(official),
    }
    torch.save(compact(cases), arguments.output)
    for kind, recorded in cases.items():
        if kind != "meta":
            print(f"{kind}: {len(recorded)} cases")
    print(f"wrote {arguments.output} ({arguments.output.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
