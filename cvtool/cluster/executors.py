"""submitit's executors as cvtool uses them: SLURM job arrays sized by the recipe's `executor:`
section, and local subprocesses pinned to the machine's GPUs.

The sbatch script of a dry run is rendered by submitit's own SlurmExecutor
(`_make_submission_file_text`, what `submit` writes before calling sbatch); tested with
submitit 1.5 (SUBMITIT_TESTED)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvtool.errors import CvtoolError
from cvtool.recipe.executor import ExecutorConfig

SUBMITIT_TESTED = ((1, 5), (2, 0))  # [from, below)
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # local jobs have no time limit; submitit's default is 2 minutes
# jobs whose members are not to be submitted again (sacct's names; submitit's local ones)
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
                           "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED"})


def need_submitit() -> Any:
    """The submitit module, or one line that says how to install it."""
    try:
        import submitit
    except ImportError:
        raise CvtoolError("--executor / --jobs: needs submitit (pip install 'cvtool[slurm]')") from None
    return submitit


def slurm_parameters(config: ExecutorConfig, job_name: str, parallel: int | None) -> dict[str, Any]:
    """SlurmExecutor.update_parameters' keywords (sbatch's names) for the `executor:` section."""
    params: dict[str, Any] = {"job_name": job_name, "time": config.time_min, "cpus_per_task": config.cpus_per_job,
                              "ntasks_per_node": 1, "signal_delay_s": config.signal_delay_s}
    optional = {"partition": config.partition, "account": config.account, "qos": config.qos,
                "constraint": config.constraint, "gpus_per_node": config.gpus_per_job or None,
                "mem": _mem(config.mem_gb), "array_parallelism": parallel or config.max_parallel,
                "setup": list(config.setup) or None, "additional_parameters": dict(config.sbatch) or None}
    params.update({key: value for key, value in optional.items() if value is not None})
    return params


def _mem(mem_gb: float | None) -> str | None:
    if mem_gb is None:
        return None
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


def slurm_executor(logs: Path, config: ExecutorConfig, job_name: str, parallel: int | None) -> Any:
    """submitit's SlurmExecutor writing its jobs' pickles and logs into `logs`."""
    submitit = need_submitit()
    try:
        executor = submitit.SlurmExecutor(logs, max_num_timeout=config.max_timeouts)
    except RuntimeError as exc:  # no srun on this machine
        raise CvtoolError(f"--executor slurm: {exc} (--dry-run prints the sbatch script without SLURM)") from None
    _update(executor, slurm_parameters(config, job_name, parallel))
    return executor


def sbatch_script(logs: Path, config: ExecutorConfig, job_name: str, jobs: int, parallel: int | None) -> str:
    """The sbatch script submitit submits for `jobs` members (a job array when more than one)."""
    submitit = need_submitit()

    class ScriptOnly(submitit.SlurmExecutor):  # renders the script here; never calls sbatch
        @classmethod
        def affinity(cls) -> int:
            return 2

    check_version(submitit.__version__)
    executor = ScriptOnly(logs, max_num_timeout=config.max_timeouts)
    _update(executor, slurm_parameters(config, job_name, parallel))
    if jobs > 1:
        executor.parameters["map_count"] = jobs  # as SlurmExecutor's array submission sets it
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


def check_version(version: str) -> None:
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if not SUBMITIT_TESTED[0] <= parts < SUBMITIT_TESTED[1]:
        raise CvtoolError(f"--dry-run: submitit {version} is untested (cvtool renders with submitit "
                          f"{'.'.join(map(str, SUBMITIT_TESTED[0]))} to below {'.'.join(map(str, SUBMITIT_TESTED[1]))})")


def _update(executor: Any, params: dict[str, Any]) -> None:
    try:
        executor.update_parameters(**params)
    except ValueError as exc:  # submitit checks the values by rendering a script
        raise CvtoolError(f"executor: {str(exc).splitlines()[0]}") from None


def local_executor(logs: Path, max_timeouts: int) -> Any:
    """submitit's LocalExecutor: each job a controller process that runs (and requeues) the member."""
    submitit = need_submitit()
    executor = submitit.LocalExecutor(logs, max_num_timeout=max_timeouts)
    executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN)
    return executor


def machine_gpus() -> list[int]:
    """This machine's GPU indices as CUDA_VISIBLE_DEVICES names them (a job's own list replaces it)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    if shown is None:
        return list(range(count))
    named = [part.strip() for part in shown.split(",") if part.strip()]
    if not all(part.isdigit() for part in named):  # GPU UUIDs: every job sees them all
        return []
    return [int(part) for part in named[:count]]


def pick_gpus(gpus: Sequence[int], busy: Sequence[int], count: int) -> list[int]:
    """`count` GPUs for the next job: idle ones first, then the least shared."""
    if not gpus or count == 0:
        return []
    order = sorted(gpus, key=lambda gpu: (list(busy).count(gpu), list(gpus).index(gpu)))
    return order[:count]


def job_threads(jobs_at_once: int) -> int | None:
    """torch threads of each local job: the cores shared out (an OMP_NUM_THREADS set by the user wins)."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, (os.cpu_count() or 1) // max(1, jobs_at_once))
