"""Caption a folder on Ray: a fixed pool of workers, each with the model loaded once, records written by the driver.

The videos still to do (the same resume rule as the local engine, from `CaptionRun`) become a Ray Data dataset of
one block per video; `map_batches` (one video per batch) runs them on a fixed pool of actors, each of which opens the
model once and captions with `caption_one_video`, the local engine's code path (decoder child included). Records
stream back to the driver, which appends each to the output file as it arrives (`CaptionRun.record`: fsync,
torn-line repair, same schema). Each record names its `worker` ("<node id>:<pid>").

Faults: a video that fails is an error record and the run goes on. Ray Data restarts a dead actor and retries its
task without limit, and Ray 2.60 has no non-deprecated way to bound that per `map_batches`; so the bound is ours:
a small ledger actor counts the attempts at each video, and a video whose worker died twice is recorded as an
error on the third. Blocks that fail anyway are tolerated (`max_errored_blocks`), and the driver writes an error
record for every video that never came back.

    summary = caption_on_ray(run, ModelRecipe("qwen2-vl-2b", profile), RayOptions(workers=4, gpus_per_worker=1))
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from framefusion.apps.caption.local import (
    CaptionEvents,
    CaptionRun,
    CaptionSettings,
    CaptionSummary,
    DecodeWorker,
    caption_one_video,
    error_record,
    software_versions,
)
from framefusion.apps.caption.decoder import one_line_error
from framefusion.apps.caption.ray_address import check_ray_address
from framefusion.errors import FrameFusionError, InputError, Suggestion

INSTALL_HINT = "pip install 'framefusion[ray]'"
# A video whose worker process died this many times is recorded as an error instead of being tried again.
MAX_ATTEMPTS = 2
# How long the pool may take to start all its workers before the run fails (a cluster without the resources).
WORKERS_START_SECONDS = 600
# Fault injection for tests, read by each worker: "video=N[,video=N]" kills the worker process (SIGKILL) when it
# starts on `video`, on the first N attempts.
KILL_WORKER_VARIABLE = "FRAMEFUSION_TEST_KILL_WORKER"


class RayNotInstalled(InputError):
    """The Ray engine was asked for, and Ray (with Ray Data) is not installed."""


def import_ray() -> Any:
    """The `ray` module with Ray Data, or RayNotInstalled saying how to install it."""
    try:
        import ray
        import ray.data  # the engine needs Ray Data, not only Ray Core
    except ImportError as error:
        raise RayNotInstalled(f"the Ray engine needs Ray Data, which is not installed: {INSTALL_HINT}") from error
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run. address: None starts a local Ray instance sized to this machine (shut down at
    the end); "auto" or "ray://host:10001" joins a running cluster. workers: None = one per GPU when workers use
    GPUs, else one per node. cpus/gpus_per_worker: None = this machine's CPUs split between the workers (one per
    worker on a cluster), and one GPU per worker when there are GPUs and the device is not the CPU."""

    workers: int | None = None
    address: str | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None


@dataclass(frozen=True)
class ModelRecipe:
    """How each worker opens the model: the arguments of `framefusion.pipeline.video_qa.open_video_qa`."""

    model_spec: str
    profile: Any
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    revision: str | None = None
    trust_remote_code: bool = False
    hub_kernels: bool = False

    def open(self, device: str) -> Any:
        from framefusion.pipeline.video_qa import open_video_qa

        return open_video_qa(self.model_spec, self.profile, device=device, dtype=self.dtype,
                             attn_implementation=self.attn_implementation, revision=self.revision,
                             trust_remote_code=self.trust_remote_code, hub_kernels=self.hub_kernels)


@dataclass(frozen=True)
class WorkerPlan:
    """The pool: `workers` actors of `cpus` CPUs and `gpus` GPUs each; `device`: what each opens the model on."""

    workers: int
    cpus: float
    gpus: float
    device: str

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus))


def plan_workers(options: RayOptions, device: str, resources: dict[str, float], nodes: int, *,
                 local: bool) -> WorkerPlan:
    """Fill in the pool's size from the cluster's `resources` (ray.cluster_resources()) and `nodes` (alive nodes
    with CPUs). On a local instance, a pool that cannot fit is refused up front instead of waiting forever."""
    if options.workers is not None and options.workers < 1:
        raise InputError("must be at least 1", setting="workers", value=options.workers)
    if options.cpus_per_worker is not None and not options.cpus_per_worker > 0:
        raise InputError("must be more than 0", setting="cpus_per_worker", value=options.cpus_per_worker)
    if options.gpus_per_worker is not None and not options.gpus_per_worker >= 0:
        raise InputError("must be 0 or more", setting="gpus_per_worker", value=options.gpus_per_worker)
    total_cpus, total_gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if total_gpus >= 1 and device != "cpu" else 0.0
    workers = options.workers or (max(1, int(total_gpus // gpus)) if gpus else max(1, nodes))
    cpus = options.cpus_per_worker or (max(1, int(total_cpus // workers)) if local else 1)
    # A worker given no GPU must not take one it did not reserve (Ray would not keep others off it).
    worker_device = "cpu" if not gpus and device == "auto" else device
    plan = WorkerPlan(workers=workers, cpus=float(cpus), gpus=float(gpus), device=worker_device)
    if local and (workers * cpus > total_cpus + 1e-9 or workers * gpus > total_gpus + 1e-9):
        fitting = int(min(total_cpus // cpus, total_gpus // gpus if gpus else workers))
        raise InputError(
            f"{workers} workers of {cpus:g} CPUs and {gpus:g} GPUs each need more than this machine has "
            f"({total_cpus:g} CPUs, {total_gpus:g} GPUs)", setting="workers", value=workers,
            suggestions=[Suggestion("use fewer workers", setting="workers", value=max(1, fitting)),
                         Suggestion("or fewer CPUs per worker", setting="cpus_per_worker",
                                    value=max(1, int(total_cpus // workers)))],
        )
    return plan


@contextmanager
def ray_session(ray: Any, address: str | None) -> Iterator[bool]:
    """Connected to Ray for the duration: the session already open in this process, the cluster at `address`, or
    a local instance started here and shut down on the way out. Yields whether the instance was started here.

    A local instance never outlives this process, however it ends: Ray ties its daemons to it, and a reaper
    process ends the two agents that would otherwise linger for a minute after a kill -9."""
    from framefusion.apps.caption.process_reaper import ProcessReaper
    from framefusion.apps.caption.ray_stderr import without_ray_log_level_note

    if ray.is_initialized():
        yield False
        return
    if address is not None:
        check_ray_address(address)
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    reaper = ProcessReaper.start() if address is None else None
    try:
        with without_ray_log_level_note():
            if address is None:
                ray.init(include_dashboard=False, **quiet)
            else:
                ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as error:
        if reaper is not None:
            reaper.stop()
            raise FrameFusionError(f"could not start a local Ray instance: {one_line_error(error)}") from error
        raise InputError(f"cannot connect to a Ray cluster there ({one_line_error(error)}); start one with "
                         "`ray start --head`, or check the address", setting="address", value=address) from error
    try:
        yield address is None
    finally:
        ray.shutdown()
        if reaper is not None:
            reaper.stop()


def _unreadable_videos(folder: str, videos: list[str]) -> list[str]:
    return [video for video in videos if not os.access(os.path.join(folder, video), os.R_OK)]


def check_videos_visible(ray: Any, folder: Path, videos: list[str]) -> None:
    """InputError unless every node that can run a worker reads each of `videos` (relative to `folder`, which must
    be absolute) at the same path. Pass the videos this process can read: the others get error records anyway."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_unreadable_videos)
    nodes = [node for node in ray.nodes() if node.get("Alive") and
             (node["Resources"].get("CPU", 0) or node["Resources"].get("GPU", 0))]
    pending = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
               .remote(str(folder), videos) for node in nodes]
    for node, missing in zip(nodes, ray.get(pending)):
        if missing:
            raise InputError(
                f"{len(missing)} of {len(videos)} videos cannot be read on the Ray node {node['NodeManagerAddress']} "
                f"(e.g. {folder / missing[0]}): every node must see the folder at the same path; put it on a shared "
                "file system mounted there, or caption on one machine")


def _readable_here(folder: Path, videos: list[str]) -> list[str]:
    unreadable = set(_unreadable_videos(str(folder), videos))
    return [video for video in videos if video not in unreadable]


class _AttemptLedger:
    """How many times each video was started, across worker restarts (one per run, on the driver's node)."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}

    def begin(self, video: str) -> int:
        self.attempts[video] = self.attempts.get(video, 0) + 1
        return self.attempts[video]


class _CaptionWorker:
    """One actor of the pool: opens the model once, then captions one video per call as the local engine does."""

    def __init__(self, recipe: ModelRecipe, plan: WorkerPlan, settings: CaptionSettings, folder: str,
                 ledger: Any) -> None:
        import ray
        import torch

        # Threads pinned to the worker's CPUs: workers sharing a node do not oversubscribe it.
        torch.set_num_threads(plan.torch_threads)
        # A model that cannot load is sent back whole (Ray would keep only its text), and the driver stops with it.
        self.load_failure: str | None = None
        try:
            self.qa = recipe.open(plan.device)
        except Exception as error:  # noqa: BLE001 - every worker failing to load fails the run with this error
            self.load_failure = _portable_error(error)
        self.settings, self.folder, self.ledger = settings, Path(folder), ledger
        self.decoder = DecodeWorker()
        self.versions = software_versions()
        self.name = f"{ray.get_runtime_context().get_node_id()[:8]}:{os.getpid()}"
        self.kill_on = _faults_from_environment()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        import ray

        if self.load_failure is not None:
            return {"record": [json.dumps({"video": str(video), "load_failure": self.load_failure})
                               for video in batch["video"]]}
        records = []
        for video in map(str, batch["video"]):
            attempt = ray.get(self.ledger.begin.remote(video))
            if attempt > MAX_ATTEMPTS:
                record = error_record(video, self.settings, (
                    f"the worker process died each of the {MAX_ATTEMPTS} times it captioned this video (killed, out "
                    "of memory, or a crash in the model); see the Ray worker logs"), self.versions, self.name)
            else:
                if attempt <= self.kill_on.get(video, 0):
                    os.kill(os.getpid(), signal.SIGKILL)
                record = caption_one_video(self.qa, self.folder, video, self.settings, self.decoder, self.versions,
                                           worker=self.name)
            records.append(json.dumps(record, ensure_ascii=False))
        return {"record": records}


def _portable_error(error: Exception) -> str:
    """`error` pickled as text (FrameFusionErrors keep their setting and suggestions), or its one-line text."""
    try:
        data = pickle.dumps(error)
        pickle.loads(data)
    except Exception:  # noqa: BLE001 - an exception that does not pickle travels as text
        data = pickle.dumps(FrameFusionError(one_line_error(error)))
    return base64.b64encode(data).decode("ascii")


def _faults_from_environment() -> dict[str, int]:
    spec = os.environ.get(KILL_WORKER_VARIABLE, "")
    return {video: int(times) for video, _, times in (item.rpartition("=") for item in spec.split(",") if item)}


def caption_on_ray(run: CaptionRun, recipe: ModelRecipe, options: RayOptions, *,
                   events: CaptionEvents | None = None) -> CaptionSummary:
    """Caption `run`'s pending videos on Ray; the driver (this process) writes every record to `run`'s file.

    Raises InputError before any model loads when the pool cannot fit or a node cannot read the videos. On
    KeyboardInterrupt the cluster work stops, the records written stay, the summary is marked interrupted and the
    interrupt propagates."""
    ray = import_ray()
    events = events or CaptionEvents()
    if not run.pending:
        return run.summary
    started = time.perf_counter()
    folder = run.folder.resolve()
    try:
        with ray_session(ray, options.address) as local:
            nodes = sum(1 for node in ray.nodes() if node.get("Alive") and node["Resources"].get("CPU", 0))
            plan = plan_workers(options, recipe.device, ray.cluster_resources(), nodes, local=local)
            plan = replace(plan, workers=min(plan.workers, len(run.pending)))  # no idle workers
            check_videos_visible(ray, folder, _readable_here(folder, run.pending))
            events.workers_planned(plan)
            _run_pool(ray, run, recipe, plan, folder, events)
    except KeyboardInterrupt:
        run.summary.interrupted = True
        raise
    finally:
        run.summary.seconds = time.perf_counter() - started
    return run.summary


def _run_pool(ray: Any, run: CaptionRun, recipe: ModelRecipe, plan: WorkerPlan, folder: Path,
              events: CaptionEvents) -> None:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    ledger = ray.remote(num_cpus=0, max_restarts=0)(_AttemptLedger).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
    context = _data_context(ray)
    changed = {
        "max_errored_blocks": len(run.pending),  # every video may fail on its own; the run goes on
        "max_consecutive_actor_init_deaths": 0,  # a model that cannot load fails the run at once
        "wait_for_min_actors_s": WORKERS_START_SECONDS,  # start when the whole pool is up, or fail
        "enable_progress_bars": False,  # the caller draws its own
    }
    saved = {name: getattr(context, name) for name in changed}
    for name, value in changed.items():
        setattr(context, name, value)
    fault = os.environ.get(KILL_WORKER_VARIABLE)
    rows: Any = None
    returned: set[str] = set()
    events.started(len(run.pending))
    try:
        dataset = ray.data.from_items([{"video": video} for video in run.pending],
                                      override_num_blocks=len(run.pending))
        dataset = dataset.map_batches(
            _CaptionWorker, batch_size=1,
            # One video in flight per worker: a worker that dies takes only the video it was on with it.
            compute=ray.data.ActorPoolStrategy(size=plan.workers, max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs={"recipe": recipe, "plan": plan, "settings": run.settings,
                                   "folder": str(folder), "ledger": ledger},
            num_cpus=plan.cpus, num_gpus=plan.gpus or None,
            runtime_env={"env_vars": {KILL_WORKER_VARIABLE: fault}} if fault else None,
        )
        rows = iter(dataset.iter_rows())
        for row in rows:
            record = json.loads(row["record"])
            if "load_failure" in record:
                raise pickle.loads(base64.b64decode(record["load_failure"]))
            returned.add(record["video"])
            run.record(record["video"], record, events)
    except (KeyboardInterrupt, FrameFusionError):
        raise
    except Exception as error:  # noqa: BLE001 - Ray's errors carry tracebacks; say what went wrong in one line
        raise _pipeline_error(error) from error
    finally:
        if rows is not None and hasattr(rows, "close"):
            rows.close()  # stops the pool's work on the cluster
        for name, value in saved.items():
            setattr(context, name, value)
        ray.kill(ledger)
    versions = software_versions()
    for video in run.pending:
        if video not in returned:
            message = "no worker came back with a record for this video (its task failed); see the Ray logs"
            run.record(video, error_record(video, run.settings, message, versions, worker=None), events)


def _data_context(ray: Any) -> Any:
    with warnings.catch_warnings():
        # Ray 2.60's DataContext() assigns its own deprecated fields while it is built and warns about them: nothing
        # we pass. It is made once per process, so later calls do not warn.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray.data.context")
        return ray.data.DataContext.get_current()


def _pipeline_error(error: BaseException) -> FrameFusionError:
    """The first error of ours behind Ray's wrappers, else Ray's first line."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        if isinstance(current, FrameFusionError):
            return current
        seen.append(current)
        current = getattr(current, "cause", None) or current.__cause__
    root = seen[-1]
    first_line = next((line.strip() for line in str(root).splitlines() if line.strip()), type(root).__name__)
    return FrameFusionError(f"the Ray workers failed: {type(root).__name__}: {first_line}")


__all__ = ["INSTALL_HINT", "KILL_WORKER_VARIABLE", "MAX_ATTEMPTS", "ModelRecipe", "RayNotInstalled", "RayOptions",
           "WorkerPlan", "caption_on_ray", "check_videos_visible", "import_ray", "plan_workers", "ray_session"]
