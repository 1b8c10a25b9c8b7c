"""Where and how the pipeline's steps run on a cluster: GPU count and requests, /dev/shm, tolerations, node
selector, retries, images (``ClusterSettings``, read from ``CLIPCITE_*`` variables), and what applying them to a
KFP task means (``gpu_task``, ``cpu_task``). ``pipeline.py`` wires the DAG; this file is what a cluster tunes."""

import dataclasses
import os

from kfp import dsl, kubernetes

from clipcite.train_params import METHODS


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """Where and how the steps run on a cluster; every field has a CLIPCITE_* environment variable."""

    gpu_limit: int = 1  # CLIPCITE_GPU_LIMIT: > 1 runs the GPU steps in that many data-parallel ranks (torchrun)
    gpu_resource: str = "nvidia.com/gpu"  # CLIPCITE_GPU_RESOURCE
    gpu_cpu_request: str = "4"  # CLIPCITE_GPU_CPU_REQUEST
    gpu_memory_request: str = "32G"  # CLIPCITE_GPU_MEMORY_REQUEST
    cpu_cpu_request: str = "1"  # CLIPCITE_CPU_CPU_REQUEST
    cpu_memory_request: str = "4G"  # CLIPCITE_CPU_MEMORY_REQUEST
    shm_size: str = ""  # CLIPCITE_SHM_SIZE: memory-backed /dev/shm for DataLoader workers; "" = 16Gi per GPU (rank)
    tolerations: tuple[str, ...] = ()  # CLIPCITE_TOLERATIONS: "key=value:Effect" or "key:Effect", comma-separated
    node_selector: tuple[str, ...] = ()  # CLIPCITE_NODE_SELECTOR: "label=value", comma-separated
    retries: int = 2  # CLIPCITE_RETRIES: for steps that can fail transiently (storage, preemption)
    # CLIPCITE_METHODS (or pipeline.py --methods): candidate methods, comma-separated; two or more: one finetune and
    # validate each, select registers the winner (docs/cluster.md "Several methods"). Empty: the run's train.method
    # (one finetune, no select); one name: that method, the same DAG.
    methods: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or len(set(self.methods)) != len(self.methods):
            raise ValueError(
                f"methods {list(self.methods)}: each one of {', '.join(METHODS)}, at most once "
                "(CLIPCITE_METHODS / pipeline.py --methods)"
            )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ClusterSettings":
        env = os.environ if env is None else env
        values: dict = {}
        for field in dataclasses.fields(cls):
            raw = env.get(f"CLIPCITE_{field.name.upper()}")
            if raw is None:
                continue
            if field.type in ("int", int):
                values[field.name] = int(raw)
            elif "tuple" in str(field.type):
                values[field.name] = tuple(x.strip() for x in raw.split(",") if x.strip())
            else:
                values[field.name] = raw
        return cls(**values)

    def shm(self) -> str:
        return self.shm_size or f"{16 * self.gpu_limit}Gi"


POD_LABEL = ("clipcite.io/mlflow", "true")  # the Kubeflow PodDefault in manifests/ injects MLflow and S3 settings


def gpu_task(
    task: dsl.PipelineTask, settings: ClusterSettings, *, cache: bool, retry_backoff: str = ""
) -> dsl.PipelineTask:
    """A GPU step: GPUs, requests, /dev/shm, placement; KFP's cache on or off, and ``settings.retries`` retries
    with exponential backoff from ``retry_backoff`` ("" = no retries)."""
    _common(task, settings, cache, retry_backoff)
    task.set_accelerator_type(settings.gpu_resource).set_accelerator_limit(settings.gpu_limit)
    task.set_cpu_request(settings.gpu_cpu_request).set_memory_request(settings.gpu_memory_request)
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=settings.shm()
    )
    if settings.gpu_limit > 1:  # the step's run() relaunches itself in one torchrun rank per GPU
        task.set_env_variable("CLIPCITE_NPROC_PER_NODE", str(settings.gpu_limit))
    for toleration in settings.tolerations:
        key_value, _, effect = toleration.partition(":")
        key, eq, value = key_value.partition("=")
        kubernetes.add_toleration(
            task, key=key, operator="Equal" if eq else "Exists", value=value or None, effect=effect or None
        )
    for selector in settings.node_selector:
        label, _, value = selector.partition("=")
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    return task


def cpu_task(
    task: dsl.PipelineTask, settings: ClusterSettings, *, cache: bool, retry_backoff: str = ""
) -> dsl.PipelineTask:
    """A CPU step: requests; caching and retries as for :func:`gpu_task`."""
    _common(task, settings, cache, retry_backoff)
    return task.set_cpu_request(settings.cpu_cpu_request).set_memory_request(settings.cpu_memory_request)


def _common(task: dsl.PipelineTask, settings: ClusterSettings, cache: bool, retry_backoff: str) -> None:
    kubernetes.add_pod_label(task, *POD_LABEL)
    task.set_caching_options(cache)
    if retry_backoff:
        task.set_retry(settings.retries, backoff_duration=retry_backoff, backoff_factor=2)
