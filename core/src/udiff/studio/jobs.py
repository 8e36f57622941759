"""The studio's work: each training run (and each comparison) is the ordinary ``udiff train``
(``udiff compare``) in a child process of its own session, so a crash never takes the studio
down. One child per device at a time; the rest wait in a visible queue. Cancel is SIGTERM to
the child's process group (``udiff train`` finishes its step, checkpoints, exits 143); resume
starts the same command with ``--resume``. A job's record (command, pid, exit code) is written
under ``ROOT/.studio/jobs`` so a restarted studio finds running and finished work again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..run.files import atomic_write
from ..serve.schema import ApiError
from .paths import Root

POLL = 0.5  # seconds between looks at the children


@dataclass
class Job:
    name: str  # the run's (or comparison's) folder name
    kind: str  # "train" or "compare"
    argv: list[str]  # after `udiff`
    device: str
    status: str = "queued"  # queued, running, stopping, exited
    pid: int | None = None
    returncode: int | None = None
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    cancelled: bool = False  # by the page: its exit is no failure

    def view(self) -> dict:
        return asdict(self)


class Jobs:
    """The queue and its children. ``start()`` runs the loop on a thread of its own."""

    def __init__(self, root: Root) -> None:
        self.root, self.lock = root, threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopped = threading.Event()
        self.found()

    # -- records ---------------------------------------------------------------------------
    def record(self, job: Job) -> Path:
        return self.root.state / "jobs" / f"{job.kind}-{job.name}.json"

    def output(self, kind: str, name: str) -> Path:
        """What the child printed (its plan, estimate, progress and any error line)."""
        return self.root.state / "output" / f"{kind}-{name}.txt"

    def save(self, job: Job) -> None:
        path = self.record(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: p.write_text(json.dumps(job.view())))

    def found(self) -> None:
        """Jobs a previous studio left: a child still alive keeps running (it is watched by its
        pid); one that was queued is queued again; the rest are history."""
        for path in sorted((self.root.state / "jobs").glob("*.json")):
            try:
                job = Job(**json.loads(path.read_text()))
            except (ValueError, TypeError):
                continue  # a torn record: the run folder still tells its state
            if job.status in ("running", "stopping") and not alive(job.pid):
                job.status, job.ended = "exited", job.ended or time.time()
            self.jobs[key(job.kind, job.name)] = job

    # -- the queue -------------------------------------------------------------------------
    def submit(self, kind: str, name: str, argv: list[str], device: str) -> Job:
        with self.lock:
            old = self.jobs.get(key(kind, name))
            if old is not None and old.status in ("queued", "running", "stopping"):
                raise ApiError(409, "busy", f"name: {name!r} is already {old.status}", "name")
            job = Job(name, kind, argv, device)  # a resumed run: a new job, not cancelled
            self.jobs[key(kind, name)] = job
            self.save(job)
        self.pump()
        return job

    def all(self) -> list[Job]:
        """Every job, as the loop's thread leaves them (a copy: it adds and reaps)."""
        with self.lock:
            return list(self.jobs.values())

    def get(self, kind: str, name: str) -> Job | None:
        return self.jobs.get(key(kind, name))

    def queue(self) -> list[Job]:
        return sorted((j for j in list(self.jobs.values()) if j.status == "queued"),
                      key=lambda j: j.submitted)

    def position(self, job: Job) -> int | None:
        waiting = [j for j in self.queue() if j.device == job.device]
        return waiting.index(job) + 1 if job in waiting else None

    def busy(self, device: str) -> bool:
        return any(j.device == device and j.status in ("running", "stopping")
                   for j in self.jobs.values())

    def pump(self) -> None:
        """Reap the children that ended; start the first queued job of each free device."""
        with self.lock:
            for k, proc in list(self.procs.items()):
                if proc.poll() is not None:
                    job = self.jobs[k]
                    job.status, job.returncode, job.ended = "exited", proc.returncode, time.time()
                    del self.procs[k]
                    self.save(job)
            for job in self.jobs.values():  # a found job's child (a previous studio's)
                if job.status in ("running", "stopping") and key(job.kind, job.name) not in \
                        self.procs and not alive(job.pid):
                    job.status, job.ended = "exited", time.time()
                    self.save(job)
            for job in self.queue():
                if not self.busy(job.device):
                    self.launch(job)

    def launch(self, job: Job) -> None:
        out = self.output(job.kind, job.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "ab") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "udiff", *job.argv],
                                    stdout=sink, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=self.root.root)
        print(f"udiff studio: started {job.kind} {job.name} (pid {proc.pid})", file=sys.stderr,
              flush=True)
        self.procs[key(job.kind, job.name)] = proc
        job.status, job.pid, job.started = "running", proc.pid, time.time()
        job.returncode = job.ended = None
        self.save(job)

    def cancel(self, kind: str, name: str) -> Job:
        """A queued job leaves the queue; a running one gets SIGTERM (a checkpoint)."""
        with self.lock:
            job = self.jobs.get(key(kind, name))
            if job is None or job.status not in ("queued", "running"):
                state = "not found" if job is None else job.status
                raise ApiError(409, "not_running", f"name: {name!r} is {state}", "name")
            job.cancelled = True
            if job.status == "queued":
                job.status, job.ended, job.returncode = "exited", time.time(), None
            else:
                print(f"udiff studio: cancel {job.kind} {name} (SIGTERM to process group "
                      f"{job.pid})", file=sys.stderr, flush=True)
                try:
                    os.killpg(job.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                job.status = "stopping"
            self.save(job)
            return job

    def run(self) -> None:
        while not self.stopped.wait(POLL):
            self.pump()

    def start(self) -> None:
        threading.Thread(target=self.run, name="udiff-studio-jobs", daemon=True).start()

    def stop(self) -> None:
        """The studio is going: its children go on (a restarted studio finds them)."""
        self.stopped.set()


def key(kind: str, name: str) -> str:
    return f"{kind}/{name}"


def alive(pid: int | None) -> bool:
    """A udiff process with this pid runs (not a zombie, not a recycled pid of another)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return b"udiff" in cmdline and state != "Z"
