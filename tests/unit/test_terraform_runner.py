"""The runner's process handling, with a stand-in script for the binary (pure process logic;
the real Terraform is exercised by the e2e tests)."""

import asyncio
import json
import os
import stat
import time

import pytest

from tf_lxd_spawner.systems.terraform import (
    TerraformError,
    TerraformRunner,
    concurrency_gate,
)

FAKE = """#!/usr/bin/env python3
import json, os, signal, sys, time
mode = os.environ["FAKE_MODE"]
def on_int(*_):
    time.sleep(1.5)  # as Terraform saving its state and unlocking
    open(os.environ["FAKE_MARK"], "w").write("interrupted")
    sys.exit(130)
signal.signal(signal.SIGINT, on_int)
print(json.dumps({"type": "version", "argv": sys.argv[1:], "secret_in_env": "TF_VAR_x" in os.environ,
                  "niceness": os.nice(0)}), flush=True)
if mode == "fail":
    print(json.dumps({"type": "diagnostic", "diagnostic": {"severity": "error", "summary": "Boom", "detail": "it broke"}}), flush=True)
    sys.exit(1)
if mode == "old-init" and sys.argv[1] == "init" and "-json" in sys.argv:
    print("Usage: terraform [global options] init [options]", file=sys.stderr)  # Terraform 1.8.5's answer
    sys.exit(1)
if mode == "slow":
    time.sleep(30)
if mode == "busy":
    mark = os.environ["FAKE_MARK"]
    open(mark, "a").write("+")
    # Stay until as many runs as the limit are in (or 5 s passed), so "they overlapped" does not
    # depend on how fast a loaded machine starts processes.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = open(mark).read()
        if text.count("+") - text.count("-") >= int(os.environ["FAKE_WANT"]):
            break
        time.sleep(0.02)
    time.sleep(0.2)
    open(mark, "a").write("-")
"""


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "terraform"
    path.write_text(FAKE)
    path.chmod(0o755)
    return str(path)


def test_events_streamed_logged_and_secrets_in_env_only(tmp_path, fake):
    seen = []
    log = tmp_path / "run.jsonl"
    runner = TerraformRunner(fake, env={"FAKE_MODE": "ok"})
    result = asyncio.run(runner.run("apply", cwd=tmp_path, env={"TF_VAR_x": "s3cret"}, on_event=seen.append,
                                    log_path=log))
    assert result.returncode == 0
    assert seen[0]["argv"] == ["apply", "-auto-approve", "-input=false", "-json", "-lock-timeout=120s"]
    assert seen[0]["secret_in_env"] is True
    assert json.loads(log.read_text().splitlines()[0])["type"] == "version"
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600


def test_terraform_runs_at_a_lower_priority_than_the_hub(tmp_path, fake):
    """A burst of spawns must not starve the hub's event loop: the runs (and the provider they
    start, which inherits it) are niced."""
    seen = []
    runner = TerraformRunner(fake, env={"FAKE_MODE": "ok"}, niceness=7)
    asyncio.run(runner.run("apply", cwd=tmp_path, on_event=seen.append, log_path=tmp_path / "run.jsonl"))
    assert seen[0]["niceness"] == os.nice(0) + 7


def test_failure_carries_terraform_diagnostics(tmp_path, fake):
    runner = TerraformRunner(fake, env={"FAKE_MODE": "fail"})
    with pytest.raises(TerraformError, match="terraform apply exited 1: Boom: it broke"):
        asyncio.run(runner.run("apply", cwd=tmp_path))


def test_missing_binary_is_named(tmp_path):
    runner = TerraformRunner(str(tmp_path / "nope"))
    with pytest.raises(TerraformError, match="was not found"):
        asyncio.run(runner.run("init", cwd=tmp_path))


def test_cancel_interrupts_before_killing(tmp_path, fake):
    mark = tmp_path / "mark"
    runner = TerraformRunner(fake, env={"FAKE_MODE": "slow", "FAKE_MARK": str(mark)})

    async def go():
        task = asyncio.ensure_future(runner.run("apply", cwd=tmp_path))
        await asyncio.sleep(1)
        task.cancel()
        t0 = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The cancellation is not held up by Terraform saving its state (JupyterHub's Stop
        # during a spawn allows one second); the interrupt goes on, and ends the process.
        assert time.monotonic() - t0 < 0.5
        await TerraformRunner.wait_for_interrupted()

    asyncio.run(go())
    assert mark.read_text() == "interrupted"


def _most_at_once(marks: str) -> int:
    """The most processes running together, from their '+' (started) and '-' (ending) marks."""
    running = most = 0
    for mark in marks:
        running += 1 if mark == "+" else -1
        most = max(most, running)
    return most


@pytest.mark.parametrize("limit", [1, 2])
def test_concurrency_gate_caps_processes(tmp_path, fake, limit):
    """The gate as the spawner gets it: LxdSpawner.runner makes a new runner on every call, each
    with `gate=concurrency_gate(terraform_concurrency)`. More runs than the limit at once: at
    most `limit` processes run together, and with limit 2 two do (the gate is not one lock)."""
    mark = tmp_path / "mark"
    runs = 3 * limit

    async def one_run():
        runner = TerraformRunner(fake, env={"FAKE_MODE": "busy", "FAKE_MARK": str(mark), "FAKE_WANT": str(limit)},
                                 gate=concurrency_gate(limit))
        await runner.run("apply", cwd=tmp_path)

    async def go():
        await asyncio.gather(*(one_run() for _ in range(runs)))

    asyncio.run(go())
    marks = mark.read_text()
    assert (marks.count("+"), marks.count("-")) == (runs, runs), marks
    assert _most_at_once(marks) == limit, marks


def test_concurrency_gate_refuses_less_than_one():
    with pytest.raises(ValueError):
        concurrency_gate(0)


def test_runner_passes_only_the_allow_listed_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CONFIGPROXY_AUTH_TOKEN", "hub-secret")
    monkeypatch.setenv("TF_LOG_PATH", "/dev/null")
    env = TerraformRunner("terraform", env={"TF_CLI_CONFIG_FILE": "/x"})._environ({"TF_VAR_a": "1"})
    assert "CONFIGPROXY_AUTH_TOKEN" not in env
    assert env["TF_LOG_PATH"] == "/dev/null" and env["TF_CLI_CONFIG_FILE"] == "/x" and env["TF_VAR_a"] == "1"


def test_a_failing_version_probe_never_raises(tmp_path):
    async def go():
        return await TerraformRunner(str(tmp_path / "gone")).version()

    assert asyncio.run(go()) == {}


async def test_init_without_json_for_terraform_before_1_9(tmp_path, fake):
    """Terraform 1.5-1.8 (1.5.7 is the last MPL release, widely kept) has no `init -json`: init
    runs again without it, and that binary's later inits skip it; other commands keep -json."""
    log = tmp_path / "init.log"
    runner = TerraformRunner(fake, env={"FAKE_MODE": "old-init"})
    assert "-json" in runner.argv("init")
    result = await runner.run("init", cwd=tmp_path, log_path=log)
    assert result.returncode == 0
    assert "-json" not in runner.argv("init") and "-json" in runner.argv("apply")
    assert [e["argv"] for e in result.events] == [["init", "-input=false"]]
    await runner.run("init", cwd=tmp_path, log_path=log)  # no failing first try any more
    assert log.read_text().count('"argv"') == 3
    failing = TerraformRunner(fake, env={"FAKE_MODE": "fail"})  # another error is not retried
    with pytest.raises(TerraformError):
        await failing.run("init", cwd=tmp_path, log_path=tmp_path / "fail.log")


def test_planned_replacements_name_the_reason():
    """A refused resume's log says why Terraform would replace the instance (a tainted resource
    is not a changed setting: the operator acts differently on each)."""
    from tf_lxd_spawner.systems.terraform import planned_replacements

    def change(addr, rtype, action, reason=None):
        c = {"resource": {"addr": addr, "resource_type": rtype}, "action": action}
        return {"type": "planned_change", "change": {**c, **({"reason": reason} if reason else {})}}

    events = [change("a.lxd_container.x", "lxd_container", "replace", "tainted"),
              change("b.lxd_container.y", "lxd_container", "update"),
              change("c.lxd_container.z", "lxd_container", "delete"),
              change("d.lxd_volume.v", "lxd_volume", "replace", "cannot_update")]
    assert planned_replacements(events, "lxd_container") == ["a.lxd_container.x (tainted)", "c.lxd_container.z"]
    assert planned_replacements(events, "lxd_volume") == ["d.lxd_volume.v (cannot_update)"]


def test_the_spawners_runs_get_its_gogc(tmp_path):
    """terraform_gogc reaches every terraform run (and so its provider); 0 leaves it alone."""
    from spawnerstub import make_spawner

    async def envs():
        tuned = make_spawner(tmp_path, "alice", terraform_gogc=250).runner._environ(None)
        plain = make_spawner(tmp_path, "bob", terraform_gogc=0).runner._environ(None)
        return tuned, plain

    tuned, plain = asyncio.run(envs())
    assert tuned["GOGC"] == "250"
    assert plain.get("GOGC") == os.environ.get("GOGC")  # only what the allow-list passes on
    with pytest.raises(Exception, match="terraform_gogc -1"):
        make_spawner(tmp_path, "carol", terraform_gogc=-1)
