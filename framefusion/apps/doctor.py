"""What this machine offers framefusion: versions, devices, defaults, caches, the hub. Facts only, as data.

    report = gather_report()
    report.transformers.in_tested_range, report.devices.gpus, report.to_dict()

What a bug report needs, and the first step of a speed check on new hardware. Versions come from the installed
distributions' metadata, so a package that is installed but broken still shows its version.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from framefusion.errors import first_line

# Distributions that change what framefusion can do or how fast, besides torch and transformers.
OPTIONAL_PACKAGES = ("torchvision", "huggingface_hub", "accelerate", "flash_attn", "decord", "av")


@dataclass
class TransformersSupport:
    version: str | None
    tested_range: str
    newest_tested: str
    in_tested_range: bool


@dataclass
class HubKernels:
    """Hub kernels (layer forwards replaced by kernels fetched from the hub): what transformers does on its own, and
    what a framefusion run does."""

    kernelizes_by_default: bool  # a plain from_pretrained on this transformers and environment kernelizes the model
    environment: str | None  # USE_HUB_KERNELS as set (None: unset)
    kernels: str | None  # the installed `kernels` version (None: not installed)
    kernels_usable: bool  # whether this transformers accepts that version
    used_by_default: bool  # whether a framefusion run (ask, caption, ...) uses them without being asked: never
    unavailable: str | None  # why asking for them would be refused here (None: they can be had)


@dataclass
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: str
    bfloat16: bool  # native bfloat16 support: without it the GPU default dtype is slow or fails


@dataclass
class Devices:
    cpu: str
    physical_cores: int | None
    logical_cores: int | None
    usable_cores: int | None  # what this process may use (CPU affinity, containers)
    torch_threads: int | None
    ram_total_bytes: int
    ram_available_bytes: int
    cuda_build: str | None  # the CUDA version torch was built for; None for a CPU-only build
    gpus: list[Gpu] = field(default_factory=list)
    mps: bool = False
    problem: str | None = None  # why torch could not report its devices


@dataclass
class Defaults:
    """What a model run uses when the device and dtype are left on auto."""

    device: str | None
    dtype: str | None
    video_backend: str


@dataclass
class Caches:
    huggingface: str
    framefusion: str


@dataclass
class DoctorReport:
    framefusion: str | None
    python: str
    python_executable: str
    platform: str
    torch: str | None
    transformers: TransformersSupport
    hub_kernels: HubKernels
    packages: dict[str, str | None]  # distribution -> version, None when not installed
    devices: Devices
    defaults: Defaults
    caches: Caches
    hub: dict[str, str]  # endpoint, state (reachable, unreachable, offline), detail

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gather_report(*, probe_timeout: float | None = None) -> DoctorReport:
    """Collect every fact. Probes the hub (at most `probe_timeout` seconds) unless HF_HUB_OFFLINE is set."""
    from framefusion.model_zoo.hub import PROBE_TIMEOUT_SECONDS, hub_status

    hub = hub_status(timeout=probe_timeout or PROBE_TIMEOUT_SECONDS, reuse=False)
    return DoctorReport(
        framefusion=installed_version("framefusion"),
        python=platform.python_version(),
        python_executable=sys.executable,
        platform=platform.platform(),
        torch=torch_version(),
        transformers=transformers_support(),
        hub_kernels=hub_kernels_support(),
        packages={name: installed_version(name) for name in OPTIONAL_PACKAGES},
        devices=gather_devices(),
        defaults=default_settings(),
        caches=cache_folders(),
        hub=hub.to_dict(),
    )


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def torch_version() -> str | None:
    """torch's own version string: unlike its distribution's, it names the build ("2.6.0+cu124")."""
    try:
        import torch

        return str(torch.__version__)
    except Exception:  # noqa: BLE001 - installed but broken: the distribution still says which version
        return installed_version("torch")


def transformers_support() -> TransformersSupport:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    from framefusion.runtime.transformers_compat import NEWEST_TESTED_TRANSFORMERS, TESTED_TRANSFORMERS

    version = installed_version("transformers")
    try:
        inside = version is not None and Version(version) in SpecifierSet(TESTED_TRANSFORMERS)
    except InvalidVersion:
        inside = False
    return TransformersSupport(version=version, tested_range=TESTED_TRANSFORMERS,
                               newest_tested=NEWEST_TESTED_TRANSFORMERS, in_tested_range=inside)


def hub_kernels_support() -> HubKernels:
    from framefusion.runtime import transformers_compat as compat

    try:
        version, usable = compat.hub_kernels_package()
        return HubKernels(kernelizes_by_default=compat.kernelizes_by_default(),
                          environment=os.environ.get(compat.HUB_KERNELS_ENVIRONMENT), kernels=version,
                          kernels_usable=usable, used_by_default=False, unavailable=compat.hub_kernels_unavailable())
    except Exception as error:  # noqa: BLE001 - a broken transformers is what the versions above already show
        return HubKernels(kernelizes_by_default=False, environment=os.environ.get(compat.HUB_KERNELS_ENVIRONMENT),
                          kernels=installed_version("kernels"), kernels_usable=False, used_by_default=False,
                          unavailable=first_line(error))


def gather_devices() -> Devices:
    import psutil

    memory = psutil.virtual_memory()
    devices = Devices(
        cpu=cpu_name(), physical_cores=psutil.cpu_count(logical=False), logical_cores=os.cpu_count(),
        usable_cores=_usable_cores(), torch_threads=None,
        ram_total_bytes=int(memory.total), ram_available_bytes=int(memory.available), cuda_build=None,
    )
    try:
        import torch

        devices.torch_threads = torch.get_num_threads()
        devices.cuda_build = torch.version.cuda
        devices.mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        devices.gpus = [_gpu(index) for index in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception as error:  # noqa: BLE001 - a broken torch or driver is exactly what this report must show
        devices.problem = first_line(error)
    return devices


def _gpu(index: int) -> Gpu:
    import torch

    properties = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    with torch.cuda.device(index):
        bfloat16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return Gpu(index=index, name=properties.name, total_bytes=int(total), free_bytes=int(free),
               compute_capability=f"{properties.major}.{properties.minor}", bfloat16=bool(bfloat16))


def cpu_name() -> str:
    """The CPU model ("Intel(R) Xeon(R) ...", "Apple M2"); the architecture when the system does not say."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    if sys.platform == "darwin":
        import subprocess

        try:
            found = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                   timeout=5, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        if found:
            return found
    return platform.processor() or platform.machine() or "unknown"


def _usable_cores() -> int | None:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def default_settings() -> Defaults:
    from framefusion.video import resolve_backend

    try:
        from framefusion.pipeline.video_qa import resolve_device, resolve_dtype

        device = resolve_device("auto")
        dtype = str(resolve_dtype("auto", device)).removeprefix("torch.")
        device_name: str | None = str(device)
    except Exception:  # noqa: BLE001 - reported as unknown; gather_devices says what is wrong with torch
        device_name, dtype = None, None
    return Defaults(device=device_name, dtype=dtype, video_backend=resolve_backend("auto"))


def cache_folders() -> Caches:
    from huggingface_hub import constants

    from framefusion.model_zoo.loading import framefusion_cache_dir

    return Caches(huggingface=str(constants.HF_HUB_CACHE), framefusion=str(framefusion_cache_dir()))
