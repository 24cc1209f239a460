"""Option types shared by the commands, declared once."""

from __future__ import annotations

import functools
import inspect
import typing
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from framefusion.families import default_model

if TYPE_CHECKING:
    from framefusion.pipeline.preflight import RunSettings

# The alias the one built-in family that offers a default provides (see `framefusion models`).
DEFAULT_MODEL = default_model()
DEFAULT_MAX_FRAMES = 64

# Library errors name settings by their Python parameter names; these are the flags that set them where the flag
# is not simply --<name with dashes>.
_FLAGS_BY_SETTING = {"attn_implementation": "--attn", "json_output": "--json", "model_spec": "--model",
                     "num_frames": "--frames"}


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


# --- options several commands share, declared once -----------------------------------------------------------------
# name -> (type with its Typer option, default). A command names the ones it takes in `@shared_options(...)` and
# receives them together as `options`; `run_settings(options)` turns them into the library's settings.
SHARED_OPTIONS: dict[str, tuple[Any, Any]] = {
    "model": (ModelOption, DEFAULT_MODEL),
    "revision": (RevisionOption, None),
    "profile": (ProfileOption, "framefusion"),
    "profiles_file": (ProfilesFileOption, None),
    "frames": (FramesOption, None),
    "fps": (FpsOption, None),
    "max_frames": (MaxFramesOption, DEFAULT_MAX_FRAMES),
    "start": (StartOption, None),
    "end": (EndOption, None),
    "max_new_tokens": (MaxNewTokensOption, 128),
    "temperature": (TemperatureOption, 0.0),
    "seed": (SeedOption, None),
    "system": (SystemOption, None),
    "device": (DeviceOption, "auto"),
    "dtype": (DtypeOption, "auto"),
    "attn": (AttnOption, "sdpa"),
    "backend": (BackendOption, "auto"),
    "json_output": (JsonOption, False),
    "debug": (DebugOption, False),
    "trust_remote_code": (TrustRemoteCodeOption, False),
    "hub_kernels": (HubKernelsOption, False),
    "no_reference_positions": (NoReferencePositionsOption, False),
    "no_cache": (NoCacheOption, False),
}
OPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "loading": ("model", "revision", "device", "dtype", "attn", "trust_remote_code", "hub_kernels"),
    "profile": ("profile", "profiles_file"),
    "sampling": ("frames", "fps", "max_frames", "start", "end", "backend"),
    "generation": ("max_new_tokens", "temperature", "seed", "system"),
    "output": ("json_output", "debug"),
}


def shared_options(*names: str, **defaults: Any) -> Callable[[Callable], Callable]:
    """Add the shared options `names` (single options or OPTION_GROUPS) to a command, after its own parameters.

    The command declares an `options` parameter and receives them there, by name (`options.model`); `defaults`
    replaces a shared default for this command (bench's model).
    """
    chosen = [option for name in names for option in OPTION_GROUPS.get(name, (name,))]
    unknown = [name for name in [*chosen, *defaults] if name not in SHARED_OPTIONS]
    if unknown:
        raise ValueError(f"no shared option {', '.join(unknown)}")

    def decorate(command: Callable) -> Callable:
        hints = typing.get_type_hints(command, include_extras=True)
        own = [parameter.replace(annotation=hints.get(parameter.name, parameter.annotation))
               for parameter in inspect.signature(command).parameters.values() if parameter.name != "options"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=SHARED_OPTIONS[name][0],
                                   default=defaults.get(name, SHARED_OPTIONS[name][1])) for name in chosen]

        @functools.wraps(command)
        def with_options(**given: Any) -> Any:
            options = SimpleNamespace(**{name: given.pop(name) for name in chosen})
            return command(options=options, **given)

        # Typer reads the parameters from the signature and their types from the annotations.
        del with_options.__wrapped__
        with_options.__signature__ = inspect.Signature([*own, *added])
        with_options.__annotations__ = {parameter.name: parameter.annotation for parameter in [*own, *added]}
        return with_options

    return decorate


def run_settings(options: SimpleNamespace, **overrides: Any) -> RunSettings:
    """The library's settings of a run from a command's shared options (`overrides` win): the one place that makes
    them, so every command gets the same checks (framefusion.pipeline.preflight.run_settings)."""
    from framefusion.pipeline.preflight import run_settings as library_settings

    given = {**vars(options), **overrides}
    if given.get("fps") is None and given.get("max_frames", DEFAULT_MAX_FRAMES) != DEFAULT_MAX_FRAMES:
        warnings.warn("--max-frames caps sampling at a rate only: it has no effect without --fps", stacklevel=2)
    renamed = {"attn": "attn_implementation"}
    values = {renamed.get(name, name): value for name, value in given.items()
              if name not in ("json_output", "debug", "no_reference_positions", "no_cache")}
    if "no_reference_positions" in given:
        values["reference_positions"] = not given["no_reference_positions"]
    if "no_cache" in given:
        values["feature_cache"] = not given["no_cache"]
    return library_settings(**values)
