"""`cvtool train --executor slurm|local --jobs N`: a fold set's folds, a sweep's points or a
search's workers, one job each. The set's folder is prepared here as the sequential path
prepares it; members that finished (or whose job still runs) are not submitted again, so the
same command continues a set. SLURM jobs are submitted as one array and the driver returns (or
follows them, `wait`); local jobs run N at a time while the driver follows them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvtool.cluster.executors import (
    ACTIVE_STATES,
    job_threads,
    local_executor,
    machine_gpus,
    pick_gpus,
    sbatch_script,
    slurm_executor,
)
from cvtool.cluster.ledger import Ledger, alive, log_tail
from cvtool.cluster.members import KINDS, Member, Start, collect_set, kind_of
from cvtool.errors import CvtoolError
from cvtool.recipe.executor import ExecutorConfig
from cvtool.recipe.schema import Recipe
from cvtool.runs.layout import RunDir
from cvtool.runs.lock import join

POLL_S = {"local": 1.0, "slurm": 30.0}


@dataclass(frozen=True)
class Request:
    """What `cvtool train` asked for besides the recipe and the folder."""

    executor: str = "local"  # local | slurm
    fold: str | None = None
    jobs: int | None = None  # members at once (a search: its workers)
    wait: bool = False  # slurm: follow the jobs until they end (local jobs are always followed)
    dry_run: bool = False  # slurm: render the sbatch script only
    resume: bool = False
    overwrite: bool = False
    recipe_file: Path | None = None


@dataclass(frozen=True)
class Outcome:
    """How a followed job ended: done, failed (an error in the job) or stopped (killed, cancelled)."""

    member: str
    job: str
    state: str
    tail: list[str] = field(default_factory=list)


@dataclass
class Submission:
    set_dir: Path
    kind: str
    executor: str
    submitted: list[tuple[str, str]] = field(default_factory=list)  # (member, job id)
    running: list[str] = field(default_factory=list)  # members whose earlier job still runs
    outcomes: list[Outcome] | None = None  # followed jobs
    summary: dict[str, Any] | None = None  # the set's tables (complete or not), once nothing runs
    script: str | None = None  # a dry run's sbatch script


def submit_set(recipe: Recipe, set_dir: Path, request: Request,
               on_change: Callable[[dict[str, str]], None] | None = None) -> Submission:
    """Prepare the set, submit its unfinished members, follow them when asked; `on_change(states)`
    is called at every poll with the followed jobs' scheduler states."""
    set_dir = Path(set_dir).absolute()  # a job may start in another folder
    kind = kind_of(recipe, request.fold, set_dir, request.resume)
    members_of, config = KINDS[kind], recipe.executor or ExecutorConfig()
    ledger = Ledger(set_dir)
    logs = Path(config.logs).absolute() if config.logs else ledger.default_logs
    workers = request.jobs or config.search_workers
    result = Submission(set_dir, kind, request.executor)
    if request.dry_run:
        names = [n for n in members_of.names(recipe, request.fold, workers) if not members_of.done(set_dir, n)]
        result.script = sbatch_script(logs, config, job_name(recipe), len(names), request.jobs) if names else ""
        return result
    if request.executor not in POLL_S:
        raise CvtoolError(f"--executor: expected local or slurm, got {request.executor!r}")
    # SLURM's executor first: without srun here nothing is prepared
    slurm = slurm_executor(logs, config, job_name(recipe), request.jobs) if request.executor == "slurm" else None
    continuing = request.resume or continues(set_dir, recipe, request.overwrite)
    result.running = sorted(active_members(ledger, logs)) if continuing else []
    how = Start(request.fold, continuing, request.overwrite, request.recipe_file, workers,
                idle=not result.running)
    started: list[Member] = []

    def prepare(alone: bool) -> None:  # the set's lock, shared with its jobs that still run
        if not alone and request.overwrite:
            raise CvtoolError(f"{set_dir}: --overwrite refused: jobs of this set are running in it")
        started.extend(members_of.start(recipe, set_dir, how))

    join(set_dir, prepare, purpose="cluster")
    members = [m for m in started if m.name not in result.running and not members_of.done(set_dir, m.name)]
    if members and slurm is not None:
        jobs = submit_array(slurm, set_dir, kind, members, config, logs)
        result.submitted = [(member, str(job.job_id)) for member, job in jobs.items()]
        if request.wait:
            result.outcomes = follow(jobs, [], None, 0, logs, on_change, POLL_S["slurm"])
    elif members:
        result.outcomes = run_local(set_dir, kind, members, config, logs, request.jobs or 1, on_change,
                                    result.submitted)
    if result.outcomes is not None or not members:
        result.summary = collect_set(set_dir) if not result.running else None
    return result


def job_name(recipe: Recipe) -> str:
    return f"cvtool-{recipe.name}"


def continues(set_dir: Path, recipe: Recipe, overwrite: bool) -> bool:
    """The same command again continues the set in its folder; another recipe there is refused."""
    from cvtool.runs.recipes import load_recipe

    run = RunDir(set_dir)
    if overwrite or not run.recipe.is_file():
        return False
    if _comparable(load_recipe(run.recipe, stored=True)) != _comparable(recipe):
        raise CvtoolError(f"{run.recipe}: {set_dir} holds another set (its recipe differs); pass --overwrite "
                          "to replace it or choose another --out")
    return True


def _comparable(recipe: Recipe) -> dict[str, Any]:
    data = recipe.model_dump(mode="json", exclude={"executor"})
    data["data"]["fold"] = None  # a fold set's recipe.yaml has none; each fold run sets its own
    return data


def active_members(ledger: Ledger, logs: Path) -> set[str]:
    """Members whose latest job is queued or running (not to be submitted twice)."""
    latest = ledger.latest_jobs()
    states = slurm_states(logs, latest) if ledger.read_jobs().get("executor") == "slurm" else {}
    active = set()
    for member, job in latest.items():
        state = states.get(member)
        record = ledger.read_member(member)
        if state is not None:
            running = state in ACTIVE_STATES
        else:
            running = record.get("job") == job and record.get("state") == "running" and alive(record) is not False
        if running:
            active.add(member)
    return active


def slurm_states(logs: Path, jobs: dict[str, str]) -> dict[str, str]:
    """sacct's state (RUNNING, PENDING, COMPLETED...) of each member's job, where sacct can say."""
    try:
        import submitit

        # all registered first: submitit's watcher then asks sacct once for every job
        watched = {member: submitit.SlurmJob(folder=logs, job_id=job) for member, job in jobs.items()}
        states = {member: str(job.state).split()[0].upper() for member, job in watched.items()}
    except Exception:  # noqa: BLE001 (no sacct here, or no submitit: the run folders still tell)
        return {}
    return {member: state for member, state in states.items() if state != "UNKNOWN"}


def member_jobs(kind: str, set_dir: Path, members: list[Member], config: ExecutorConfig,
                threads: int | None) -> list[Any]:
    from cvtool.cluster.job import MemberJob

    torchrun = config.gpus_per_job if config.torchrun and config.gpus_per_job > 1 and kind != "search" else 0
    return [MemberJob(kind, set_dir, member, threads=threads, torchrun=torchrun) for member in members]


def submit_array(executor: Any, set_dir: Path, kind: str, members: list[Member], config: ExecutorConfig,
                 logs: Path) -> dict[str, Any]:
    """One SLURM job array (a single job for one member); returns each member's submitit job."""
    calls = member_jobs(kind, set_dir, members, config, threads=config.cpus_per_job)
    jobs = {call.name: job for call, job in zip(calls, executor.submit_array(calls), strict=True)}
    Ledger(set_dir).add_jobs(kind, "slurm", logs, [(member, str(job.job_id)) for member, job in jobs.items()])
    return jobs


def run_local(set_dir: Path, kind: str, members: list[Member], config: ExecutorConfig, logs: Path, parallel: int,
              on_change: Callable[[dict[str, str]], None] | None, submitted: list[tuple[str, str]]) -> list[Outcome]:
    """`parallel` local jobs at a time, each pinned to its own GPU(s) when the machine has several."""
    executor = local_executor(logs, config.max_timeouts)
    gpus, pinned = machine_gpus(), {}
    calls = member_jobs(kind, set_dir, members, config, threads=job_threads(parallel))

    def launch(call: Any) -> Any:
        busy = [gpu for used in pinned.values() for gpu in used]
        chosen = pick_gpus(gpus, busy, max(config.gpus_per_job, 1))
        executor.update_parameters(visible_gpus=tuple(chosen), gpus_per_node=len(chosen))
        job = executor.submit(call)
        pinned[call.name] = chosen
        submitted.append((call.name, str(job.job_id)))
        Ledger(set_dir).add_jobs(kind, "local", logs, [(call.name, str(job.job_id))])
        return job

    def release(name: str) -> None:
        pinned.pop(name, None)

    return follow({}, calls, launch, parallel, logs, on_change, POLL_S["local"], release, cancel=True)


def follow(running: dict[str, Any], queue: list[Any], launch: Callable[[Any], Any] | None, parallel: int,
           logs: Path, on_change: Callable[[dict[str, str]], None] | None, poll: float,
           release: Callable[[str], None] | None = None, cancel: bool = False) -> list[Outcome]:
    """Start queued jobs while fewer than `parallel` run, collect how each ends. Leaving early
    (Ctrl-C) cancels the local jobs; SLURM's go on."""
    outcomes: list[Outcome] = []
    try:
        while queue or running:
            while queue and launch is not None and len(running) < parallel:
                call = queue.pop(0)
                running[call.name] = launch(call)
            for name, job in list(running.items()):
                if job.done():
                    outcomes.append(outcome_of(name, job, logs))
                    del running[name]
                    if release is not None:
                        release(name)
            if on_change is not None:
                on_change({name: str(job.state) for name, job in running.items()})
            if queue or running:
                time.sleep(poll)
    except BaseException:
        if cancel:
            for job in running.values():
                job.cancel(check=False)  # SIGINT to the job, which stops after its last checkpoint
        raise
    return outcomes


def outcome_of(member: str, job: Any, logs: Path) -> Outcome:
    """done, failed (the job raised: its traceback's last lines) or stopped (killed or cancelled
    before it wrote a result: its log's last lines)."""
    job_id = str(job.job_id)
    if not job.paths.result_pickle.exists():
        return Outcome(member, job_id, "stopped", log_tail(logs, job_id))
    if job.exception() is not None:
        return Outcome(member, job_id, "failed", log_tail(logs, job_id))
    return Outcome(member, job_id, "done")
