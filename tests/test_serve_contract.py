"""The OpenAPI document is the contract the server keeps: schemathesis (from the registry) fuzzes
a live ``udiff serve`` process with a key, every check on, bounded in time: zero server errors,
zero conformance failures. The accepted exceptions are listed, with why, in
tests/contract/schemathesis.toml. Also the error shape of 404/405 and the Allow header."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from serving import call
from test_serve_keys import add_key

from udiff.serve.loadtest import start_server

pytest.importorskip("fastapi")
CONTRACT = Path(__file__).parent / "contract"
SECONDS = 30  # the fuzzer's budget (it stops generating then; .ci/run's share of the wall)


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    keys = tmp_path_factory.mktemp("contract") / "keys.toml"
    secret = add_key(keys, "fuzzer", "--runs", "*")
    proc, port = start_server([tiny_run], "--keys-file", str(keys), "--max-images", "4",
                              "--max-queue", "1024")
    yield port, secret
    proc.kill()  # not a drain test: the fuzzer leaves jobs queued that nobody will fetch
    proc.wait(60)


def test_404_and_405_use_the_error_body_and_allow_names_every_method(server):
    port, secret = server
    auth = {"Authorization": f"Bearer {secret}"}
    status, headers, data = call(port, "PUT", "/v1/jobs/abc", {}, auth)
    assert status == 405 and data["error"]["code"] == "method_not_allowed"
    assert headers["allow"] == "DELETE, GET"  # two routes: Starlette alone names only GET
    status, _, data = call(port, "GET", "/v2/nothing", headers=auth)
    assert status == 404 and data["error"]["code"] == "not_found"
    schema = call(port, "GET", "/openapi.json", headers=auth)[2]
    statuses = {path: {m: sorted(op["responses"]) for m, op in ops.items()}
                for path, ops in schema["paths"].items()}
    assert statuses["/v1/generate"]["post"] == ["200", "400", "401", "403", "413", "422", "429",
                                                "500", "503"]
    assert statuses["/v1/jobs/{job_id}"]["delete"] == ["200", "401", "404", "409", "422"]
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["steps"]["anyOf"][0]["maximum"] == 100  # this server's


@pytest.mark.acceptance  # ~1.5 min: after the suite (.ci/run)
def test_schemathesis_finds_no_server_error_and_no_conformance_failure(server, tmp_path):
    port, secret = server
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "--config-file",
           str(CONTRACT / "schemathesis.toml"), "run", f"http://127.0.0.1:{port}/openapi.json",
           "--header", f"Authorization: Bearer {secret}", "--max-time",
           str(SECONDS), "--seed", "1", "--wait-for-schema", "30", "--no-color",
           "--report", "junit", "--report-dir", str(tmp_path)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "hooks", "UDIFF_FUZZ_MAX_IMAGES": "4",
           "PYTHONPATH": str(CONTRACT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=SECONDS + 240,
                          cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    generated = int(re.search(r"(\d+) generated", out).group(1))
    assert generated > 300, out[-3000:]  # it reached the operations, not just the schema
    assert re.search(r"Tested: 8", out), out[-3000:]  # every operation
    keep = os.environ.get("UDIFF_KEEP_RESULTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / "fuzz.json").write_text(json.dumps(
            {"schemathesis": "4", "seconds": SECONDS, "generated": generated, "failures": 0,
             "checks": "all but use_after_free (tests/contract/schemathesis.toml)"},
            indent=2) + "\n")
