"""The function a job runs: train one member of a set, then write the set's tables if it was the
last. submitit pickles it into the job; it is checkpointable, so a job preempted or at its time
limit is requeued with the same member, which continues from its last.pt."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from cvtool.cluster.ledger import Ledger
from cvtool.cluster.members import KINDS, Member, collect_set
from cvtool.fileio import write_text
from cvtool.recipe.load import recipe_to_yaml
from cvtool.runs.layout import RunDir
from cvtool.runs.lock import SHARED_ENV, lock_path


class MemberJob(submitit.helpers.Checkpointable):
    """Train `member` of the set in `set_dir` (a job of `kind`); `threads`: torch's CPU threads;
    `torchrun`: processes of one member under torchrun (0: the job's own process trains it)."""

    def __init__(self, kind: str, set_dir: Path, member: Member, threads: int | None = None,
                 torchrun: int = 0) -> None:
        self.kind, self.set_dir, self.member = kind, Path(set_dir), member
        self.threads, self.torchrun = threads, torchrun

    @property
    def name(self) -> str:
        return self.member.name

    def __call__(self) -> dict[str, Any]:
        # the set's lock is shared by its driver and jobs: a plain `cvtool train` into it is refused
        os.environ[SHARED_ENV] = str(lock_path(self.set_dir))
        ledger = Ledger(self.set_dir)
        ledger.member_started(self.name, submitit.JobEnvironment().job_id)
        try:
            result = self._train()
        except SystemExit:  # submitit's requeue after the preemption / time-limit signal
            ledger.update_member(self.name, state="requeued", ended=round(time.time(), 3))
            raise
        except BaseException as exc:
            ledger.update_member(self.name, state="failed", ended=round(time.time(), 3),
                                 error=f"{type(exc).__name__}: {exc}")
            raise
        ledger.update_member(self.name, state="done", ended=round(time.time(), 3))
        summary = collect_set(self.set_dir)  # a no-op until the last member has ended
        return {"member": self.name, "result": result, "set_complete": bool(summary.get("complete"))}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeued: the same member again; it continues from its last.pt (the epoch in progress
        when the signal came is trained again, so the run is the same as an uninterrupted one)."""
        return submitit.helpers.DelayedSubmission(self)

    def _train(self) -> dict[str, Any]:
        if self.torchrun > 1:
            return self._train_under_torchrun()
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        return KINDS[self.kind].train(self.member, self.set_dir, quiet=True)

    def _train_under_torchrun(self) -> dict[str, Any]:
        """The member as one `cvtool train` under torchrun on this job's GPUs (DDP)."""
        run = RunDir(self.set_dir / self.name)
        if run.summary.is_file():
            return run.read_summary()
        recipe_file = Ledger(self.set_dir).member_recipe(self.name)
        write_text(recipe_file, recipe_to_yaml(self.member.recipe))
        process = subprocess.Popen(torchrun_argv(run.path, recipe_file, self.torchrun))
        try:
            code = process.wait()
        finally:  # requeued or cancelled: torchrun passes SIGTERM on; cvtool stops after its batch
            if process.poll() is None:
                process.terminate()
                process.wait()
        if code != 0:
            raise RuntimeError(f"cvtool train under torchrun exited with {code}")
        return run.read_summary()


def torchrun_argv(run_dir: Path, recipe_file: Path, processes: int) -> list[str]:
    """`torchrun --standalone --nproc-per-node N -m cvtool train ...`: a new run, or the resume
    of one that has a last.pt."""
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "cvtool", "train"]
    if RunDir(run_dir).checkpoint("last").is_file():
        return [*head, "--resume", str(run_dir), "--quiet"]
    return [*head, str(recipe_file), "--out", str(run_dir), "--quiet"]
