"""Option types shared by the commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from framefusion.families import default_model

# The alias the one built-in family that offers a default provides (see `framefusion models`).
DEFAULT_MODEL = default_model()

# Library errors name settings by their Python parameter names; these are the flags that set them where the flag
# is not simply --<name with dashes>.
_FLAGS_BY_SETTING = {"attn_implementation": "--attn", "json_output": "--json", "model_spec": "--model"}


def flag_for_setting(setting: str) -> str:
    """The command-line flag for a library setting name (errors.FrameFusionError.describe words errors with it)."""
    return _FLAGS_BY_SETTING.get(setting, "--" + setting.replace("_", "-"))

ModelOption = Annotated[str, typer.Option(
    "--model", "-m",
    help="Hub id, local folder, alias (see `framefusion models`), or random:tiny-<family> / random:<shape> "
         "(random weights, nothing to download).")]
RevisionOption = Annotated[Optional[str], typer.Option(help="Hub revision (branch, tag or commit) of the model.")]
ProfileOption = Annotated[str, typer.Option("--profile", "-p", help="Reduction profile (see `framefusion profiles`).")]
ProfilesFileOption = Annotated[Optional[Path], typer.Option(
    "--profiles-file", help="YAML file with more profiles or overrides (schema: docs/profiles.md).")]
FramesOption = Annotated[Optional[int], typer.Option(
    "--frames", help="Frames sampled uniformly in time (default 32; a multiple of the family's frame multiple, see "
                     "`framefusion models`).")]
FpsOption = Annotated[Optional[float], typer.Option("--fps", help="Sample at this rate instead, capped by --max-frames.")]
MaxFramesOption = Annotated[int, typer.Option("--max-frames", help="Cap on frames with --fps.")]
StartOption = Annotated[Optional[float], typer.Option("--start", help="Start of the span to sample, in seconds.")]
EndOption = Annotated[Optional[float], typer.Option("--end", help="End of the span to sample, in seconds.")]
MaxNewTokensOption = Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate per answer.")]
TemperatureOption = Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy (default).")]
SeedOption = Annotated[Optional[int], typer.Option(help="Random seed for sampling (with --temperature > 0).")]
SystemOption = Annotated[Optional[str], typer.Option(help="System prompt.")]
DeviceOption = Annotated[str, typer.Option(help="auto (GPU if there is one), cpu, cuda, cuda:1, mps.")]
DtypeOption = Annotated[str, typer.Option(help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16.")]
AttnOption = Annotated[str, typer.Option("--attn", help="Attention backend: sdpa, eager or flash_attention_2.")]
BackendOption = Annotated[str, typer.Option("--backend", help="Video decoder: auto, decord or pyav.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print only JSON on stdout (logs go to stderr).")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]
TrustRemoteCodeOption = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Allow the model repository's own Python code to run (off by default).")]
HubKernelsOption = Annotated[bool, typer.Option(
    "--hub-kernels", help="Let transformers replace layer forwards with kernels downloaded from the Hugging Face hub "
                          "(off by default: transformers' own forwards run).")]
NoReferencePositionsOption = Annotated[bool, typer.Option(
    "--no-reference-positions",
    help="Keep transformers 5.x's rotary positions where a family's reference ones differ (docs/positions.md), "
         "for comparison.")]
NoCacheOption = Annotated[bool, typer.Option(
    "--no-cache", help="Neither read nor write the vision-feature cache ($FRAMEFUSION_CACHE; see `framefusion cache`).")]
