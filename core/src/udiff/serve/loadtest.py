"""``udiff bench serve RUN_DIR``: closed-loop clients against a real ``udiff serve`` (its own
process, uvicorn on 127.0.0.1) at several concurrencies, batching on and off, each point bounded
in time; beside it ``Pipeline.sample`` for the same work. Writes ``serve.json``, ``serve.md``
and ``serve.png``. Targets (issue 17, 2 CPU cores, the demo UNet): images/s with batching ÷
without ≥ 2 at concurrency 16; served latency at concurrency 1 ≤ 1.2 × ``Pipeline.sample``."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import UdiffError
from ..machine import machine
from ..run.files import prepare_out, write_json

TARGETS = {"batching_gain_c16": (">=", 2.0), "latency_ratio_c1": ("<=", 1.2)}
MODES = {"batching": None, "no batching": 1}  # --max-batch-images: the server default, or 1


def start_server(run_dirs: list[Path], *args: str) -> tuple[subprocess.Popen, int]:
    """``udiff serve RUN_DIR... --port 0 ARGS`` in its own process, once it says ready."""
    cmd = [sys.executable, "-m", "udiff", "serve", *map(str, run_dirs), "--port", "0",
           "--device", "cpu", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    port, lines = None, []
    for line in proc.stderr:  # "udiff serve: http://127.0.0.1:PORT/ ..."
        lines.append(line)
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if found:
            port = int(found.group(1))
        if "ready" in line and port:
            proc.lines = lines  # what it says from now on is kept too (a test reads it)
            threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
            return proc, port
    raise UdiffError(f"udiff serve did not start (exit {proc.wait()}): {''.join(lines)[-500:]}")


def closed_loop(port: int, clients: int, seconds: float, body: dict) -> dict:
    """``clients`` threads, each sending its next request when the last one answered, until
    ``seconds`` pass; the requests in flight then are waited for (and counted)."""
    latencies, batches, runs, statuses, lost = [], [], [], [], []
    deadline = time.monotonic() + seconds
    payload = json.dumps(body).encode()

    def connect() -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        conn.connect()
        # http.client sends headers and body in two writes; without NODELAY, Nagle holds the
        # body for the server's delayed ACK (~40 ms). requests/httpx/browsers set it too.
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def client() -> None:
        conn = connect()
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/generate", payload,
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except OSError as e:  # a request with no answer: lost
                lost.append(repr(e))
                conn = connect()
                continue
            statuses.append(resp.status)
            if resp.status == 200:
                latencies.append(time.perf_counter() - start)
                timing = json.loads(data)["timing"]
                batches.append(timing["batch_images"])
                runs.append(timing["run_ms"])
            elif resp.status != 503:
                lost.append(f"HTTP {resp.status}")

    begin = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    images = len(body["labels"]) * body.get("per_label", 1)
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]
    pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    return {"concurrency": clients, "requests": len(latencies), "seconds": round(elapsed, 2),
            "requests_per_s": len(latencies) / elapsed,
            "images_per_s": len(latencies) * images / elapsed,
            "p50_ms": pick(0.5), "p95_ms": pick(0.95), "p99_ms": pick(0.99),
            "mean_batch_images": statistics.fmean(batches) if batches else 0.0,
            "run_p50_ms": statistics.median(runs) if runs else float("nan"),  # in the worker
            "status_503": statuses.count(503), "lost": len(lost)}


def library_ms(pipe, work: dict, repeats: int) -> float:
    """Median wall time of ``Pipeline.sample`` for one request's work (after a warm-up call)."""
    spec = pipe.spec(steps=work["steps"], guidance=work["guidance"], sampler=work["sampler"],
                     seed=0)
    pipe.sample(work["labels"], work["per_label"], spec)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe.sample(work["labels"], work["per_label"], spec)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def latency_ratio(port: int, body: dict, pipe, seconds: float, rounds: int = 3) -> dict:
    """Served p50 at concurrency 1 over ``Pipeline.sample`` in this process, in alternating
    rounds: a 2-core machine's speed drifts by 30 % between minutes, and a ratio of
    interleaved measurements cancels that out. The median of the rounds' ratios."""
    pairs = []
    for _ in range(rounds):
        point = closed_loop(port, 1, seconds / rounds, body)
        pairs.append((point["p50_ms"], library_ms(pipe, body, max(3, point["requests"]))))
    return {"ratio": statistics.median(s / lib for s, lib in pairs),
            "library_ms": statistics.median(lib for _, lib in pairs),
            "served_ms": statistics.median(s for s, _ in pairs)}


def run(run_dir: str | Path, out: str | Path, concurrency=(1, 4, 16, 64), seconds: float = 10.0,
        overwrite: bool = False) -> dict:
    run_dir, out = Path(run_dir), Path(out)
    from ..serve.process import require
    from ..serve.runs import check

    require()
    check([run_dir])
    prepare_out(out, overwrite)
    from ..sampling import load

    pipe = load(run_dir)  # the library side of the latency ratio, in this process
    body = {"labels": [0], "per_label": 1, "seed": 0}
    points, work, latency = {}, None, None
    for mode, max_batch in MODES.items():
        proc, port = start_server([run_dir], "--max-queue", "1024",
                                  *(["--max-batch-images", str(max_batch)] if max_batch else []))
        try:
            if work is None:  # the run's defaults, as the server reports them
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", "/v1/runs")
                info = json.loads(conn.getresponse().read())["runs"][0]["defaults"]
                work = body = {**body, **info}
                latency = latency_ratio(port, body, pipe, seconds)
            points[mode] = []
            for clients in concurrency:
                point = closed_loop(port, clients, seconds, body)
                points[mode].append(point)
                print(f"udiff bench serve: {mode}, concurrency {clients}: "
                      f"{point['images_per_s']:.1f} images/s, p50 {point['p50_ms']:.0f} ms, "
                      f"mean batch {point['mean_batch_images']:.1f}, 503s {point['status_503']},"
                      f" lost {point['lost']}", file=sys.stderr, flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    result = {"run": str(run_dir), "machine": machine(), "work": work, "seconds": seconds,
              "library_ms": latency["library_ms"], "served_c1_ms": latency["served_ms"],
              "points": points, "ratios": ratios(points, latency["ratio"])}
    write_json(out / "serve.json", result)
    (out / "serve.md").write_text(markdown(result))
    chart(result, out / "serve.png")
    return result


def ratios(points: dict, latency: float) -> dict:
    at = {mode: {p["concurrency"]: p for p in ps} for mode, ps in points.items()}
    out = {}
    if 16 in at["batching"]:
        out["batching_gain_c16"] = (at["batching"][16]["images_per_s"]
                                    / at["no batching"][16]["images_per_s"])
    out["latency_ratio_c1"] = latency
    out["lost"] = sum(p["lost"] for ps in points.values() for p in ps)
    return out


def markdown(result: dict) -> str:
    w = result["work"]
    lines = [f"# udiff bench serve — {result['machine']}", "",
             f"Run `{result['run']}`; each request: {len(w['labels'])} label x {w['per_label']}, "
             f"{w['steps']} steps of {w['sampler']}, guidance {w['guidance']}. Closed-loop "
             f"clients, {result['seconds']:.0f} s per point. At concurrency 1, in alternating rounds:"
             f" served p50 {result['served_c1_ms']:.1f} ms, `Pipeline.sample` for the same work "
             f"{result['library_ms']:.1f} ms.", "",
             "| mode | concurrency | requests/s | images/s | p50 ms | p95 ms | p99 ms | in the "
             "worker p50 ms | mean batch | 503s | lost |", "| --- |" + " --- |" * 10]
    for mode, ps in result["points"].items():
        for p in ps:
            lines.append(f"| {mode} | {p['concurrency']} | {p['requests_per_s']:.2f} | "
                         f"{p['images_per_s']:.2f} | {p['p50_ms']:.0f} | {p['p95_ms']:.0f} | "
                         f"{p['p99_ms']:.0f} | {p['run_p50_ms']:.0f} | "
                         f"{p['mean_batch_images']:.1f} | "
                         f"{p['status_503']} | {p['lost']} |")
    lines += ["", "| ratio | value | target |", "| --- | --- | --- |"]
    for key, value in result["ratios"].items():
        op, target = TARGETS.get(key, ("==", 0))
        lines.append(f"| `{key}` | {value:.3f} | {op} {target} |")
    return "\n".join(lines) + "\n"


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, (mode, ps) in enumerate(result["points"].items()):
        c = [p["concurrency"] for p in ps]
        a.plot(c, [p["images_per_s"] for p in ps], "o-", color=f"C{i}", label=mode)
        b.plot(c, [p["p50_ms"] for p in ps], "o-", color=f"C{i}", label=f"{mode} p50")
        b.plot(c, [p["p95_ms"] for p in ps], "o--", color=f"C{i}", alpha=0.6,
               label=f"{mode} p95")
    b.axhline(result["library_ms"], color="k", lw=0.8, ls=":", label="Pipeline.sample")
    for ax, title in ((a, "throughput (images/s)"), (b, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    b.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
