"""Load any model spec into a (model, processor) pair: the one place that calls from_pretrained.

Hub models follow Hugging Face conventions (HF cache, HF_HUB_OFFLINE, `hf auth login`); a hub that does not
answer a quick probe means the local cache only (hub.py); failures become one-line ModelLoadErrors that say
what to do. Tiny random checkpoints are built once into the framefusion cache (FRAMEFUSION_CACHE, else
$XDG_CACHE_HOME/framefusion, else ~/.cache/framefusion) and reused; real-shape random models are built in memory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framefusion.runtime import transformers_compat as compat
from framefusion.errors import InputError, ModelLoadError, first_line
from framefusion.model_zoo.building import DEFAULT_TINY_LAYERS, build_tiny_checkpoint
from framefusion.model_zoo.hub import HubStatus, hub_access, hub_offline
from framefusion.model_zoo.shapes import build_random_model
from framefusion.model_zoo.specs import ModelSpec, SpecKind, parse_model_spec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, ProcessorMixin

OFFLINE_HINT = "connect to the internet, or use a local model directory, or a random:tiny-* model"


@dataclass
class LoadedModel:
    """A model ready for generation (eval mode, on its device) with its processor."""

    model: PreTrainedModel
    processor: ProcessorMixin
    spec: ModelSpec
    name: str


def load_model(
    spec: ModelSpec | str,
    *,
    dtype: torch.dtype,
    device: str,
    attn_implementation: str = "sdpa",
    revision: str | None = None,
    trust_remote_code: bool = False,
    hub_kernels: bool = False,
) -> LoadedModel:
    """Load `spec` (a ModelSpec or text for parse_model_spec) in `dtype` on `device` ("cpu", "cuda:0").

    `revision` (branch, tag or commit) applies to hub models only. `trust_remote_code` is passed to
    transformers as given (False: a model that needs its repository's code is refused, never asked about). Hub kernels (layer forwards replaced by kernels fetched from the hub, which
    transformers 5.25 does by default) stay off unless `hub_kernels`. Raises InputError for bad input (found before
    loading anything, e.g. a real-shape model too large for the device, or hub kernels this installation cannot
    give) and ModelLoadError when loading fails.
    """
    spec = parse_model_spec(spec) if isinstance(spec, str) else spec
    if hub_kernels:
        check_hub_kernels()
    if revision is not None and spec.kind is not SpecKind.HUB:
        raise InputError(f"a revision applies to hub models only, not to {spec.name}: leave it out")
    if spec.kind is SpecKind.SHAPE:
        model, processor = build_random_model(
            spec.target, dtype=dtype, device=device, attn_implementation=attn_implementation
        )
        if hub_kernels:
            _kernelize(model, device)
        return LoadedModel(model=model, processor=processor, spec=spec, name=spec.name)

    source = _built_tiny_checkpoint(spec.target) if spec.kind is SpecKind.TINY else spec.target
    options: dict[str, Any] = {}
    if revision is not None:
        options["revision"] = revision
    # Always said, False included: left unsaid, transformers asks on stdin whether to run a repository's code.
    options["trust_remote_code"] = trust_remote_code
    hub: HubStatus | None = None
    try:
        with hub_access() if spec.kind is SpecKind.HUB else nullcontext() as hub:
            if hub is not None and not hub.online:
                options["local_files_only"] = True
            model, processor = _from_pretrained(
                source, dtype=dtype, device=device, attn_implementation=attn_implementation, **options
            )
    except (InputError, ModelLoadError):
        raise
    except Exception as error:
        if not trust_remote_code and compat.needs_remote_code(error):
            raise InputError(f"{spec.name} runs Python code from its own repository, which stays off unless you allow "
                             "it: inspect that code first", setting="trust_remote_code") from error
        raise ModelLoadError(explain_load_failure(error, spec, revision, hub=hub)) from error
    if hub_kernels:
        _kernelize(model, device)
    return LoadedModel(model=model, processor=processor, spec=spec, name=spec.name)


def check_hub_kernels() -> None:
    """Refuse hub kernels (InputError, setting `hub_kernels`) where this installation cannot give them."""
    reason = compat.hub_kernels_unavailable()
    if reason is not None:
        raise InputError(reason, setting="hub_kernels")


def _kernelize(model: PreTrainedModel, device: str) -> None:
    # Loaded without kernels first, then kernelized as from_pretrained would: a failure here is the kernels' alone.
    try:
        compat.kernelize(model)
    except Exception as error:
        raise InputError(f"hub kernels could not be applied on {device} ({first_line(error)}): run without them",
                         setting="hub_kernels") from error


def _built_tiny_checkpoint(family: str) -> str:
    try:
        return ensure_tiny_checkpoint(family)
    except OSError as error:
        raise ModelLoadError(
            f"could not write the tiny {family} checkpoint under {framefusion_cache_dir()} ({first_line(error)}): "
            "set FRAMEFUSION_CACHE to a writable folder"
        ) from error


def _from_pretrained(
    source: str, *, dtype: torch.dtype, device: str, attn_implementation: str, **options: Any
) -> tuple[PreTrainedModel, ProcessorMixin]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    # The processor first: it is small, so a missing or private repository fails fast.
    processor = AutoProcessor.from_pretrained(source, **options)
    # With accelerate, weights go straight to the GPU; without it transformers refuses a device_map,
    # so the model loads on the CPU and moves after.
    direct = device != "cpu" and importlib.util.find_spec("accelerate") is not None
    placement = {"device_map": device} if direct else {}
    # Hub kernels stay off here (transformers 5.25 turns them on by default); load_model applies them on request.
    model = AutoModelForImageTextToText.from_pretrained(
        source, dtype=dtype, attn_implementation=attn_implementation, **placement,
        **compat.hub_kernels_load_options(), **options
    )
    if not direct:
        model = model.to(device)
    return model.eval(), processor


def framefusion_cache_dir() -> Path:
    """Where framefusion keeps what it builds: FRAMEFUSION_CACHE, else $XDG_CACHE_HOME/framefusion,
    else ~/.cache/framefusion."""
    if explicit := os.environ.get("FRAMEFUSION_CACHE"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "framefusion"


def tiny_checkpoint_dir(family: str) -> Path:
    """The cache folder of the tiny `family` checkpoint, keyed by the framefusion and transformers
    versions that build it (a new version never reuses an old build)."""
    versions = f"{_installed_version('framefusion')}-transformers{_installed_version('transformers')}"
    return framefusion_cache_dir() / "random" / f"tiny-{family}-{DEFAULT_TINY_LAYERS}layers-{versions}"


def ensure_tiny_checkpoint(family: str) -> str:
    """Path of the tiny `family` checkpoint, building it first if it is not cached.

    Built in a temporary sibling folder and renamed into place, so a reader (another process too)
    sees either no checkpoint or a complete one; when two processes race, the first rename wins and
    the other's build is discarded.
    """
    final = tiny_checkpoint_dir(family)
    if (final / "config.json").is_file():
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    try:
        build_tiny_checkpoint(family, staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            staging.rename(final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(final)


def explain_load_failure(
    error: BaseException, spec: ModelSpec, revision: str | None, *, hub: HubStatus | None = None
) -> str:
    """One line saying why `spec` could not be loaded and what to do, from the error and its causes.

    hub: what the probe before loading found, to say why the local cache was the only source."""
    from huggingface_hub import errors as hub_errors

    chain = _cause_chain(error)
    name = spec.name

    def has(kind: type) -> bool:
        return any(isinstance(item, kind) for item in chain)

    if has(hub_errors.GatedRepoError):
        return (
            f"{name} is gated: run `hf auth login` and accept its licence on https://huggingface.co/{spec.target}"
        )
    if has(hub_errors.RevisionNotFoundError):
        return f"revision {revision!r} does not exist for {name}: use an existing branch, tag or commit"
    if has(hub_errors.RepositoryNotFoundError):
        return (
            f"{name} was not found on the Hugging Face hub: check the name, or run `hf auth login` if it is private"
        )
    if has(hub_errors.OfflineModeIsEnabled) or has(hub_errors.LocalEntryNotFoundError) or has(ConnectionError):
        if spec.kind is SpecKind.HUB:
            if hub is not None and not hub.online:
                where = hub.reason
            else:
                where = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached"
            return f"{name} is not in the local Hugging Face cache and {where}: {OFFLINE_HINT}"
        return f"{name} is missing model files: {first_line(error)}"
    if isinstance(error, (ValueError, KeyError)) and "Unrecognized" in str(error):
        return (
            f"{name} is not an image/video-text model that transformers {_installed_version('transformers')} "
            "can load: upgrade transformers, or pass trust_remote_code if the model ships its own code"
        )
    return f"could not load {name}: {first_line(error)}"


def _cause_chain(error: BaseException) -> list[BaseException]:
    """`error` and everything it was raised from (explicitly or while handling), without cycles."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain



def _installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
