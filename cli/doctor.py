"""`framefusion doctor`: calls framefusion.apps.doctor.gather_report and renders it (a table, or JSON). Nothing else."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from framefusion_cli import options as opt
from framefusion_cli.console import run_guarded, stdout

if TYPE_CHECKING:
    from framefusion.apps.doctor import DoctorReport

GIGABYTE = 1024**3


def register(app: typer.Typer) -> None:
    """Add the `doctor` command to `app`."""
    app.command(name="doctor")(doctor)


def doctor(json_output: opt.JsonOption = False, debug: opt.DebugOption = False) -> None:
    """Show versions, devices, default settings, cache folders and hub access: what a bug report needs."""
    def work() -> None:
        from framefusion.apps.doctor import gather_report

        report = gather_report()
        if json_output:
            print(json.dumps(report.to_dict()))
            return
        stdout.print(report_table(report))

    run_guarded(debug, work)


def report_table(report: DoctorReport) -> Table:
    table = Table(title="framefusion doctor", title_justify="left", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("found", overflow="fold")

    def section(name: str) -> None:
        table.add_section()
        table.add_row(f"[dim]{name}[/dim]", "")

    section("versions")
    table.add_row("framefusion", report.framefusion or "not installed")
    table.add_row("python", f"{report.python} ({report.python_executable})")
    table.add_row("platform", report.platform)
    table.add_row("torch", report.torch or "not installed")
    support = report.transformers
    verdict = "[green]yes[/green]" if support.in_tested_range else "[yellow]no[/yellow]"
    table.add_row("transformers", support.version or "not installed")
    table.add_row("in tested range", f"{verdict}: {support.tested_range} (newest tested {support.newest_tested})")
    kernels = report.hub_kernels
    table.add_row("hub kernels", _hub_kernels_summary(kernels))
    for name, version in report.packages.items():
        table.add_row(name, version or "[dim]not installed[/dim]")

    section("devices")
    devices = report.devices
    cores = f"{devices.physical_cores or '?'} physical, {devices.logical_cores or '?'} logical cores"
    if devices.usable_cores is not None and devices.usable_cores != devices.logical_cores:
        cores += f", {devices.usable_cores} usable here"
    if devices.torch_threads is not None:
        cores += f"; torch uses {devices.torch_threads} threads"
    table.add_row("CPU", f"{devices.cpu} ({cores})")
    table.add_row("RAM", f"{_gb(devices.ram_available_bytes)} free of {_gb(devices.ram_total_bytes)}")
    if devices.problem:
        table.add_row("torch devices", f"[red]{devices.problem}[/red]")
    table.add_row("CUDA", f"torch built for CUDA {devices.cuda_build}" if devices.cuda_build else "CPU-only torch build")
    for gpu in devices.gpus:
        bfloat16 = "bfloat16" if gpu.bfloat16 else "[yellow]no native bfloat16[/yellow]"
        table.add_row(f"GPU {gpu.index}", f"{gpu.name}: {_gb(gpu.free_bytes)} free of {_gb(gpu.total_bytes)}, "
                                          f"compute capability {gpu.compute_capability}, {bfloat16}")
    if devices.cuda_build and not devices.gpus:
        table.add_row("GPU", "none visible")
    table.add_row("MPS", "available" if devices.mps else "no")

    section("defaults of ask")
    defaults = report.defaults
    table.add_row("device", defaults.device or "unknown")
    table.add_row("dtype", defaults.dtype or "unknown")
    table.add_row("video decoder", defaults.video_backend)

    section("caches")
    table.add_row("Hugging Face", report.caches.huggingface)
    table.add_row("framefusion", report.caches.framefusion)

    section("hub")
    hub = report.hub
    colour = {"reachable": "green", "unreachable": "red"}.get(hub["state"], "yellow")
    table.add_row("endpoint", hub["endpoint"])
    table.add_row("state", f"[{colour}]{hub['state']}[/{colour}] ({hub['detail']})")
    return table


def _hub_kernels_summary(kernels) -> str:
    """What transformers would do with hub kernels, what framefusion does, and whether --hub-kernels would work."""
    transformers_default = ("transformers kernelizes every model by default" if kernels.kernelizes_by_default
                            else "transformers does not kernelize by default")
    package = f"kernels {kernels.kernels}" if kernels.kernels else "kernels not installed"
    if kernels.kernels and not kernels.kernels_usable:
        package += " (not a version this transformers accepts)"
    on_request = ("--hub-kernels turns them on" if kernels.unavailable is None
                  else f"--hub-kernels would be refused: {kernels.unavailable}")
    return f"{transformers_default}; {package}; ask keeps them off, {on_request}"


def _gb(count: int) -> str:
    return f"{count / GIGABYTE:.1f} GiB"
