"""``udiff serve`` as a process and a command: startup errors in one line before listening, the
missing extra, the SIGTERM drain of a real server process, and ``udiff bench serve``."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time

import pytest
from serving import call, poll

from conftest import run_udiff

pytest.importorskip("fastapi")


def test_cli_errors_are_one_line_before_listening(cli, tiny_run, tmp_path):
    cli.fails("serve", tmp_path / "missing", match="does not exist")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    cli.fails("serve", incomplete, match="incomplete")
    other = tmp_path / "other" / tiny_run.name
    shutil.copytree(tiny_run, other)
    cli.fails("serve", tiny_run, other, match="both named")
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_run, tampered)
    (tampered / "denoiser" / "model.safetensors").write_bytes(b"\x00" * 64)
    cli.fails("serve", tampered, "--port", "0", match="cannot load weights")
    cli.fails("serve", tiny_run, "--max-queue", "0", match="--max-queue")
    cli.fails("serve", tiny_run, "--audit-max-bytes", "10", match="--audit-max-bytes 10")
    cli.fails("serve", tiny_run, "--max-steps", "10", "--port", "0",
              match="--max-steps 10 is below the default of run 'tiny': 50 steps")
    blocker = __import__("socket").socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        cli.fails("serve", tiny_run, "--port", blocker.getsockname()[1], match="cannot listen")
    finally:
        blocker.close()


def test_without_the_extra_one_line_names_it(tiny_run, tmp_path):
    (tmp_path / "fastapi.py").write_text("raise ImportError('hidden for the test')\n")
    import os

    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = run_udiff("serve", tiny_run, env=env)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "udiff: error: udiff serve needs the extra: pip install 'udiff-core[serve]'"]


def test_sigterm_drains_accepted_work_and_exits_0(tiny_run, tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys

    from serving import wait_ready

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "udiff", "serve", str(tiny_run), "--port",
                             str(port), "--device", "cpu", "--host", "0.0.0.0"],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(port)
        lines, draining = [], threading.Event()

        def read_stderr():
            for line in proc.stderr:
                lines.append(line)
                if "draining" in line:
                    draining.set()

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        ids = [call(port, "POST", "/v1/jobs", {"labels": [k], "steps": 80, "seed": k})[2]["id"]
               for k in range(3)]
        sync = {}
        waiter = threading.Thread(target=lambda: sync.update(r=call(
            port, "POST", "/v1/generate", {"labels": [9], "steps": 80})))
        waiter.start()
        deadline = time.monotonic() + 60  # until the server has accepted all four
        while sum(call(port, "GET", "/readyz")[2]["jobs"].values()) < 4:
            assert time.monotonic() < deadline, "the four jobs were not accepted"
        proc.send_signal(signal.SIGTERM)
        assert draining.wait(60), "".join(lines)
        status, _, data = call(port, "POST", "/v1/jobs", {"labels": [0]})
        assert status == 503 and data["error"]["code"] == "shutting_down"
        assert call(port, "GET", "/readyz")[0] == 503
        jobs = [poll(port, i) for i in ids]
        waiter.join(60)
        assert [j["status"] for j in jobs] == ["succeeded"] * 3
        assert sync["r"][0] == 200
        assert proc.wait(60) == 0
        reader.join(10)
        err = "".join(lines)
        assert re.search(r"draining: [1-4] job\(s\) to finish", err), err  # some may be done
        assert "warning: listening on 0.0.0.0 without --keys-file or --token-file" in err
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)


@pytest.mark.acceptance  # ~55 s, three server processes: after the suite (.ci/run)
def test_bench_serve_measures_a_real_server(cli, tiny_run, tmp_path):
    out = tmp_path / "bench"
    code, stdout, err = cli("bench", "serve", tiny_run, "--quick", "--concurrency", "1,4",
                            "--out", out)
    assert code == 0, err
    result = json.loads((out / "serve.json").read_text())
    at = {mode: {p["concurrency"]: p for p in ps} for mode, ps in result["points"].items()}
    assert at["batching"][4]["mean_batch_images"] > 1  # 4 clients share batches
    assert at["no batching"][4]["mean_batch_images"] == 1
    assert result["ratios"]["lost"] == 0 and result["library_ms"] > 0
    assert all(p["requests"] > 0 and p["status_503"] == 0 for ps in result["points"].values()
               for p in ps)
    assert "| batching | 4 |" in (out / "serve.md").read_text()
    keys = result["keys"]  # the same work through a keyed server: every request audited
    assert keys["keys"] == 11 and keys["ratio"] == result["ratios"]["keys_latency_ratio_c1"]
    assert keys["audit_lines"] > 0 and keys["keyed_ms"] > 0 and 0 < keys["key_path_ms"] < 50
    assert (out / "serve.png").read_bytes().startswith(b"\x89PNG")
    assert "udiff bench serve: no batching, concurrency 4" in err  # progress, a line per point
    cli.fails("bench", "serve", "--out", tmp_path / "x", match="required: RUN_DIR")
    cli.fails("bench", "serve", tiny_run, "--concurrency", "0", "--out", tmp_path / "y",
              match="--concurrency")
