"""`udiff studio`: a real studio process on 127.0.0.1 -- paths confined to its root, the bad
inputs one line each with nothing started, admin keys; and (acceptance) the whole flow through
the page in Debian's chromium: inspect the data, start a tiny run, watch its loss chart and a
validation grid appear, cancel, resume, finish, generate 4 images of a named label, start a
2-backbone comparison, and find it all again after a restart."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serving import call

from conftest import write_folder
from udiff.serve.keys import digest, entry_toml, new_secret
from udiff.serve.schema import ApiError
from udiff.studio.paths import Root

pytest.importorskip("fastapi")
RUN = {"denoiser.preset": "tiny", "data.image_size": 16, "training.autoencoder_steps": 20,
       "training.batch_size": 16}


class Studio:
    """``udiff studio --root ROOT --port 0`` in a process of its own; stop() ends it and every
    child its job records name (they outlive the studio by design)."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.root = root
        self.log = root.parent / f"studio-{time.time_ns()}.log"  # what it said, for a failure
        with open(self.log, "w") as sink:
            self.proc = subprocess.Popen([sys.executable, "-m", "udiff", "studio", "--root",
                                          str(root), "--port", "0", *extra], stderr=sink)
        deadline = time.time() + 120
        while not (m := re.search(r"http://127\.0\.0\.1:(\d+)/", self.log.read_text())):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.time() < deadline, self.log.read_text()
            time.sleep(0.1)
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body=None, key: str | None = None):
        headers = {"Authorization": f"Bearer {key}"} if key else None
        return call(self.port, method, path, body, headers)

    def stop(self, children: bool = True) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        if children:
            for record in (self.root / ".studio" / "jobs").glob("*.json"):
                pid = json.loads(record.read_text()).get("pid")
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, TypeError, PermissionError):
                    pass

    def __enter__(self) -> Studio:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def refused(studio: Studio, method: str, path: str, body, status: int, field: str,
            key: str | None = None) -> str:
    got, _, data = studio.call(method, path, body, key)
    assert got == status, (got, data)
    assert data["error"]["field"] == field and "\n" not in data["error"]["message"], data
    return data["error"]["message"]


def test_a_path_is_confined_to_the_root(tmp_path):
    root = Root(tmp_path / "root")
    root.make()
    (root.runs / "r").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (root.runs / "r" / "out").symlink_to(tmp_path)  # a link that leaves the root
    for name in ("..", "../r", "/etc", "a/b", "", ".hidden"):
        with pytest.raises(ApiError) as e:
            root.named(root.runs, name, "name")
        assert e.value.status == 400 and e.value.field == "name"
    for relative in ("../r/x.png", "/etc/passwd", "out/secret.png", "validation/../../x.png"):
        with pytest.raises(ApiError) as e:
            root.file(root.runs / "r", relative, "path")
        assert e.value.status == 403, relative
    assert root.file(root.runs / "r", "validation/step-000010.png", "path").name == \
        "step-000010.png"


def test_train_plan_only_prints_the_plan_and_estimate_and_writes_nothing(cli, tmp_path):
    """What the studio shows before it starts a run: `udiff train --plan-only`."""
    data = write_folder(tmp_path / "users", labels=3, per_label=6)
    out = tmp_path / "never"
    code, stdout, err = cli("train", "--data", data, "--preset", "tiny", "--max-steps", "20",
                            "--autoencoder-steps", "5", "--plan-only", "--out", out)
    assert code == 0, err
    plan = json.loads(stdout)
    assert plan["summary"].startswith("data: 3 labels, 18 images")
    chosen = {c["field"]: c for c in plan["choices"]}
    assert chosen["training.max_steps"]["reason"] == "yours" and "data.channels" in chosen
    assert plan["estimate"]["seconds"] > 0 and "stage 2" in plan["estimate"]["parts"]
    assert not out.exists()


def test_bad_input_is_one_line_with_the_field_named_and_starts_nothing(tmp_path):
    root = tmp_path / "root"
    write_folder(root / "data" / "users", labels=3, per_label=6)
    (root / "data" / "broken" / "a").mkdir(parents=True)
    (root / "data" / "broken" / "a" / "x.png").write_bytes(b"not a png")
    (root / "runs" / "taken").mkdir(parents=True)
    (root / "runs" / "taken" / "config.toml").write_text("")
    (root / "runs" / "taken" / "validation").symlink_to(tmp_path)
    (tmp_path / "secret.png").write_bytes(b"x")
    with Studio(root) as s:
        status, _, state = s.call("GET", "/studio/state")
        assert status == 200 and [d["name"] for d in state["data"]] == ["broken", "users"]
        good = {"name": "r1", "data": "users", "values": RUN}
        refused(s, "POST", "/studio/runs", good | {"name": "../r1"}, 400, "name")
        refused(s, "POST", "/studio/runs", good | {"data": "../../etc"}, 400, "data")
        line = refused(s, "POST", "/studio/runs", good | {"values": {
            **RUN, "training.max_steps": -1}}, 422, "training.max_steps")
        assert "greater than or equal to 0" in line
        refused(s, "POST", "/studio/runs", good | {"values": {"nope": 1}}, 422, "nope")
        refused(s, "POST", "/studio/runs", good | {"values": {
            **RUN, "denoiser.name": "nosuch"}}, 422, "denoiser.name")
        line = refused(s, "POST", "/studio/runs", good | {"data": "broken"}, 422, "data")
        assert "cannot read image" in line
        refused(s, "POST", "/studio/runs", good | {"name": "taken"}, 409, "name")
        refused(s, "GET", "/studio/runs/taken/files/validation/secret.png", None, 403, "path")
        refused(s, "GET", "/studio/runs/taken/files/..%2F..%2Fsecret.png", None, 403, "path")
        refused(s, "POST", "/studio/compare", {"name": "c", "data": "users",
                                               "backbones": ["unet"]}, 422, "backbones")
        refused(s, "POST", "/studio/runs/taken/resume", None, 409, "name")
        status, _, state = s.call("GET", "/studio/state")
        assert state["queue"] == [] and [r["name"] for r in state["runs"]] == ["taken"]
    assert not list((root / ".studio" / "jobs").glob("*.json"))  # nothing was started
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["taken"]


def test_with_keys_the_studio_needs_an_admin_key(tmp_path, cli):
    root, keys = tmp_path / "root", tmp_path / "keys.toml"
    admin, user = new_secret(), new_secret()
    keys.write_text(entry_toml("owner", digest(admin), {"*": "*"}, admin=True) + "\n" +
                    entry_toml("u07", digest(user), {"u07*": "*"}))  # no run is served yet
    with Studio(root, "--keys-file", str(keys)) as s:
        assert s.call("GET", "/studio/state")[0] == 401
        refused(s, "GET", "/studio/state", None, 403, "Authorization", key=user)
        assert s.call("GET", "/studio/state", key=admin)[0] == 200
        assert s.call("GET", f"/?token={admin}")[0] == 200  # the page, opened from a link
    cli.fails("studio", "--root", str(root), "--host", "0.0.0.0", "--port", "0",
              match="give --keys-file with an admin key")
    cli.fails("studio", "--root", str(root), "--port", "70000", match="--port 70000: must be")
    cli.fails("studio", "--root", str(root), "--device", "tpu", match="--device tpu: auto, cpu")
    (tmp_path / "file").write_text("")
    cli.fails("studio", "--root", str(tmp_path / "file"), "--port", "0",
              match="exists and is not a directory")


@pytest.mark.acceptance  # ~2 minutes: a tiny run, its resume, a served run, a comparison started
def test_the_whole_flow_through_the_page(tmp_path):
    """Everything through the page in Debian's chromium, headless; the page reaches nothing
    but the studio. With UDIFF_STUDIO_SCREENSHOTS=DIR each panel is saved there as PNG (the
    docs' pictures)."""
    from test_serve_page import CHROMIUM, sync_api

    if CHROMIUM is None:  # .ci/run installs it and sets UDIFF_REQUIRE_BROWSER: never a skip there
        pytest.skip("no chromium here (apt-get install -y chromium)")
    shots = os.environ.get("UDIFF_STUDIO_SCREENSHOTS")
    root = tmp_path / "root"
    write_folder(root / "data" / "users", names=["alice", "bob", "carol"], per_label=12)
    field = lambda name: f"[id='field-{name}']"  # noqa: E731  (ids hold dots)
    s = Studio(root)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            outside = []
            page.on("request", lambda r: r.url.startswith((s.url, "blob:" + s.url))
                    or outside.append(r.url))  # a blob: URL is a picture the page holds
            page.goto(s.url + "/")

            def shot(name: str) -> None:
                if shots:
                    page.screenshot(path=str(Path(shots) / f"studio-{name}.png"), full_page=True)

            # Data: the report and its contact sheet
            page.wait_for_function("document.querySelectorAll('#data-pick option').length > 0")
            page.click("#data-inspect")
            page.wait_for_function("document.querySelectorAll('#data-labels tr').length === 4 "
                                   "&& document.querySelector('#data-sheet').naturalWidth > 0")
            assert "3 labels, 36 images" in page.inner_text("#data-summary")
            shot("data")

            # Train: a value out of range is the field's one line, nothing starts
            page.click("#tabs [data-tab=train]")
            page.wait_for_selector(field("training.max_steps"))
            page.fill("#train-name", "r1")
            page.select_option("#train-data", "users")
            page.select_option(field("denoiser.preset"), "tiny")
            for name, value in (("data.image_size", 16), ("training.autoencoder_steps", 20),
                                ("training.batch_size", 16), ("training.max_steps", -5),
                                ("training.validate_every", 100),
                                ("training.checkpoint_every", 25)):
                page.fill(field(name), str(value))
            page.click("#train-start")
            page.wait_for_function("document.querySelector('#message').textContent"
                                   ".startsWith('training.max_steps:')")
            assert not (root / "runs" / "r1").exists()
            page.fill(field("training.max_steps"), "400")
            page.click("#train-plan")  # the plan's choices and the timed estimate first
            page.wait_for_selector("#train-estimate:has-text('estimate:')", timeout=300_000)
            shot("train")
            page.click("#train-start")

            # Watch: the loss chart and a validation grid appear; cancel, resume, finish
            page.wait_for_function("document.querySelector('#chart-loss polyline') && "
                                   "+document.querySelector('#chart-loss polyline')"
                                   ".dataset.points >= 2 && document.querySelector("
                                   "'#watch-grid').naturalWidth > 0", timeout=300_000)
            shot("watch")
            page.click("#watch-cancel")
            page.wait_for_selector("#watch-state[data-state=stopped]", timeout=120_000)
            assert list((root / "runs" / "r1" / "checkpoints").glob("*/COMPLETE"))
            page.click("#watch-resume")
            page.wait_for_selector("#watch-state[data-state=finished]", timeout=300_000)
            log = (root / "runs" / "r1" / "log.jsonl").read_text()
            assert '"stage": "validation", "step": 400' in log

            # Use: serve the run and generate 4 images of a named label
            page.click("#tabs [data-tab=use]")
            page.wait_for_function("[...document.querySelectorAll('#use-run option')]"
                                   ".some(o => o.value === 'r1')")
            page.select_option("#use-run", "r1")
            page.click("#use-serve")
            page.wait_for_selector("#use-gen:not([hidden])", timeout=120_000)
            page.select_option("#use-label", "bob")
            page.fill("#use-count", "4")
            page.click("#use-generate")
            page.wait_for_function("document.querySelector('#use-image').dataset.done && "
                                   "document.querySelector('#use-image').naturalWidth > 16",
                                   timeout=120_000)
            shot("use")
            page.click("#use-export")  # one action each: export, distill
            page.wait_for_function("document.querySelector('#message').textContent"
                                   ".startsWith('exporting r1')")
            deadline = time.time() + 120
            while not (root / "exports" / "r1" / "vae" / "config.json").is_file():
                assert time.time() < deadline
                time.sleep(0.5)
            page.click("#use-distill")
            page.wait_for_function("document.querySelector('#message').textContent"
                                   ".startsWith('distilling into r1-4step')")
            job = json.loads((root / ".studio" / "jobs" / "train-r1-4step.json").read_text())
            assert job["argv"][:4] == ["distill", str((root / "runs" / "r1").resolve()),
                                       "--steps", "4"]
            assert s.call("DELETE", "/studio/runs/r1-4step")[0] == 200  # its CPU, back

            # Compare: two backbones started from the page
            page.click("#tabs [data-tab=compare]")
            page.fill("#cmp-name", "c1")
            page.select_option("#cmp-data", "users")
            page.uncheck(".cmp-backbone[value=flux]")
            page.fill("#cmp-steps", "100")
            page.fill("#cmp-preset", "tiny")
            page.fill("#cmp-per-label", "4")
            page.click("#cmp-start")
            page.wait_for_selector("#cmp-title[data-status=running]", timeout=60_000)
            shot("compare")
            job = json.loads((root / ".studio" / "jobs" / "compare-c1.json").read_text())
            assert "--backbones dit,unet" in " ".join(job["argv"])
            assert s.call("DELETE", "/studio/compare/c1")[0] == 200  # its CPU, back
            browser.close()
            assert outside == []
        # a restarted studio finds the finished run in its folder
        s.stop()
        s = Studio(root)
        status, _, state = s.call("GET", "/studio/state")
        run = next(r for r in state["runs"] if r["name"] == "r1")
        assert status == 200 and run["state"] == "finished" and len(run["grids"]) == 4
    finally:
        s.stop()


def wait_for(studio: Studio, name: str, check, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while True:
        status, _, view = studio.call("GET", f"/studio/runs/{name}")
        if status == 200 and check(view):
            return view
        assert time.time() < deadline, (view, studio.log.read_text()[-2000:])
        time.sleep(0.5)


@pytest.mark.acceptance  # ~40 s: two runs, a studio restarted under a running one
def test_a_restarted_studio_finds_its_running_run_and_the_queue_waits_for_it(tmp_path):
    root = tmp_path / "root"
    write_folder(root / "data" / "users", labels=3, per_label=6)
    long = {"name": "long", "data": "users", "values": {**RUN, "training.max_steps": 5000,
                                                        "training.checkpoint_every": 50}}
    s = Studio(root)
    try:
        assert s.call("POST", "/studio/runs", long)[0] == 202
        wait_for(s, "long", lambda v: (v["progress"] or {}).get("stage", "").startswith(
            "stage 2") and v["progress"]["step"] > 60)
        s.stop(children=False)  # the run goes on without the studio
        s = Studio(root)
        view = wait_for(s, "long", lambda v: True)
        assert view["state"] == "running", view
        status, _, job = s.call("POST", "/studio/runs", long | {"name": "next"})
        assert status == 202 and job["status"] == "queued"  # one run per device
        assert wait_for(s, "next", lambda v: True)["queue_position"] == 1
        assert s.call("DELETE", "/studio/runs/long")[0] == 200
        view = wait_for(s, "long", lambda v: v["state"] == "stopped", 120)
        assert view["resumable"] and view["returncode"] is None  # not this studio's child
        wait_for(s, "next", lambda v: v["state"] == "running", 60)  # the queue moved on
        assert s.call("DELETE", "/studio/runs/next")[0] == 200
        # cancelled in its first second: no checkpoint yet, so cancelled, not failed
        wait_for(s, "next", lambda v: v["state"] in ("stopped", "cancelled"), 120)
    finally:
        s.stop()
