"""``udiff serve`` over real HTTP on 127.0.0.1: results equal the library's alone and batched,
batching, overload, cancel, auth, injected failures, bad requests, LoRA runs on one base."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from serving import Live, decode, poll

import udiff
from conftest import TINY
from udiff.cli import main

pytest.importorskip("fastapi")


def library(run, labels, per_label, steps, guidance, seed, sampler, **options) -> np.ndarray:
    images = udiff.load(run).sample(labels, per_label, steps=steps, guidance=guidance, seed=seed,
                                    sampler=sampler, **options)
    return np.stack([np.asarray(im) for im in images])


def close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal within 1/255 per pixel."""
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.fixture(scope="module")
def flow_run(tiny_run, tmp_path_factory):
    """A tiny rectified-flow run on tiny_run's autoencoder (served with Euler)."""
    out = tmp_path_factory.mktemp("flow") / "flow"
    args = [a for a in TINY if a not in ("--autoencoder-steps", "20")]
    assert main(["train", "--data", "digits", "--backbone", "unet", *args, "--scheduler", "flow",
                 "--autoencoder", str(tiny_run), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def live(tiny_run):
    with Live([tiny_run], max_queue=64, max_batch_images=16, linger_ms=50) as server:
        yield server


def test_alone_and_batched_results_equal_the_librarys(live, tiny_run):
    body = {"labels": [1, "3"], "per_label": 2, "steps": 6, "guidance": 4.0, "seed": 11}
    status, _, alone = live.call("POST", "/v1/generate", body)
    assert status == 200, alone
    assert alone["sampler"] == "dpm++" and alone["seed"] == 11
    assert [im["label_name"] for im in alone["images"]] == ["1", "1", "3", "3"]
    want = library(tiny_run, [1, 3], 2, 6, 4.0, 11, "dpm++")
    close(decode(alone), want)
    assert alone["timing"]["batch_images"] == 4

    # Five requests at once share batches; each still equals its own library call.
    bodies = [{"labels": [k % 10], "per_label": 1 + k % 2, "steps": 6, "guidance": 4.0,
               "seed": 100 + k} for k in range(5)]
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda b: live.call("POST", "/v1/generate", b), bodies))
    assert max(r[2]["timing"]["batch_images"] for r in results) > 2  # batched with others
    for b, (status, _, result) in zip(bodies, results, strict=True):
        assert status == 200, result
        close(decode(result), library(tiny_run, b["labels"], b["per_label"], 6, 4.0, b["seed"],
                                      "dpm++"))

    # Guidance interval and rescale (issue 19): equal to the library's, alone and batched with
    # plain requests (different options: different batches, each equal).
    bodies = [{"labels": [4], "per_label": 2, "steps": 6, "guidance": 4.0, "seed": 7,
               "guidance_interval": [0.2, 0.8], "guidance_rescale": 0.7},
              {"labels": [4], "per_label": 2, "steps": 6, "guidance": 4.0, "seed": 7}]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda b: live.call("POST", "/v1/generate", b), bodies))
    guided, plain = (decode(r[2]) for r in results)
    assert results[0][2]["guidance_interval"] == [0.2, 0.8]
    assert results[0][2]["guidance_rescale"] == 0.7
    close(guided, library(tiny_run, [4], 2, 6, 4.0, 7, "dpm++", interval=(0.2, 0.8),
                          rescale=0.7))
    close(plain, library(tiny_run, [4], 2, 6, 4.0, 7, "dpm++"))
    assert np.abs(guided.astype(int) - plain.astype(int)).max() > 1  # the options did something


def test_absent_seed_is_random_and_echoed_and_png_grid(live, tiny_run):
    _, _, a = live.call("POST", "/v1/generate", {"labels": [0], "steps": 3})
    _, _, b = live.call("POST", "/v1/generate", {"labels": [0], "steps": 3})
    assert a["seed"] != b["seed"]
    close(decode(a), library(tiny_run, [0], 1, 3, 6.0, a["seed"], "dpm++"))
    body = {"labels": [0, 1], "per_label": 2, "steps": 3, "seed": 21}
    status, headers, png = live.call("POST", "/v1/generate", body, headers={"Accept": "image/png"})
    assert status == 200 and headers["content-type"] == "image/png"
    # The grid is the JSON response's images: a row per label, each upscaled 3x (nearest).
    want = decode(live.call("POST", "/v1/generate", body)[2])  # [4, 16, 16]
    sheet, step = np.asarray(Image.open(io.BytesIO(png))), 16 * 3 + 2
    assert sheet.shape == (2 + 2 * step, 2 + 2 * step)
    cells = [sheet[2 + r * step: 2 + r * step + 48: 3, 2 + c * step: 2 + c * step + 48: 3]
             for r in range(2) for c in range(2)]
    close(np.stack(cells), want)


def test_ddpm_runs_alone_where_ddim_shares_a_batch(live, tiny_run):
    """Queued together behind a blocker: DDIM jobs (deterministic) share one batch; DDPM jobs,
    which draw noise at every step, each run alone from their own generator."""
    blocker = busy(live)
    jobs = [(sampler, seed, live.call("POST", "/v1/jobs", {
        "labels": [2], "per_label": 2, "steps": 5, "sampler": sampler, "seed": seed})[2]["id"])
        for sampler in ("ddpm", "ddim") for seed in (1, 2)]
    live.call("DELETE", f"/v1/jobs/{blocker}")
    for sampler, seed, job_id in jobs:
        job = poll(live, job_id)
        assert job["status"] == "succeeded", job
        assert job["result"]["sampler"] == sampler
        assert job["result"]["timing"]["batch_images"] == (2 if sampler == "ddpm" else 4)
        close(decode(job["result"]), library(tiny_run, [2], 2, 5, 6.0, seed, sampler))


def test_a_flow_run_is_served_with_euler(tiny_run, flow_run):
    with Live([tiny_run, flow_run], linger_ms=0) as live:
        runs = {r["name"]: r for r in live.call("GET", "/v1/runs")[2]["runs"]}
        assert runs[flow_run.name]["objective"]["family"] == "flow"
        assert runs[flow_run.name]["defaults"]["sampler"] == "flow"
        body = {"run": flow_run.name, "labels": [3], "per_label": 2, "steps": 6, "guidance": 2.0,
                "seed": 4}
        status, _, result = live.call("POST", "/v1/generate", body)
        assert status == 200 and result["sampler"] == "flow", result
        close(decode(result), library(flow_run, [3], 2, 6, 2.0, 4, "flow"))
        status, _, data = live.call("POST", "/v1/generate", {**body, "sampler": "ddim"})
        assert (status, data["error"]["field"]) == (422, "sampler")  # another family's sampler


def test_sixteen_concurrent_requests_take_fewer_than_sixteen_batches(live):
    before = live.service.worker.batches
    body = {"labels": [5], "steps": 4}
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: live.call("POST", "/v1/generate", body), range(16)))
    assert all(status == 200 for status, _, _ in results)
    assert live.service.worker.batches - before < 16


def test_cancel_one_job_of_a_running_batch(live, tiny_run):
    bodies = [{"labels": [k], "steps": 60, "guidance": 4.0, "seed": k} for k in range(3)]
    ids, blocker = [], busy(live)  # the three queue up behind it, then share one batch
    for b in bodies:
        status, headers, job = live.call("POST", "/v1/jobs", b)
        assert status == 202 and headers["location"] == f"/v1/jobs/{job['id']}"
        ids.append(job["id"])
    live.call("DELETE", f"/v1/jobs/{blocker}")
    deadline = time.monotonic() + 60
    while live.call("GET", f"/v1/jobs/{ids[1]}")[2]["step"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    status, _, view = live.call("DELETE", f"/v1/jobs/{ids[1]}")
    assert status == 200, view
    done = [poll(live, i) for i in ids]
    assert done[1]["status"] == "cancelled" and done[1]["step"] < 60
    for k in (0, 2):
        assert done[k]["status"] == "succeeded" and done[k]["step"] == 60
        assert done[k]["result"]["timing"]["batch_images"] == 3  # they ran together
        close(decode(done[k]["result"]), library(tiny_run, [k], 1, 60, 4.0, k, "dpm++"))
    assert live.call("DELETE", f"/v1/jobs/{ids[0]}")[0] == 409  # finished: nothing to cancel
    for method in ("GET", "DELETE"):
        status, _, data = live.call(method, "/v1/jobs/nope")
        assert (status, data["error"]["code"], data["error"]["field"]) == (404, "unknown_job", "id")


def busy(live) -> str:
    """A long job that keeps the worker busy, so that the next ones stay queued."""
    job = live.call("POST", "/v1/jobs", {"labels": [0], "steps": 100, "guidance": 1.5})[2]
    while live.call("GET", f"/v1/jobs/{job['id']}")[2]["status"] == "queued":
        time.sleep(0.01)
    return job["id"]


def test_a_queued_job_is_cancelled_without_running(live):
    blocker = busy(live)
    status, _, job = live.call("POST", "/v1/jobs", {"labels": [1], "steps": 3})
    assert status == 202
    status, _, view = live.call("DELETE", f"/v1/jobs/{job['id']}")
    assert status == 200 and view["status"] == "cancelled" and view["step"] == 0
    assert live.call("DELETE", f"/v1/jobs/{blocker}")[0] == 200
    assert poll(live, blocker)["status"] == "cancelled"


@pytest.mark.parametrize("body, status, code, field", [
    ({"run": "nope", "labels": [0]}, 422, "unknown_run", "run"),
    ({"labels": [10]}, 422, "unknown_label", "labels"),
    ({"labels": ["ten"]}, 422, "unknown_label", "labels"),
    ({"labels": []}, 422, "invalid_value", "labels"),
    ({"per_label": 2}, 422, "invalid_value", "labels"),
    ({"labels": [0], "sampler": "eulr"}, 422, "unknown_sampler", "sampler"),
    ({"labels": [0], "sampler": "flow"}, 422, "unknown_sampler", "sampler"),
    ({"labels": [0], "steps": 0}, 422, "invalid_value", "steps"),
    ({"labels": [0], "steps": 101}, 422, "out_of_range", "steps"),
    ({"labels": [0, 1], "per_label": 9}, 422, "too_many_images", "per_label"),
    ({"labels": [0], "guidance": -1}, 422, "invalid_value", "guidance"),
    ({"labels": [0], "guidance": 50}, 422, "out_of_range", "guidance"),
    ({"labels": [0], "seed": -3}, 422, "invalid_value", "seed"),
    ({"labels": [0], "guidance_interval": [0.8, 0.2]}, 422, "out_of_range", "guidance_interval"),
    ({"labels": [0], "guidance_interval": [0.5]}, 422, "invalid_value", "guidance_interval"),
    ({"labels": [0], "guidance_rescale": 2}, 422, "invalid_value", "guidance_rescale"),
    ({"labels": [0], "stepz": 3}, 422, "invalid_value", "stepz"),
    (b"{not json", 400, "malformed_json", "body"),
    (b"[1, 2]", 422, "invalid_value", "body"),
    (b'{"labels": [0], "run": "' + b"x" * 20000 + b'"}', 413, "body_too_large", "body"),
    # strict: JSON's types as the schema says them (the fuzzer found each accepted before)
    ({"labels": [0], "steps": True}, 422, "invalid_value", "steps"),
    ({"labels": [0], "seed": "7"}, 422, "invalid_value", "seed"),
    ({"labels": [0], "sampler": ""}, 422, "invalid_value", "sampler"),
    ({"labels": [""]}, 422, "invalid_value", "labels"),
    ({"labels": [True]}, 422, "invalid_value", "labels"),
    ({"labels": [0], "guidance": "6"}, 422, "invalid_value", "guidance"),
])
def test_bad_requests_name_the_field(live, body, status, code, field):
    for path in ("/v1/generate", "/v1/jobs"):
        got, _, data = live.call("POST", path, body)
        assert (got, data["error"]["code"], data["error"]["field"]) == (status, code, field), data
        assert data["error"]["message"]


def test_runs_route_and_probes(live):
    status, _, data = live.call("GET", "/v1/runs")
    assert status == 200
    run = data["runs"][0]
    assert run["backbone"] == "unet" and run["labels"][3] == "3" and run["image_size"] == 16
    assert run["objective"]["family"] == "noise" and run["defaults"]["sampler"] == "dpm++"
    assert data["limits"]["max_images"] == 16 and data["limits"]["max_queue"] == 64
    assert live.call("GET", "/healthz")[0] == 200
    assert live.call("GET", "/readyz")[0] == 200
    status, _, page = live.call("GET", "/")
    assert status == 200 and b"<title>udiff</title>" in page and b"http" not in page.lower()
    assert "/v1/generate" in live.call("GET", "/openapi.json")[2]["paths"]


def test_an_injected_failure_fails_its_batch_and_the_server_goes_on(live, monkeypatch):
    denoiser = live.service.runs[next(iter(live.service.runs))].pipe.denoiser
    forward, calls = denoiser.forward, []

    def broken(x, *args, **kwargs):
        calls.append(len(x))
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(denoiser, "forward", broken)
    status, _, data = live.call("POST", "/v1/generate", {"labels": [0], "steps": 3})
    assert status == 500 and "injected failure" in data["error"]["message"]
    assert live.call("POST", "/v1/generate", {"labels": [0], "steps": 3})[0] == 200


def test_out_of_memory_splits_the_batch_and_retries(live, tiny_run, monkeypatch):
    denoiser = live.service.runs[next(iter(live.service.runs))].pipe.denoiser
    forward = denoiser.forward

    def small_only(x, *args, **kwargs):  # 6 rows = 3 images with guidance: "out of memory"
        if len(x) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return forward(x, *args, **kwargs)

    blocker = busy(live)  # the three below queue up, then share one batch
    ids = [live.call("POST", "/v1/jobs", {"labels": [k], "steps": 3, "seed": k})[2]["id"]
           for k in range(3)]
    monkeypatch.setattr(denoiser, "forward", small_only)
    live.call("DELETE", f"/v1/jobs/{blocker}")
    for k, i in enumerate(ids):
        job = poll(live, i)
        assert job["status"] == "succeeded", job
        assert job["result"]["timing"]["batch_images"] < 3  # the batch of 3 was split
        close(decode(job["result"]), library(tiny_run, [k], 1, 3, 6.0, k, "dpm++"))


def test_overload_gives_503_and_every_accepted_job_succeeds(tiny_run):
    with Live([tiny_run], max_queue=4, max_batch_images=2, linger_ms=0) as live:
        body = {"labels": [3], "steps": 20}
        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(lambda _: live.call("POST", "/v1/generate", body),
                                    range(50)))
    statuses = [s for s, _, _ in results]
    assert set(statuses) == {200, 503} and statuses.count(503) > 0
    for status, headers, data in results:
        if status == 503:
            assert data["error"]["code"] == "queue_full" and headers["retry-after"]
        else:
            assert len(data["images"]) == 1


def test_auth(tiny_run, tmp_path):
    with Live([tiny_run], token="s3cret") as live:
        assert live.call("GET", "/healthz")[0] == 200
        for path in ("/v1/runs", "/readyz", "/", "/docs"):
            status, headers, data = live.call("GET", path)
            assert status == 401 and data["error"]["field"] == "Authorization", path
            assert headers["www-authenticate"] == "Bearer"
        bad = {"Authorization": "Bearer wrong"}
        assert live.call("POST", "/v1/generate", {"labels": [0]}, bad)[0] == 401
        good = {"Authorization": "Bearer s3cret"}
        assert live.call("GET", "/v1/runs", headers=good)[0] == 200
        assert live.call("POST", "/v1/generate", {"labels": [0], "steps": 2}, good)[0] == 200
        assert live.call("GET", "/?token=s3cret")[0] == 200  # the page, opened from a link


@pytest.fixture(scope="module")
def lora_runs(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    assert main(["export", str(tiny_run), "--out", str(root / "base")]) == 0
    runs = []
    for k in range(3):
        out = root / f"user{k}"
        assert main(["train", "--data", "digits", "--batch-size", "16", "--backbone", "unet",
                     "--autoencoder", str(tiny_run), "--init-from", str(root / "base" / "unet"),
                     "--lora-rank", "4", "--max-steps", "8", "--lr", "5e-3", "--seed", str(k),
                     "--scheduler", "ddpm",  # the base's objective
                     "--out", str(out)]) == 0
        runs.append(out)
    return runs


def test_lora_runs_share_one_base(lora_runs):
    pytest.importorskip("peft")
    from udiff.serve import runs as served

    together = served.parameter_bytes(served.load(lora_runs))
    apart = sum(served.parameter_bytes(served.load([r])) for r in lora_runs)
    one = served.parameter_bytes(served.load(lora_runs[:1]))
    assert together < one * 1.2 < apart / 2  # base once plus small adapters, not 3 bases
    with Live(lora_runs, linger_ms=50) as live:
        bodies = [{"run": r.name, "labels": [4], "per_label": 2, "steps": 5, "seed": 3}
                  for r in lora_runs]
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda b: live.call("POST", "/v1/generate", b), bodies))
        for r, (status, _, result) in zip(lora_runs, results, strict=True):
            assert status == 200, result
            close(decode(result), library(r, [4], 2, 5, 6.0, 3, "dpm++"))
        assert np.abs(decode(results[0][2]).astype(int) - decode(results[1][2])).max() > 1


def test_finished_jobs_are_kept_for_a_bounded_time_and_count(tiny_run):
    from udiff.sampling.spec import SamplingSpec
    from udiff.serve.jobs import Job, JobStore
    from udiff.serve.schema import Limits, Work

    store = JobStore(Limits(max_finished_jobs=2, job_ttl_s=60))
    work = Work("tiny", (0,), 1, SamplingSpec("dpm++", 3, 6.0), False)
    jobs = [Job(work) for _ in range(4)]
    for job in jobs:
        store.add(job)
    for job in jobs[:3]:
        job.finish("succeeded")
    store.prune()
    assert [j.id for j in store.values()] == [jobs[1].id, jobs[2].id, jobs[3].id]  # 2 finished
    jobs[1].finished -= 61  # older than the time-to-live
    store.prune()
    assert [j.id for j in store.values()] == [jobs[2].id, jobs[3].id]  # the running one stays
