"""``udiff train --num-processes N``: the same ``accelerate launch`` a user would type.

On CPU, accelerate's ``--cpu --num_processes N`` starts a single process (its simple launcher);
``--multi_gpu`` is the torchrun launcher, and inside it ``Accelerator(cpu=True)`` with
``LOCAL_RANK`` set is MULTI_CPU on gloo — N real processes (tested: world size N)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from ..errors import UdiffError

OWN_FLAGS = {"--num-processes": 1}  # flag -> values it takes
LAUNCHER_PID = "UDIFF_LAUNCHER_PID"  # the workers watch this process (see checkpointing)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_argv(argv: list[str]) -> list[str]:
    """``argv`` without the launcher's own flags (each process runs plain ``udiff train``)."""
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        name = a.split("=", 1)[0]
        if name in OWN_FLAGS:
            skip = OWN_FLAGS[name] if "=" not in a else 0
            continue
        out.append(a)
    return out


def command(argv: list[str], processes: int, mixed_precision: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1",
            "--main_process_port", str(free_port()), "--mixed_precision", mixed_precision,
            "--dynamo_backend", "no", "-m", "udiff", *child_argv(argv)]


def launch(argv: list[str], processes: int, mixed_precision: str) -> int:
    """Run ``accelerate launch`` and wait for it. SIGINT/SIGTERM are forwarded to it (its torch
    elastic agent passes them to every worker, which checkpoint and exit); the exit code is the
    workers' 130/143. Killed outright, this process leaves no orphan: each worker watches its
    pid and stops (checkpointing) once it is gone."""
    if processes < 1:
        raise UdiffError(f"--num-processes {processes}: must be at least 1")
    env = {**os.environ, LAUNCHER_PID: str(os.getpid())}
    # Its own session: a terminal's Ctrl-C reaches this process only, and is forwarded once
    # (twice would be "a second signal: stop now" in the workers).
    child = subprocess.Popen(command(argv, processes, mixed_precision), env=env,
                             start_new_session=True)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        print(f"udiff: {signal.Signals(received[0]).name} forwarded to the {processes} "
              "processes; see their lines above", file=sys.stderr)
        return 128 + received[0]
    if code:
        raise UdiffError(f"training in {processes} processes failed (exit {code}; each process's "
                         "error is above)")
    return 0
