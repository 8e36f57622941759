"""``udiff bench serve RUN_DIR``: closed-loop clients (``udiff.client.Client``) against a real
``udiff serve`` (its own process, uvicorn on 127.0.0.1) at several concurrencies, batching on and
off, each point bounded in time; beside it ``Pipeline.sample`` for the same work, and the same
server with keys (one per label, scope checks, quotas, the fsynced audit log). Writes
``serve.json``, ``serve.md`` and ``serve.png``. Targets (2 CPU cores, the demo UNet): images/s
with batching ÷ without ≥ 2 at concurrency 16; served latency at concurrency 1 ≤ 1.2 ×
``Pipeline.sample``; with keys ≤ 1.02 × without."""

from __future__ import annotations

import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..client import ApiError, Client, Unavailable
from ..errors import UdiffError
from ..machine import machine
from ..run.files import prepare_out, write_json
from .audit import AuditLog
from .keys import digest, entry_toml, new_secret

TARGETS = {"batching_gain_c16": (">=", 2.0), "latency_ratio_c1": ("<=", 1.2),
           "keys_cost_share_c1": ("<=", 0.02)}
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


def closed_loop(port: int, clients: int, seconds: float, body: dict,
                key: str | None = None) -> dict:
    """``clients`` threads, each with its own :class:`Client`, sending its next request when the
    last one answered, until ``seconds`` pass; the requests in flight then are waited for."""
    latencies, batches, runs, statuses, lost = [], [], [], [], []
    deadline = time.monotonic() + seconds
    labels, options = body["labels"], {k: v for k, v in body.items() if k != "labels"}

    def client() -> None:
        c = Client(f"http://127.0.0.1:{port}", key=key)
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                result = c.generate(labels, **options)
            except Unavailable:  # 503: the queue is full, counted, not lost
                statuses.append(503)
                continue
            except ApiError as e:
                statuses.append(e.status)
                lost.append(f"HTTP {e.status} {e.code}")
                continue
            except OSError as e:  # a request with no answer: lost
                lost.append(repr(e))
                c.close()
                continue
            latencies.append(time.perf_counter() - start)
            statuses.append(200)
            batches.append(result.timing["batch_images"])
            runs.append(result.timing["run_ms"])
        c.close()

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


def keys_ratio(run_dir: Path, pipe, open_port: int, body: dict, labels: list[str],
               seconds: float, rounds: int = 4) -> dict:
    """A server with a key per label (+ an admin key), quotas and the audit log, against the
    open one, at concurrency 1 in alternating rounds (one idle while the other serves): p50
    with keys over p50 without."""
    with tempfile.TemporaryDirectory() as tmp:
        keys, secret = Path(tmp) / "keys.toml", None
        entries = []
        for i in range(len(labels)):
            s = new_secret()
            secret = secret or s  # label 0's key makes the requests (body asks for label 0)
            entries.append(entry_toml(f"u{i:02d}", digest(s), {run_dir.resolve().name: [i]},
                                      requests_per_minute=10**6, images_per_day=10**9))
        entries.append(entry_toml("admin", digest(new_secret()), {"*": "*"}))
        keys.write_text("\n".join(entries))
        proc, port = start_server([run_dir], "--keys-file", str(keys), "--audit-log",
                                  str(Path(tmp) / "audit.jsonl"), "--max-queue", "1024")
        try:
            pairs = []
            for i in range(rounds):  # the order alternates too: neither always goes first
                order = [(port, secret), (open_port, None)][::1 if i % 2 == 0 else -1]
                p50 = {k is None: closed_loop(at, 1, seconds / rounds, body, key=k)["p50_ms"]
                       for at, k in order}
                pairs.append((p50[False], p50[True]))
            lines = len((Path(tmp) / "audit.jsonl").read_text().splitlines())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        path_ms = key_path_ms(pipe, run_dir, keys, secret, body, Path(tmp) / "timed.jsonl")
    keyed_ms = statistics.median(k for k, _ in pairs)
    return {"ratio": statistics.median(k / o for k, o in pairs), "keys": len(labels) + 1,
            "keyed_ms": keyed_ms, "open_ms": statistics.median(o for _, o in pairs),
            "audit_lines": lines, "key_path_ms": path_ms, "share": path_ms / keyed_ms}


def key_path_ms(pipe, run_dir: Path, keys: Path, secret: str, body: dict, audit: Path,
                repeats: int = 500) -> float:
    """What a key adds to a request, timed in this process on the server's own objects: find
    the key, check the run and labels, take the quotas, write the fsynced audit line -- minus
    the same request's checks on an open server. Two processes' latencies differ by more than
    this (their p50s above): the share of it in the served latency is the target."""
    from .keys import load
    from .runs import ServedRun
    from .schema import GenerateRequest, Limits
    from .service import Service

    name = run_dir.resolve().name
    runs = {name: ServedRun(name, run_dir, pipe, pipe.config.denoiser.name)}
    log = AuditLog(audit)
    keyed = Service(runs, Limits(), load(keys, {name: pipe.label_names}), log)
    plain = Service(runs, Limits())
    req = GenerateRequest.model_validate(body)

    def once(service: Service, header: str) -> None:
        key = service.authenticate(header)
        run = service.run_of(req, key)
        work = run.work(req, service.limits, service.scope(key)[name], key and key.name)
        if key is not None:
            service.quotas.take(key, work.images)
            log.write(key=key.name, run=work.run, labels=[0], images=work.images,
                      seed=work.spec.seed, status=200, ms=1.0)

    times = {}
    for service, header in ((keyed, f"Bearer {secret}"), (plain, "")):
        start = time.perf_counter()
        for _ in range(repeats):
            once(service, header)
        times[service is keyed] = (time.perf_counter() - start) / repeats * 1000
    log.close()
    return times[True] - times[False]


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
                [info] = Client(f"http://127.0.0.1:{port}").runs()
                work = body = {**body, **info["defaults"]}
                latency = latency_ratio(port, body, pipe, seconds)
                keyed = keys_ratio(run_dir, pipe, port, body, info["labels"], seconds)
                print(f"udiff bench serve: with {keyed['keys']} keys and the audit log, "
                      f"concurrency 1: p50 {keyed['keyed_ms']:.1f} ms vs {keyed['open_ms']:.1f} "
                      f"ms without (x{keyed['ratio']:.3f}); the key's checks and audit line "
                      f"{keyed['key_path_ms']:.3f} ms ({keyed['share']:.2%})", file=sys.stderr,
                      flush=True)
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
              "keys": keyed, "points": points,
              "ratios": {**ratios(points, latency["ratio"]),
                         "keys_latency_ratio_c1": keyed["ratio"],
                         "keys_cost_share_c1": keyed["share"]}}
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
             f"{result['library_ms']:.1f} ms; with {result['keys']['keys']} keys (scope checks, "
             f"quotas, the fsynced audit log) {result['keys']['keyed_ms']:.1f} ms against "
             f"{result['keys']['open_ms']:.1f} ms without (two processes); the key's checks and "
             f"audit line, timed on the server's objects: {result['keys']['key_path_ms']:.3f} ms "
             "a request.", "",
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
