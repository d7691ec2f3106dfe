"""Kept servers (c.LxdSpawner.remove = False) through a real JupyterHub, on LXD + terraform and
on Incus + tofu: a stopped server keeps its container and the user's files, the next start
resumes it, and only deleting the user (delete_forever) removes it. Above all, a resume that
fails, whatever the reason, must leave the kept container as it was (issue 18).

Only a real hub shows this: after a stop it calls clear_state(), and after a failed start it
calls stop(), which calls poll() first; a restarted hub polls what its database holds. So
everything here goes through the REST API (no spawner is called directly).

One hub per daemon serves every scenario; a pre_spawn_hook reads a control file in the hub's
workdir ({user: {trait: value}}) and sets those traits for that user's next start, so each
scenario injects its own fault without restarting the hub. The scenarios are independent (one
user each) and run side by side; the one that SIGKILLs its hub gets a hub of its own. The
module-scoped `outcomes` fixture runs them all, and each test reports its scenario's findings
(every check of a scenario is made, so a failure lists all that went wrong, not just the first).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import CACHE, IMAGE
from hubtools import (
    Control,
    Hub,
    control_hook,
    second_alias,
    shut_down,
    terraform_pid,
    wait_for,
)

pytestmark = pytest.mark.e2e

BINARY = {"lxd": "terraform", "incus": "tofu"}
DISPLAY = {"lxd": "LXD", "incus": "Incus"}
ALIAS = "tf-lxd-kept-alias"  # a second alias of the same image: a change of image for the provider
MARK = "written before the stop, must survive every failed resume"
# What the daemon says when it refuses limits.memory = "lots" (raw detail: for the operator's
# log and the audit, not for the user's page).
RAW_APPLY_ERROR = "Invalid value"

@dataclass
class Stack:
    daemon: str
    client: object  # pylxd.Client of that daemon
    hub: Hub  # serves every scenario but the hub kill
    killable: Hub  # the hub-kill scenario's own
    controls: dict = field(default_factory=dict)  # hub -> Control

    def control(self, hub: Hub) -> Control:
        return self.controls[id(hub)]


def hub_config(daemon: str, work: Path) -> str:
    return f"""
c.LxdSpawner.backend = "{daemon}"
c.LxdSpawner.terraform_path = "{BINARY[daemon]}"
c.LxdSpawner.image = "{IMAGE}"
c.LxdSpawner.remove = False
# What is kept here is the container with the files in it (the home volume, which outlives
# every container whatever happens, has tests of its own: test_storage.py).
c.LxdSpawner.storage_enabled = False
# Nine spawns at once on a shared 2-CPU machine: a first server took over 90 s to answer there.
c.Spawner.http_timeout = 240
c.Spawner.start_timeout = 300
""" + control_hook(work / "control.json")


@pytest.fixture(scope="module", params=list(BINARY))
def stack(request, tmp_path_factory):
    daemon = request.param
    client = request.getfixturevalue(f"{daemon}_client")  # only the daemon under test must be up
    path = f"{os.environ['PATH']}:{CACHE / 'bin'}"  # tofu is built into the project's cache
    with second_alias(client, ALIAS):  # removed after everything else, whatever happened
        hubs = []
        controls = {}
        try:
            for role in ("main", "killable"):
                work = tmp_path_factory.mktemp(f"kept-{daemon}-{role}")
                hub = Hub(work, hub_config(daemon, work), env={"PATH": path})
                hubs.append(hub)
                controls[id(hub)] = Control(work / "control.json")
                hub.start()
            yield Stack(daemon, client, hubs[0], hubs[1], controls)
        finally:
            failures = []
            for hub in hubs:  # every hub ends and its containers go, even when one teardown fails
                try:
                    shut_down(hub, client)
                except Exception as e:
                    failures.append(e)
            # shut_down deletes nothing when its hub cannot start again: sweep by the workspace label.
            for inst in client.instances.all():
                try:
                    if any(inst.config.get("user.tf-lxd-spawner.workspace", "").startswith(f"{hub.state_dir}/")
                           for hub in hubs):
                        if inst.status != "Stopped":
                            inst.stop(force=True, wait=True)
                        inst.delete(wait=True)
                except Exception as e:  # gone meanwhile, or a daemon error: reported below
                    failures.append(e)
            if failures:
                raise failures[0]


# -- helpers -----------------------------------------------------------------------------------------

class Findings(list):
    """The checks of one scenario that failed, in order."""

    def expect(self, ok, what: str) -> bool:
        if not ok:
            self.append(what)
        return bool(ok)


def audit(hub: Hub, user: str) -> list[dict]:
    path = hub.state_dir / user / "_default" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stop(hub: Hub, user: str):
    r = hub.api("DELETE", f"/users/{user}/server")
    assert r.status_code in (202, 204), r.text
    hub.wait_stopped(user)


def spawn(hub: Hub, user: str):
    r = hub.start_server(user)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user, timeout=300)


WRITE = f"import os; p = os.path.expanduser('~/kept.txt'); open(p, 'w').write({MARK!r}); print(p)"
READ = ("import os\np = os.path.expanduser('~/kept.txt')\n"
        "print(open(p).read() if os.path.exists(p) else '<no file>', end='')")


@dataclass
class Kept:
    """A user's server that was spawned, given a file in its home, and stopped (kept)."""
    user: str
    name: str
    token: str
    created: str
    path: str  # the file, inside the container


def make_kept(st: Stack, hub: Hub, user: str) -> Kept:
    token = hub.user_token(user)
    spawn(hub, user)
    path = hub.run_code(user, token, WRITE).strip()
    [start] = [r for r in audit(hub, user) if r["operation"] == "start"]
    name = start["instance"]
    created = st.client.instances.get(name).created_at
    stop(hub, user)
    inst = st.client.instances.get(name)
    assert inst.status == "Stopped", f"remove = False: the stop must keep {name}, stopped ({inst.status})"
    return Kept(user, name, token, created, path)


def check_kept_intact(f: Findings, st: Stack, k: Kept, when: str) -> None:
    """(a): the container is still there, stopped, the same one, with the file."""
    if not f.expect(st.client.instances.exists(k.name), f"{when}: the kept container {k.name} was destroyed"):
        return
    inst = st.client.instances.get(k.name)
    f.expect(inst.created_at == k.created,
             f"{when}: {k.name} is another container (created_at {inst.created_at}, was {k.created})")
    # A cancelled start (start_timeout) writes its failed record, then its background clean-up
    # stops the instance: give that clean-up a moment before judging.
    deadline = time.monotonic() + 60
    while inst.status != "Stopped" and time.monotonic() < deadline:
        time.sleep(0.5)
        inst = st.client.instances.get(k.name)
    f.expect(inst.status == "Stopped", f"{when}: {k.name} is {inst.status}, not Stopped")
    for attempt in range(5):  # LXD 5.0's file helper for a container that just stopped can reset
        try:                  # the connection ("forkfile.sock ... connection reset by peer")
            content = inst.files.get(k.path).decode()
            break
        except Exception as e:  # pylxd's NotFound and the like: reported, not raised
            content = f"<cannot read: {e}>"
            if "NotFound" in type(e).__name__ or "not found" in str(e).lower():
                break
            time.sleep(1)
    f.expect(content == MARK, f"{when}: the user's file {k.path} in {k.name} reads {content!r}")


def check_no_destroying_recovery(f: Findings, records: list[dict], k: Kept, when: str) -> None:
    """(b), second half: no recovery removed the kept instance (a recover record counts as
    removing it unless it says the instance was kept)."""
    def says_kept(r):
        return r.get("kept") is True or "kept" in f"{r.get('note', '')} {r.get('cleanup', '')} {r.get('outcome', '')}"
    destroying = [r for r in records if r.get("operation") == "recover" and not says_kept(r)]
    f.expect(not destroying, f"{when}: the audit has a recover record removing {k.name}: {destroying}")


def resume_again(f: Findings, st: Stack, hub: Hub, k: Kept, when: str) -> None:
    """The fault cleared: the next start resumes the same container, file and all."""
    spawn(hub, k.user)
    got = hub.run_code(k.user, k.token, READ)
    f.expect(got == MARK, f"{when}: after the next start the user's file reads {got!r}")
    inst = st.client.instances.get(k.name)
    f.expect(inst.created_at == k.created,
             f"{when}: the next start made a new container (created_at {inst.created_at}, was {k.created})")
    last = audit(hub, k.user)[-1]
    f.expect((last["operation"], last["outcome"], last.get("resumed")) == ("start", "ok", True),
             f"{when}: the next start's audit record is not a resume: {last}")
    # The resume applied the plan its check saved, and that plan (it holds the server's
    # environment, its API token among it) is gone.
    f.expect(not (hub.state_dir / k.user / "_default" / "resume.tfplan").exists(),
             f"{when}: the resume left its saved plan in the workspace")


def delete_forever(f: Findings, st: Stack, hub: Hub, k: Kept) -> None:
    """Stopped, the container stays; deleting the user removes it and archives the workspace."""
    stop(hub, k.user)
    f.expect(st.client.instances.exists(k.name), f"the last stop removed {k.name} (remove = False)")
    r = hub.api("DELETE", f"/users/{k.user}")
    assert r.status_code in (202, 204), r.text
    try:
        wait_for(lambda: not st.client.instances.exists(k.name), what=f"delete_forever to remove {k.name}")
    except AssertionError as e:
        f.append(str(e))
    f.expect(list((hub.state_dir / k.user).glob("_default.deleted-*")),
             f"delete_forever did not archive {k.user}'s workspace")


def hub_log_problems(hub: Hub, user: str, since: int) -> list[str]:
    """(d): lines of the hub's log, from byte `since` on, that show the spawn as an error (a 500
    answer, or a traceback), not as a failure the spawner expected."""
    text = hub.log_path.read_bytes()[since:].decode(errors="replace")
    patterns = [rf"\b500 (GET|POST|DELETE) /hub/api/users/{re.escape(user)}\b",
                rf"Unhandled error starting {re.escape(user)}'s server",
                rf"Failed to cleanup {re.escape(user)}'s server that failed to start"]
    return [line.strip()[:400] for line in text.splitlines() if any(re.search(p, line) for p in patterns)]


def start_failing(hub: Hub, user: str) -> tuple[list[dict], int]:
    """POST a start and read its progress stream to the end (in a thread started right after the
    POST, as the spawn page does); return the events once the spawn has ended, and where the
    hub's log stood before the POST."""
    since = hub.log_path.stat().st_size
    r = hub.start_server(user)
    assert r.status_code in (201, 202), r.text
    result: Future = Future()

    def read():
        try:
            result.set_result(hub.progress_events(user))
        except Exception as e:
            result.set_exception(e)

    threading.Thread(target=read, daemon=True).start()
    wait_for(lambda: hub.server_model(user) is None, timeout=180, what=f"the failed start of {user} to end")
    return result.result(timeout=60), since


# -- scenarios -------------------------------------------------------------------------------------

def sanity(st: Stack, user: str) -> Findings:
    """A plain stop and start resumes the same container with the file; delete_forever alone
    removes it."""
    f = Findings()
    hub = st.hub
    k = make_kept(st, hub, user)
    check_kept_intact(f, st, k, "after the stop")
    resume_again(f, st, hub, k, "plain resume")
    delete_forever(f, st, hub, k)
    [archived] = (hub.state_dir / user).glob("_default.deleted-*")
    ops = [json.loads(line)["operation"] for line in (archived / "audit.jsonl").read_text().splitlines()]
    f.expect(ops == ["start", "stop", "start", "stop", "delete_forever"], f"audit operations {ops}")
    return f


def failed_resume(st: Stack, user: str, fault: dict, outcomes=("failed",), message_has=(),
                  message_lacks=(), error_has=(), message_pattern="", inject=None) -> Findings:
    """Spawn, write a file, stop; start with `fault` (traits for the control file) or `inject`
    (called with the hub and the kept server; returns the undo, called with the findings) and
    let it fail; check (a) to (d); clear the fault, start again (same container, same file);
    delete the user."""
    f = Findings()
    hub = st.hub
    k = make_kept(st, hub, user)
    before = len(audit(hub, user))
    undo = inject(hub, k) if inject else None
    st.control(hub).set(user, **fault)
    events, since = start_failing(hub, user)
    when = f"after the failed resume ({fault or inject.__doc__})"
    # A cancelled start (start_timeout) ends at once and its clean-up goes on under the
    # workspace's lock: the hub may drop the spawn before the clean-up has written its record.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
            r.get("operation") == "start" and r.get("outcome") in outcomes for r in audit(hub, user)[before:]):
        time.sleep(0.5)
    check_kept_intact(f, st, k, when)  # (a)
    new = audit(hub, user)[before:]
    failed = [r for r in new if r.get("operation") == "start" and r.get("outcome") in outcomes
              and r.get("instance") == k.name]
    f.expect(failed, f"{when}: no start record with outcome {' or '.join(outcomes)} for {k.name} "
                     f"in the audit; new records: {new}")  # (b)
    for text in error_has:
        f.expect(any(text in (r.get("error") or "") for r in failed),
                 f"{when}: the audit's failed record does not carry the detail {text!r}: {failed}")
    check_no_destroying_recovery(f, new, k, when)
    final = events[-1] if events else {}
    message = final.get("message", "")  # (c)
    print(f"\n{st.daemon} {user}: the user was shown {message!r}")
    f.expect(final.get("failed") is True and message, f"{when}: the progress stream did not end failed "
                                                      f"with a message: {final}")
    for text in message_has:
        f.expect(text in message, f"{when}: the user's message does not say {text!r}: {message!r}")
    if message_pattern:
        f.expect(re.search(message_pattern, message),
                 f"{when}: the user's message does not say what happened ({message_pattern}): {message!r}")
    for text in message_lacks:
        f.expect(text not in message, f"{when}: the user's message shows the raw error {text!r}: {message!r}")
    logged = hub_log_problems(hub, user, since)  # (d)
    f.expect(not logged, f"{when}: the hub logged the spawn as an error: {logged}")
    st.control(hub).set(user)
    if undo:
        undo(f)
    resume_again(f, st, hub, k, f"{when}, fault cleared")
    delete_forever(f, st, hub, k)
    return f


def preflight_refusal(st: Stack, user: str) -> Findings:
    return failed_resume(st, user, {"image": "no-such-image"}, outcomes=("failed", "refused"),
                         message_has=("no-such-image", "does not exist"))


def apply_failure(st: Stack, user: str) -> Findings:
    return failed_resume(st, user, {"module_variables": {"limits": {"memory": "lots"}}},
                         message_lacks=(RAW_APPLY_ERROR,), error_has=(RAW_APPLY_ERROR,))


def would_replace(st: Stack, user: str) -> Findings:
    """Another image (the provider replaces an instance whose `image` changes)."""
    return failed_resume(st, user, {"image": ALIAS}, outcomes=("failed", "refused"),
                         message_has=("would replace the kept instance",))


def would_replace_config(st: Stack, user: str) -> Findings:
    """Another instance config key (provider v1.5.0 replaces on any change of `config`)."""
    return failed_resume(st, user, {"module_variables": {"config": {"user.changed": "yes"}}},
                         outcomes=("failed", "refused"), message_has=("would replace the kept instance",))


def corrupt_state(st: Stack, user: str) -> Findings:
    """A torn terraform.tfstate is not an empty state: the start stops, saying why, and
    touches nothing; the operator restores the file and the kept container resumes."""
    def tear(hub, k):
        """terraform.tfstate torn in half"""
        state = hub.state_dir / k.user / "_default" / "terraform.tfstate"
        good = state.read_text()
        state.write_text(good[: len(good) // 2])

        def restore(f: Findings):
            f.expect(state.read_text() == good[: len(good) // 2], "the failed start rewrote the torn state")
            state.write_text(good)
        return restore

    return failed_resume(st, user, {}, inject=tear, outcomes=("failed", "refused"),
                         message_has=("terraform.tfstate is not a valid Terraform state",))


def failing_prepare_command(st: Stack, user: str) -> Findings:
    return failed_resume(st, user, {"commands_to_prepare": [["false"]]},
                         message_has=("commands_to_prepare",))


def start_timeout(st: Stack, user: str) -> Findings:
    # The hub's own message for its timeout is "Spawn failed: " (asyncio.TimeoutError has no
    # text): the user must be told the start took too long.
    # The user's message is JupyterHub's own here (its timeout, not the spawner's error).
    return failed_resume(st, user, {"start_timeout": 2})


def hub_killed_mid_resume(st: Stack, user: str) -> Findings:
    """SIGKILL the hub while the resume's apply runs, start it again: the kept container and its
    file survive, and the user's next start resumes it."""
    f = Findings()
    hub = st.killable
    k = make_kept(st, hub, user)
    before = len(audit(hub, user))
    ws = hub.state_dir / user / "_default"
    r = hub.start_server(user)
    assert r.status_code in (201, 202), r.text
    pid = terraform_pid(ws, "apply")
    hub.kill()
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="terraform to end with its hub")
    hub.start()
    wait_for(lambda: hub.server_model(user) is None, timeout=120, what="the restarted hub to drop the resume")
    when = "after the hub was killed mid-resume and restarted"
    time.sleep(2)  # anything the restarted hub does about it is done by then
    check_kept_intact(f, st, k, when)
    check_no_destroying_recovery(f, audit(hub, user)[before:], k, when)
    resume_again(f, st, hub, k, when)
    delete_forever(f, st, hub, k)
    return f


SCENARIOS = {
    "sanity": sanity,
    "preflight": preflight_refusal,
    "apply": apply_failure,
    "replace": would_replace,
    "replaceconfig": would_replace_config,
    "corrupt": corrupt_state,
    "prepare": failing_prepare_command,
    "timeout": start_timeout,
    "hubkill": hub_killed_mid_resume,
}


@pytest.fixture(scope="module")
def outcomes(stack):
    began = time.monotonic()
    # Six at a time, not all nine: nine creates at once on a loaded 2-core machine once timed
    # out Incus 6.0.4's own database ("Failed to begin transaction: context deadline exceeded",
    # every create failing with a websocket EOF) in a fresh-clone run.
    with ThreadPoolExecutor(min(6, len(SCENARIOS))) as pool:
        # One user per scenario, a plain name: its workspace is <state_dir>/<user>/_default.
        futures = {name: pool.submit(run, stack, f"kept{name}") for name, run in SCENARIOS.items()}
        results = {}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except Exception as e:  # reported by the scenario's own test
                results[name] = e
    print(f"\n{stack.daemon}: {len(SCENARIOS)} kept-server scenarios in {time.monotonic() - began:.0f} s")
    return results


def report(outcome):
    if isinstance(outcome, BaseException):
        raise outcome
    assert not outcome, "\n  ".join(["the scenario found:", *outcome])


def test_plain_stop_start_resumes_and_only_delete_forever_removes(outcomes):
    report(outcomes["sanity"])


def test_preflight_refusal_keeps_the_kept_container(outcomes):
    report(outcomes["preflight"])


def test_apply_failure_keeps_the_kept_container_and_hides_the_raw_error(outcomes):
    report(outcomes["apply"])


def test_resume_that_would_replace_is_refused_and_keeps_the_container(outcomes):
    report(outcomes["replace"])


def test_resume_that_would_replace_on_a_config_change_is_refused_and_keeps_the_container(outcomes):
    report(outcomes["replaceconfig"])


def test_corrupt_state_stops_the_resume_and_touches_nothing(outcomes):
    report(outcomes["corrupt"])


def test_failing_commands_to_prepare_keeps_the_kept_container(outcomes):
    report(outcomes["prepare"])


def test_start_timeout_keeps_the_kept_container(outcomes):
    report(outcomes["timeout"])


def test_hub_killed_mid_resume_keeps_the_kept_container(outcomes):
    report(outcomes["hubkill"])
