"""`executor:`: how `cvtool train --executor slurm` asks SLURM for the jobs that train a fold set's
folds, a sweep's points or a search's workers (one job each, through submitit). Nothing a run
learns depends on it: a fold set continued with other job sizes is the same fold set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from cvtool.recipe.fields import NonNegInt, PosFloat, PosInt, Section


class ExecutorConfig(Section):
    """SLURM job parameters (submitit's SlurmExecutor) and the size of a search's worker pool."""

    partition: str | None = None  # default: the cluster's default partition
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_job: NonNegInt = 1
    cpus_per_job: PosInt = 8  # also the job's torch threads (SLURM does not set OMP_NUM_THREADS)
    mem_gb: PosFloat | None = None  # default: the partition's
    time_min: PosInt = 240  # the time limit of one job; a job that reaches it is requeued
    max_parallel: PosInt | None = None  # jobs of one array running at once (sbatch --array=...%N)
    search_workers: PosInt = 4  # a search's jobs, each claiming trials until search.trials are claimed
    max_timeouts: NonNegInt = 3  # requeues after the time limit (a preempted job is always requeued)
    # SIGUSR2 this long before the time limit: enough to leave the current batch and requeue
    signal_delay_s: Annotated[int, Field(ge=10)] = 120
    torchrun: bool = False  # a fold or sweep point on gpus_per_job > 1 GPUs trains under torchrun (DDP)
    setup: list[str] = []  # shell lines run before each job (module load ..., source .venv/bin/activate)
    sbatch: dict[str, str | int] = {}  # further #SBATCH flags by name, e.g. {reservation: kaggle}
    logs: Path | None = None  # submitit's job folder (pickles, logs); default DIR/cluster/logs
