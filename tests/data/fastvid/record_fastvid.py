"""Record what the official FastVID computes on small seeded float32 inputs, for tests/test_fastvid.py.

    python tests/data/fastvid/record_fastvid.py --source /path/to/FastVID [--output tests/data/fastvid/cases.pt]

`--source` is github.com/LunarShen/FastVID: a checkout, or a bare git directory (read at COMMIT). FastVID has no
functions of its own: its method is the `if seq_length > 1:` block of a forward method. That block is cut out of the
source with `ast` and its statements run unchanged on CPU, on a namespace holding what the forward method would hold
(a stand-in `self` with the hyperparameters and the per-video inputs). Parts (DySeg, the budget, the density, one
merge) are cut from the same block at the authors' section comments, or, for the Qwen2.5-VL merge, as its merge loop.
Nothing is edited. See README.md.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import textwrap
from pathlib import Path
from types import SimpleNamespace

import torch

COMMIT = "a40a109cb8df20e8c2c17c6850f8269717369990"
ONEVISION = ("fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py", "Qwen2Model")
QWEN = ("fastvid_qwen25vl/lmms-eval/lmms_eval/models/qwenvlutils/modeling_qwen2_5_vl.py",
        "Qwen2_5_VLForConditionalGeneration")
SECTION = re.compile(r"^\s*#{12} (.+?) #{12}\s*$")
MARGIN = 1e-4  # least distance of a cosine from tau, ignore and the c-1 cut boundary
SEEDS = (0, 1, 2)  # the density's tie noise: a case is kept only when every seed gives the same tokens
OV_DEFAULTS = dict(retain_ratio=0.10, c=8, tau=0.9, d=0.4, p=4, beta=0.6)
QW_DEFAULTS = dict(retain_ratio=0.27, c=8, tau=0.84, ignore=0.95, d=0.4, p=4, beta=0.6)


# ----------------------------------------------------------------------------------------------- the official code
class Official:
    def __init__(self, source: Path):
        self.source = source
        self.onevision = self._block(*ONEVISION)
        self.qwen = self._block(*QWEN)
        self.onevision_sections = self._sections(self.onevision)
        body = ast.parse(self.qwen).body
        first = {name: next(i for i, node in enumerate(body) if ast.unparse(node).startswith(name))
                 for name in ("similarity_matrix =", "segments_hidden_states =")}
        self.qwen_before_dyseg = self._compile(body[:first["similarity_matrix ="]], "qwen prelude")
        self.qwen_dyseg = self._compile(body[first["similarity_matrix ="]:first["segments_hidden_states ="]],
                                        "qwen DySeg")
        self.qwen_after_dyseg = self._compile(body[first["segments_hidden_states ="]:], "qwen STPrune")
        merge_loop = next(node for node in ast.walk(ast.parse(self.qwen)) if isinstance(node, ast.For)
                          and ast.unparse(node.target) == "tmp_context_indexs")
        self.qwen_merge = self._compile([merge_loop], "qwen merge loop")

    def _read(self, path: str) -> str:
        if (self.source / "HEAD").is_file() and not (self.source / ".git").exists():  # a bare git directory
            return subprocess.run(["git", "--git-dir", str(self.source), "show", f"{COMMIT}:{path}"],
                                  capture_output=True, text=True, check=True).stdout
        head = subprocess.run(["git", "-C", str(self.source), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=False)
        if head.returncode == 0 and head.stdout.strip() != COMMIT:
            raise SystemExit(f"{self.source} is at {head.stdout.strip()}, expected {COMMIT}")
        return (self.source / path).read_text()

    def _block(self, path: str, class_name: str) -> str:
        """The source of the `if seq_length > 1:` body in class_name.forward, dedented."""
        text = self._read(path)
        tree = ast.parse(text)
        cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name)
        forward = next(node for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == "forward")
        block = next(node for node in ast.walk(forward)
                     if isinstance(node, ast.If) and ast.unparse(node.test) == "seq_length > 1")
        lines = text.splitlines()[block.body[0].lineno - 1:block.body[-1].end_lineno]
        return textwrap.dedent("\n".join(lines))

    @staticmethod
    def _sections(block: str) -> dict[str, object]:
        """The block cut at its `############ Name ############` comments: {"prelude" | name: code}, in order."""
        sections, name, lines = {}, "prelude", []
        for line in block.splitlines() + ["############ end ############"]:
            match = SECTION.match(line)
            if match:
                sections[name] = compile("\n".join(lines) + "\n", f"FastVID OV {name}", "exec")
                name, lines = match.group(1), []
            else:
                lines.append(line)
        return sections

    @staticmethod
    def _compile(nodes: list[ast.stmt], name: str):
        return compile(ast.Module(body=nodes, type_ignores=[]), f"FastVID {name}", "exec")


def onevision_namespace(features, attention, global_features, settings) -> dict:
    frames, per_frame, width = features.shape
    model = SimpleNamespace(
        video_start_idx=0, video_token_len=frames * per_frame, frame_num=frames,
        frame_attn_weights=attention.clone(), frame_global_features=global_features.clone(),
        fastvid_retention_ratio=settings["retain_ratio"], fastvid_DySeg_c=settings["c"],
        fastvid_DySeg_tau=settings["tau"], fastvid_STPrune_d=settings["d"], fastvid_DTM_p=settings["p"],
        fastvid_DTM_beta=settings["beta"])
    positions = torch.zeros(1, frames * per_frame, 2)
    return {"torch": torch, "F": torch.nn.functional, "self": model,
            "hidden_states": features.reshape(1, frames * per_frame, width).clone(),
            "seq_length": frames * per_frame, "causal_mask": None, "position_embeddings": (positions, positions)}


def run_onevision(official: Official, features, attention, global_features, settings, seed: int,
                  segment_sizes: list[int] | None = None, stop_after: str | None = None) -> dict:
    """Run the OV block's sections in order (DySeg replaced by `segment_sizes` when given). Returns snapshots."""
    torch.manual_seed(seed)
    namespace = onevision_namespace(features, attention, global_features, settings)
    seen = {}
    for name, code in official.onevision_sections.items():
        if name == "DySeg" and segment_sizes is not None:
            namespace["segment_sizes"] = list(segment_sizes)
        else:
            if name == "DTM for Single-Frame Segment":
                chosen = namespace["sampled_indexs"]
                filtered = namespace["token_filtered"]
                seen["single_frame_targets"] = torch.gather(
                    filtered, 1, chosen.unsqueeze(-1).expand(-1, -1, filtered.shape[-1])).clone()
            exec(code, namespace)
        if name == "DySeg":
            seen["segment_sizes"] = list(namespace["segment_sizes"])
        if name == "Compute Anchor Token Distribution":
            seen["salient"] = list(namespace["frm_salient_num_list"])
            seen["anchors"] = namespace["frm_context_num_list"].tolist()
        if name == "Parallel Density Score Computation":
            seen["rest"] = namespace["token_filtered"].clone()
            seen["density"] = namespace["density_score"].clone()
        if name == "DTM for Single-Frame Segment":
            seen["single_frame_merged"] = namespace["frm_context_tokens"].clone()
        if name == stop_after:
            return seen
    seen["tokens"] = namespace["hidden_states"][0].clone()
    seen["kept"] = namespace["keep_indexs"].clone()
    return seen


def run_qwen(official: Official, features, attention, global_features, settings, seed: int,
             segment_sizes: list[int] | None = None) -> dict:
    frames, per_frame, width = features.shape
    torch.manual_seed(seed)
    model = SimpleNamespace(
        fastvid_retention_ratio=settings["retain_ratio"], fastvid_DySeg_c=settings["c"],
        fastvid_DySeg_tau=settings["tau"], fastvid_DySeg_ignore=settings["ignore"],
        fastvid_STPrune_d=settings["d"], fastvid_DTM_p=settings["p"], fastvid_DTM_beta=settings["beta"])
    length = frames * per_frame
    namespace = {
        "torch": torch, "self": model, "inputs_embeds": features.reshape(1, length, width).clone(),
        # (T, H, W) before the 2x2 merge, with (H // 2) * (W // 2) = S
        "video_grid_thw": torch.tensor([[frames, 2, 2 * per_frame]]), "prompt_start_len": 0, "video_len": length,
        "seq_length": length, "frame_attn_weights": attention.clone(), "frame_global_features": global_features.clone(),
        "position_ids": torch.arange(length).expand(3, 1, -1).clone(), "attention_mask": torch.ones(1, length),
        "cache_position": torch.arange(length)}
    exec(official.qwen_before_dyseg, namespace)
    if segment_sizes is None:
        exec(official.qwen_dyseg, namespace)
    else:
        namespace["segment_sizes"] = list(segment_sizes)
    exec(official.qwen_after_dyseg, namespace)
    return {"segment_sizes": list(namespace["segment_sizes"]), "tokens": namespace["inputs_embeds"][0].clone(),
            "kept": namespace["keep_indexs"].clone()}


def run_qwen_merge(official: Official, segment: torch.Tensor, salient: torch.Tensor, targets: list[torch.Tensor],
                   beta: float) -> list[torch.Tensor]:
    """The Qwen2.5-VL merge loop on one segment [L*S, C], salient indices and each anchor frame's target indices."""
    namespace = {"torch": torch, "self": SimpleNamespace(fastvid_DTM_beta=beta), "device_type": segment.device,
                 "cur_context_indexs": targets, "cur_salient_indexs": salient, "cur_hidden_states": segment,
                 "cur_all_indexs": torch.arange(segment.shape[0]), "cur_tome_hidden_states": segment,
                 "cur_tome_tokens": segment / segment.norm(dim=-1, keepdim=True), "cur_context_hidden_states": []}
    exec(official.qwen_merge, namespace)
    return namespace["cur_context_hidden_states"]


# ------------------------------------------------------------------------------------------------------------ inputs
TRANSITION_STEP = {"same": 0.05, "close": 0.25, "apart": 0.45, "far": 0.6}


def synthetic_video(frames: int, per_frame: int, width: int, seed: int, pattern: str = "mixed",
                    global_width: int = 16):
    """(features [T, S, C], attention [T, S], global_features [T, G]), float32.

    The global vectors walk on the sphere with steps of several sizes (near duplicates, small and large changes,
    scene cuts), then get random lengths. Token positions are static, slow or fast; a scene cut redraws them."""
    generator = torch.Generator().manual_seed(seed)
    kinds = {"mixed": ["same", "close", "apart", "far", "same", "close", "cut"],
             "similar": ["same", "close"], "duplicates": ["same"]}[pattern]
    direction = torch.nn.functional.normalize(torch.randn(global_width, generator=generator), dim=0)
    scene = torch.randn(per_frame, width, generator=generator)
    speed = torch.rand(per_frame, 1, generator=generator) ** 2
    speed[torch.rand(per_frame, 1, generator=generator) < 0.3] = 0.0
    globals_, features = [], []
    for frame in range(frames):
        kind = kinds[int(torch.randint(len(kinds), (1,), generator=generator))] if frame else "same"
        if kind == "cut":
            direction = torch.randn(global_width, generator=generator)
            scene = torch.randn(per_frame, width, generator=generator)
        else:
            step = TRANSITION_STEP[kind] * torch.randn(global_width, generator=generator) / global_width ** 0.5
            direction = direction + step
            scene = scene + TRANSITION_STEP[kind] * speed * torch.randn(per_frame, width, generator=generator)
        direction = torch.nn.functional.normalize(direction, dim=0)
        globals_.append(direction * (0.5 + 2.5 * torch.rand(1, generator=generator)))
        features.append(scene.clone())
    attention = torch.softmax(2 * torch.randn(frames, per_frame, generator=generator), dim=-1)
    return torch.stack(features).float(), attention.float(), torch.stack(globals_).float()


def decided_with_margin(global_features: torch.Tensor, c: int, thresholds: list[float]) -> bool:
    """Whether no neighbour cosine is within MARGIN of a threshold or of the c-1 cut boundary."""
    if global_features.shape[0] < 2:
        return True
    unit = global_features / global_features.norm(dim=1, keepdim=True)
    cosine = (unit[:-1] * unit[1:]).sum(dim=1).double()
    if any(bool(((cosine - threshold).abs() < MARGIN).any()) for threshold in thresholds):
        return False
    ordered = cosine.sort().values
    cuts = min(c - 1, len(ordered))  # topk takes the `cuts` smallest: the last taken and the first left must differ
    return not 0 < cuts < len(ordered) or float(ordered[cuts] - ordered[cuts - 1]) > MARGIN


def same_outcome(runs: list[dict]) -> bool:
    first = runs[0]
    return all(torch.equal(first["kept"], run["kept"]) and torch.allclose(first["tokens"], run["tokens"], atol=1e-5)
               for run in runs[1:])


# ------------------------------------------------------------------------------------------------------------- cases
def record_reduce(official: Official, qwen: bool) -> list[dict]:
    defaults = QW_DEFAULTS if qwen else OV_DEFAULTS
    runner = run_qwen if qwen else run_onevision
    cases = []
    for name, frames, per_frame, width, pattern, changes, first_seed in (QWEN_CASES if qwen else ONEVISION_CASES):
        settings = {**defaults, **changes}
        # The official code crashes with fewer frames than c (§6.1): the expected result is the official one at c = T.
        # Qwen2.5-VL's also crashes without any cut: its STPrune then runs on the one segment [T].
        reference_settings = {**settings, "c": min(settings["c"], max(frames, 1))}
        thresholds = [settings["tau"]] + ([settings["ignore"]] if qwen else [])
        crashes = {}
        for seed in range(first_seed, first_seed + 300):
            features, attention, global_features = synthetic_video(frames, per_frame, width, seed, pattern)
            if not decided_with_margin(global_features, reference_settings["c"], thresholds):
                continue
            inputs = (features.clone(), attention.clone(), global_features.clone())
            injected = None
            if qwen and not cuts_exist(global_features, reference_settings):
                injected = [frames]
            try:
                runs = [runner(official, features, attention, global_features, reference_settings, run_seed,
                               **({"segment_sizes": injected} if injected else {})) for run_seed in SEEDS]
            except (RuntimeError, IndexError) as error:  # e.g. a budget above what a frame has left: not this seed
                crashes[f"{type(error).__name__}: {error}"] = crashes.get(f"{type(error).__name__}: {error}", 0) + 1
                continue
            if not same_outcome(runs):
                continue
            assert all(torch.equal(a, b) for a, b in zip(inputs, (features, attention, global_features)))
            if not wanted(name, runs[0], per_frame, settings):
                continue
            cases.append({"name": name, "seed": seed, "features": features, "attention": attention,
                          "global_features": global_features, "settings": settings,
                          "reference_c": reference_settings["c"], "injected_segments": injected,
                          "segment_sizes": runs[0]["segment_sizes"], "tokens": runs[0]["tokens"],
                          "kept": runs[0]["kept"]})
            print(f"{'QW' if qwen else 'OV'} {name}: seed {seed}, segments {runs[0]['segment_sizes']}, "
                  f"kept {runs[0]['kept'].numel()} of {frames * per_frame}"
                  + "".join(f"; {count} seeds before crashed ({error})" for error, count in crashes.items()))
            break
        else:
            raise SystemExit(f"{name}: no seed found")
    return cases


def cuts_exist(global_features: torch.Tensor, settings: dict) -> bool:
    if global_features.shape[0] < 2:
        return False
    unit = global_features / global_features.norm(dim=1, keepdim=True)
    return settings["c"] > 1 or bool(((unit[:-1] * unit[1:]).sum(dim=1) < settings["tau"]).any())


def wanted(name: str, run: dict, per_frame: int, settings: dict) -> bool:
    """Extra conditions some cases are named for."""
    sizes = run["segment_sizes"]
    if "odd segment" in name:
        return any(size >= 3 and size % 2 for size in sizes)
    if "no cut" in name:
        return len(sizes) == 1
    if "collapsed" in name:  # a frame keeps all its tokens
        frames_kept = torch.bincount(run["kept"] // per_frame)
        return bool((frames_kept == per_frame).any())
    if "segments of 4 or more" in name:
        return any(size >= 4 for size in sizes)
    if "caps bind" in name:  # fewer tokens kept than r per frame
        return run["kept"].numel() < int(per_frame * settings["retain_ratio"]) * sum(sizes)
    return True


# (name, T, S, C, global pattern, settings changed from the defaults, first seed)
ONEVISION_CASES = [
    ("paper budget, S=196", 4, 196, 4, "mixed", dict(c=2), 0),
    ("S=169: 16.9 -> 16 tokens", 3, 169, 4, "mixed", dict(c=2), 0),
    ("32 frames at c=8", 32, 25, 4, "mixed", dict(retain_ratio=0.3), 0),
    ("64 frames, segments of 4 or more", 64, 16, 4, "similar", dict(retain_ratio=0.25), 0),
    ("fewer frames than c", 5, 49, 4, "mixed", dict(retain_ratio=0.3), 0),
    ("one frame", 1, 64, 6, "mixed", dict(retain_ratio=0.25), 0),
    ("two frames", 2, 25, 6, "mixed", dict(retain_ratio=0.4, c=2), 0),
    ("no cut", 6, 36, 6, "similar", dict(retain_ratio=0.3, c=1, tau=0.5), 0),
    ("p=2, rho=0.05, d=0.2: an odd segment whose anchor frames merge only their own frame", 8, 100, 4, "similar",
     dict(retain_ratio=0.05, d=0.2, p=2, c=2, tau=0.5), 0),
    ("p=1", 8, 36, 6, "mixed", dict(retain_ratio=0.3, p=1, c=3), 0),
    ("p=3", 12, 25, 4, "similar", dict(retain_ratio=0.3, p=3, c=3, tau=0.8), 0),
    ("rho=0.6, short segments", 6, 36, 6, "mixed", dict(retain_ratio=0.6, c=4), 0),
    ("beta=0", 8, 25, 4, "mixed", dict(retain_ratio=0.3, beta=0.0, c=3), 0),
    ("beta=0.3", 8, 25, 4, "mixed", dict(retain_ratio=0.3, beta=0.3, c=3), 0),
    ("beta=0.9", 8, 25, 4, "mixed", dict(retain_ratio=0.3, beta=0.9, c=3), 0),
]
QWEN_CASES = [
    ("defaults, 16 frames", 16, 36, 4, "mixed", dict(c=4), 0),
    ("collapsed run: a run of near duplicates keeps one whole frame", 10, 49, 4, "duplicates",
     dict(c=2), 0),
    ("ignore > 1: no skipping", 12, 25, 6, "mixed", dict(ignore=1.01, c=3), 0),
    ("ignore <= tau: every segment collapses", 12, 25, 6, "mixed", dict(ignore=0.8, c=3), 0),
    ("fewer frames than c", 3, 49, 6, "mixed", dict(), 0),
    ("one frame", 1, 49, 6, "mixed", dict(), 0),
    ("no cut", 5, 36, 6, "similar", dict(c=1, tau=0.5), 0),
    ("two frames", 2, 49, 6, "mixed", dict(c=2), 0),
    ("p=2, 20 frames", 20, 16, 4, "mixed", dict(p=2, c=3, retain_ratio=0.5), 0),
    ("p=1", 10, 25, 6, "mixed", dict(p=1, c=2, retain_ratio=0.4), 0),
    ("rho=0.6: caps bind", 8, 25, 6, "mixed", dict(retain_ratio=0.6, c=3), 0),
    ("beta=0", 8, 25, 4, "mixed", dict(beta=0.0, c=3), 0),
    ("beta=0.3", 8, 25, 4, "mixed", dict(beta=0.3, c=3), 0),
    ("beta=0.9", 8, 25, 4, "mixed", dict(beta=0.9, c=3), 0),
]
# (T, c, tau, pattern, seed): DySeg alone, from the LLaVA-OneVision block (Qwen2.5-VL's DySeg is the same rule).
SEGMENT_CASES = [(64, 8, 0.9, "mixed", 0), (32, 8, 0.9, "mixed", 1), (16, 4, 0.84, "mixed", 2), (8, 8, 0.9, "mixed", 3),
                 (5, 8, 0.9, "mixed", 4), (2, 8, 0.9, "mixed", 5), (1, 8, 0.9, "mixed", 6), (10, 1, 0.5, "similar", 7),
                 (12, 1, 0.9, "mixed", 8), (9, 3, 1.01, "mixed", 9), (20, 4, -1.0, "mixed", 10)]
# (segment sizes, S, retain_ratio, d, p)
ALLOCATE_CASES = [([1, 2, 1, 3, 9, 7, 5, 4], 196, 0.10, 0.4, 4), ([4, 4, 4, 4], 169, 0.10, 0.4, 4),
                  ([3, 5, 1, 2, 7], 100, 0.05, 0.2, 2), ([3, 2, 4], 36, 0.3, 0.4, 1), ([6, 7, 1, 5], 36, 0.3, 0.4, 3),
                  ([4, 4], 196, 0.01, 0.4, 4), ([3, 3], 25, 0.4, 0.0, 4), ([2, 1, 3], 36, 0.6, 0.4, 4),
                  ([32], 196, 0.10, 0.4, 4), ([1], 49, 0.25, 0.4, 4)]


def record_segments(official: Official) -> list[dict]:
    cases = []
    for frames, c, tau, pattern, first_seed in SEGMENT_CASES:
        for seed in range(first_seed, first_seed + 300):
            _, _, global_features = synthetic_video(frames, 4, 2, seed, pattern)
            reference_c = min(c, frames)
            if not decided_with_margin(global_features, reference_c, [tau]):
                continue
            settings = {**OV_DEFAULTS, "c": reference_c, "tau": tau}
            seen = run_onevision(official, torch.zeros(frames, 4, 2), torch.rand(frames, 4), global_features,
                                 settings, 0, stop_after="DySeg")
            cases.append({"global_features": global_features, "c": c, "tau": tau, "reference_c": reference_c,
                          "segment_sizes": seen["segment_sizes"]})
            print(f"segment T={frames} c={c} tau={tau}: {seen['segment_sizes']}")
            break
    return cases


def record_allocations(official: Official) -> list[dict]:
    cases = []
    for sizes, per_frame, ratio, d, p in ALLOCATE_CASES:
        frames = sum(sizes)
        settings = {**OV_DEFAULTS, "retain_ratio": ratio, "d": d, "p": p}
        seen = run_onevision(official, torch.zeros(frames, per_frame, 2), torch.rand(frames, per_frame),
                             torch.randn(frames, 4), settings, 0, segment_sizes=sizes,
                             stop_after="Compute Anchor Token Distribution")
        cases.append({"segment_sizes": sizes, "frame_tokens": per_frame, "retain_ratio": ratio, "d": d, "p": p,
                      "salient": seen["salient"], "anchors": seen["anchors"]})
        print(f"allocate {sizes} S={per_frame} ratio={ratio} d={d} p={p}: {sum(seen['anchors'])} anchor tokens")
    return cases


def record_density_and_onevision_merges(official: Official) -> tuple[list[dict], list[dict]]:
    """Density and the single-frame merge (pool = the frame's rest, targets included), from the OV block."""
    densities, merges = [], []
    for frames, per_frame, width, ratio, beta, seed in [(4, 36, 8, 0.3, 0.6, 0), (2, 30, 64, 0.4, 0.6, 1),
                                                        (3, 49, 6, 0.3, 0.0, 2), (3, 49, 6, 0.3, 0.3, 3),
                                                        (3, 49, 6, 0.3, 0.9, 4)]:
        features, attention, global_features = synthetic_video(frames, per_frame, width, seed)
        settings = {**OV_DEFAULTS, "retain_ratio": ratio, "beta": beta, "c": 1}
        runs = [run_onevision(official, features, attention, global_features, settings, run_seed,
                              stop_after="DTM for Single-Frame Segment") for run_seed in SEEDS]
        assert all(torch.allclose(runs[0]["density"], run["density"], atol=1e-5) for run in runs)
        assert all(torch.allclose(runs[0]["single_frame_merged"], run["single_frame_merged"], atol=1e-5)
                   for run in runs)
        if beta == 0.6:
            densities.append({"tokens": runs[0]["rest"], "density": runs[0]["density"]})
        merges.append({"targets": runs[0]["single_frame_targets"], "pool": runs[0]["rest"], "beta": beta,
                       "merged": runs[0]["single_frame_merged"], "pool_holds_targets": True})
        print(f"density/merge [{frames}, {runs[0]['rest'].shape[1]}, {width}] beta={beta}")
    return densities, merges


def record_qwen_merges(official: Official) -> list[dict]:
    """The Qwen2.5-VL merge: pool = segment minus salient minus own targets, so a target may receive nothing."""
    merges = []
    for beta in (0.0, 0.3, 0.6, 0.9):
        generator = torch.Generator().manual_seed(int(beta * 10))
        segment = torch.randn(3 * 16, 6, generator=generator) + 2.0  # mostly one direction
        salient = torch.tensor([1, 5, 9, 20, 33, 40])
        targets = [torch.tensor([2, 7, 12]), torch.tensor([35, 38, 44])]
        segment[12] = -segment[torch.arange(48) != 12].mean(dim=0)  # the nearest target of no pool token
        merged = run_qwen_merge(official, segment, salient, targets, beta)
        for frame_targets, out in zip(targets, merged):
            taken = torch.cat([salient, frame_targets])
            pool = torch.tensor([i for i in range(48) if i not in taken.tolist()])
            merges.append({"targets": segment[frame_targets].unsqueeze(0), "pool": segment[pool].unsqueeze(0),
                           "beta": beta, "merged": out.unsqueeze(0), "pool_holds_targets": False})
        print(f"qwen merge beta={beta}")
    return merges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="LunarShen/FastVID checkout or git dir at " + COMMIT)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("cases.pt"))
    arguments = parser.parse_args()
    official = Official(arguments.source)
    densities, onevision_merges = record_density_and_onevision_merges(official)
    record = {
        "reference": {"repository": "LunarShen/FastVID", "commit": COMMIT, "onevision": ONEVISION[0],
                      "qwen": QWEN[0], "torch": str(torch.__version__)},
        "segment": record_segments(official),
        "allocate": record_allocations(official),
        "density_score": densities,
        "merge": onevision_merges + record_qwen_merges(official),
        "reduce": record_reduce(official, qwen=False),
        "reduce_segmentwise": record_reduce(official, qwen=True),
    }
    torch.save(record, arguments.output)
    print(f"wrote {arguments.output} ({arguments.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
