"""Keys with scopes on a real ``udiff serve`` process (127.0.0.1): 31 keys, one per label of a
31-font run, plus an admin key; every cross-key attempt denied, every allowed request served;
SIGHUP reload and revocation; quotas; the audit log; the keys file's bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import time
from pathlib import Path

import pytest
from serving import call

from udiff.cli import main
from udiff.client import Client, Forbidden, NotFound, RateLimited, Unauthorized
from udiff.fontset import render
from udiff.serve.loadtest import start_server

pytest.importorskip("fastapi")
USERS = 31


def add_key(keys: Path, name: str, *args: str) -> str:
    """``udiff keys add``: the secret it prints once (never written to the file)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["keys", "add", name, "--file", str(keys), *args]) == 0
    secret = out.getvalue().strip()
    assert secret.startswith("udiff_") and secret not in keys.read_text()
    return secret


def hup(proc, says: str, timeout: float = 30) -> None:
    """SIGHUP, then until the server prints a new line holding ``says``."""
    before = sum(says in x for x in proc.lines)
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while sum(says in x for x in proc.lines) == before:
        assert time.monotonic() < deadline, "".join(proc.lines[-5:])
        time.sleep(0.05)


@pytest.fixture(scope="module")
def fonts_run(tmp_path_factory) -> Path:
    """A tiny run on 31 fonts (one per user), served as 'fonts31'."""
    root = tmp_path_factory.mktemp("fonts31")
    render(root / "data", size=16, labels=USERS, per_label=8)
    out = root / "fonts31"
    assert main(["train", "--data", str(root / "data"), "--backbone", "unet", "--preset", "tiny",
                 "--autoencoder-steps", "5", "--max-steps", "2", "--batch-size", "16",
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def keyed(fonts_run, tiny_run, tmp_path_factory):
    """(secrets by key name, keys file, audit log, server process, port)."""
    root = tmp_path_factory.mktemp("keys")
    keys = root / "keys.toml"
    secrets = {f"u{k:02d}": add_key(keys, f"u{k:02d}", "--runs", "fonts31", "--labels", str(k))
               for k in range(USERS)}
    secrets["admin"] = add_key(keys, "admin", "--runs", "*")
    audit = root / "audit.jsonl"
    proc, port = start_server([fonts_run, tiny_run], "--keys-file", str(keys), "--audit-log",
                              str(audit))
    yield secrets, keys, audit, proc, port
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def test_31_keys_see_only_their_own_label_and_jobs(keyed):
    secrets, keys, audit, proc, port = keyed
    url = f"http://127.0.0.1:{port}"
    names = [f"u{k:02d}" for k in range(USERS)]
    clients = {n: Client(url, key=secrets[n]) for n in [*names, "admin"]}
    allowed, denied = 0, 0
    jobs = {}
    for k, name in enumerate(names):
        c = clients[name]
        [run] = c.runs()  # only its run, only its label
        assert run["name"] == "fonts31" and run["label_indices"] == [k] and len(run["labels"]) == 1
        images = c.generate([k], steps=2, seed=k)  # run left out: the key has one
        assert len(images) == 1 and images.labels == [k]
        jobs[name] = c.submit([run["labels"][0]], steps=2, seed=k)  # by name
        allowed += 3
        other = (k + 1) % USERS
        with pytest.raises(Forbidden) as e:
            c.generate([other], steps=2)
        assert e.value.field == "labels" and f"{k} (" in e.value.message  # names its scope
        with pytest.raises(Forbidden) as e:
            c.generate([0], run="tiny", steps=2)
        assert e.value.field == "run" and "fonts31" in e.value.message
        with pytest.raises(Forbidden):  # a run that does not exist: the same answer
            c.generate([0], run="no-such-run", steps=2)
        denied += 3
    for k, name in enumerate(names):  # another key's job: read, cancel, events are all 404
        thief, job = clients[names[(k + 1) % USERS]], jobs[name]
        for attempt in (thief.job, thief.cancel, lambda j: list(thief.events(j))):
            with pytest.raises(NotFound):
                attempt(job)
            denied += 1
        result = clients[name].wait(job)  # the owner's job went on untouched
        assert result.labels == [k]
        assert clients[name].job(job)["status"] == "succeeded"
        allowed += 2
    for headers in ({}, {"Authorization": "Bearer udiff_wrong-key-0000000000000000000000"},
                    {"Authorization": f"Basic {secrets['admin']}"}):
        for method, path in (("GET", "/v1/runs"), ("POST", "/v1/generate"),
                             ("GET", f"/v1/jobs/{jobs['u00'].id}"), ("GET", "/readyz")):
            status, _, data = call(port, method, path, {"labels": [0]}, headers)
            assert status == 401 and data["error"]["field"] == "Authorization", (path, data)
            denied += 1
    admin = clients["admin"]
    assert sorted(r["name"] for r in admin.runs()) == ["fonts31", "tiny"]
    assert len(admin.generate([30], run="fonts31", steps=2)) == 1
    assert len(admin.generate([9], run="tiny", steps=2)) == 1
    with pytest.raises(NotFound):
        admin.job(jobs["u00"])  # every scope is not every job: a job is its owner's
    allowed, denied = allowed + 2, denied + 1

    # revocation: drop u00..u04 from the file, SIGHUP; a broken file on SIGHUP keeps the keys
    for name in names[:5]:
        assert main(["keys", "remove", name, "--file", str(keys)]) == 0
    in_flight = clients["u10"].submit([10], steps=100, guidance=2.0)  # accepted before the reload
    hup(proc, "reloaded")
    assert clients["u10"].wait(in_flight).labels == [10]  # ... and not dropped by it
    for name in names[:5]:
        with pytest.raises(Unauthorized):
            clients[name].runs()
        denied += 1
    for k, name in enumerate(names[5:], start=5):
        assert len(clients[name].generate([k], steps=2)) == 1
        allowed += 1
    good = keys.read_text()
    keys.write_text(good + "\n[[keys]]\nname = 'broken'\n")
    hup(proc, "keys not reloaded")
    assert "keys not reloaded, the old 27 stay" in "".join(proc.lines)
    assert len(clients["u05"].generate([5], steps=2)) == 1
    keys.write_text(good)

    # the audit log: a line per request that reached a run, never a secret
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    statuses = [(x["key"], x["status"]) for x in lines]
    assert statuses.count(("u07", 403)) == 3 and ("u07", 200) in statuses
    assert ("u07", 202) in statuses and all(x["key"] for x in lines)  # 401s never reach a run
    row = next(x for x in lines if x["key"] == "u07" and x["status"] == 200)
    assert row["run"] == "fonts31" and row["labels"] == [7] and row["images"] == 1
    assert row["seed"] == 7 and row["ms"] > 0 and row["time"].endswith("+00:00")
    text = audit.read_text()
    assert not any(s in text for s in secrets.values())
    counts = {"keys": USERS + 1, "allowed_served": allowed, "denied": denied,
              "audit_lines": len(lines)}
    keep = os.environ.get("UDIFF_KEEP_RESULTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / "keys-matrix.json").write_text(json.dumps(counts, indent=2) + "\n")
    assert allowed == 31 * 5 + 2 + 26 and denied == 31 * 6 + 12 + 1 + 5


def test_quotas_answer_429_with_retry_after(tiny_run, tmp_path):
    from serving import Live

    keys = tmp_path / "keys.toml"
    rpm = add_key(keys, "rpm", "--runs", "tiny", "--requests-per-minute", "2")
    daily = add_key(keys, "daily", "--runs", "tiny", "--labels", "1,2", "--images-per-day", "3")
    with Live([tiny_run], keys_file=keys) as live:
        fast = Client(live.url, key=rpm)
        fast.generate([0], steps=2)
        fast.submit([0], steps=2)
        with pytest.raises(RateLimited) as e:
            fast.generate([0], steps=2)
        assert e.value.code == "rate_limited" and 1 <= e.value.retry_after <= 60
        day = Client(live.url, key=daily)
        assert len(day.generate([1, 2], steps=2)) == 2
        with pytest.raises(RateLimited) as e:  # 2 + 2 > 3: refused whole, nothing counted
            day.generate([1, 2], steps=2)
        assert e.value.code == "daily_quota" and e.value.retry_after <= 86400
        assert len(day.generate([2], steps=2)) == 1  # the third image of the day
        status, headers, _ = live.call("POST", "/v1/generate", {"labels": [1], "steps": 2},
                                       {"Authorization": f"Bearer {daily}"})
        assert status == 429 and int(headers["retry-after"]) >= 1


@pytest.mark.parametrize("text, says", [
    ("[[keys]\nname = 'x'", "does not parse"),
    ("[[keys]]\nname = 'a'\nsha256 = '{h}'\nruns = {{ 'nope' = '*' }}", "matches no served run"),
    ("[[keys]]\nname = 'a'\nsha256 = '{h}'\nruns = {{ 'tiny' = [10] }}", "label 10 is not"),
    ("[[keys]]\nname = 'a'\nsha256 = '{h}'\nruns = {{ 'tiny' = ['ten'] }}", "label 'ten' is not"),
    ("[[keys]]\nname = 'a'\nsha256 = '{h}'\nruns = {{ 't*' = '*' }}\n"
     "[[keys]]\nname = 'a'\nsha256 = '{g}'\nruns = {{ 't*' = '*' }}", "duplicate key name 'a'"),
    ("[[keys]]\nname = 'a'\nsha256 = '{s}'\nruns = {{ 'tiny' = '*' }}", "secret in clear"),
    ("[[keys]]\nname = 'a'\nsecret = 'hunter2'\nruns = {{ 'tiny' = '*' }}", "secret in clear"),
    ("[[keys]]\nname = 'a'\nsha256 = 'abc'\nruns = {{ 'tiny' = '*' }}", "64 lowercase hex"),
    ("[[keys]]\nname = 'a'\nsha256 = '{h}'\nruns = {{ 'tiny' = '*' }}\n"
     "requests_per_minute = 0", "requests_per_minute must be"),
])
def test_a_bad_keys_file_is_one_line_before_listening(cli, tiny_run, tmp_path, text, says):
    from udiff.serve.keys import digest, new_secret

    keys = tmp_path / "keys.toml"
    keys.write_text(text.format(h=digest("one"), g=digest("two"), s=new_secret()))
    before = keys.read_bytes()
    err = cli.fails("serve", tiny_run, "--keys-file", keys, "--port", "0", match=says)
    assert "hunter2" not in err and "udiff_" not in err  # a secret is never echoed back
    assert keys.read_bytes() == before


def test_keys_commands_bad_input_and_list(cli, tmp_path):
    keys = tmp_path / "keys.toml"
    add_key(keys, "u07", "--runs", "u07", "--labels", "7,seven", "--images-per-day", "50")
    before = keys.read_bytes()
    cli.fails("keys", "add", "u07", "--file", keys, "--runs", "u07", match="already in")
    cli.fails("keys", "add", "bad name", "--file", keys, "--runs", "u07", match="NAME")
    cli.fails("keys", "add", "x", "--file", keys, "--runs", ",", match="--runs")
    cli.fails("keys", "add", "x", "--file", keys, "--runs", "a", "--requests-per-minute", "0",
              match="--requests-per-minute")
    cli.fails("keys", "remove", "nobody", "--file", keys, match="no key 'nobody'")
    assert keys.read_bytes() == before
    code, out, _ = cli("keys", "list", "--file", keys)
    assert code == 0 and out.split("\t")[:2] == ["u07", "u07: 7, seven"] and "sha" not in out


def test_the_audit_log_rotates_by_size_and_keeps_every_line(tmp_path):
    from udiff.serve.audit import AuditLog

    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=4096, keep=3)
    for i in range(200):  # ~150 bytes a line: several rotations
        log.write(key="u07", run="u07", labels=[7], images=1, seed=i, status=200, ms=1.0)
    log.close()
    files = [path, *(path.with_name(f"audit.jsonl.{i}") for i in (1, 2, 3))]
    assert all(f.exists() and f.stat().st_size <= 4096 for f in files)
    assert not path.with_name("audit.jsonl.4").exists()  # at most `keep` rotated files
    seeds = [json.loads(x)["seed"] for f in reversed(files) for x in f.read_text().splitlines()]
    assert seeds == list(range(200 - len(seeds), 200))  # the newest lines, in order, none torn
