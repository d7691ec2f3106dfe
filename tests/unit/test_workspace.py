import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODULE_DIR, terraform_env

from tf_lxd_spawner.systems.workspace import (
    StateUnreadable,
    Workspace,
    WorkspaceBusy,
    hcl_string,
    render_root,
    workspace_path,
)

PROVIDER = {"refresh_interval": "250ms", "remote": None, "config_dir": None, "accept_remote_certificate": False}


def test_workspace_paths_cannot_escape(tmp_path):
    for user in ["../../etc", "a/b", ".", "..", "", "x\ny", "名前"]:
        p = workspace_path(tmp_path, user, "../srv")
        assert p.parent.parent == tmp_path
        assert ".." not in p.parts and "/" not in p.name
    assert workspace_path(tmp_path, "alice", "").name == "_default"
    assert workspace_path(tmp_path, "alice", "_default") != workspace_path(tmp_path, "alice", "")
    assert workspace_path(tmp_path, "Alice", "") != workspace_path(tmp_path, "alice", "")


def test_hcl_string_disables_templates():
    assert hcl_string('a"b${x}%{y}') == '"a\\"b$${x}%%{y}"'


def test_rendered_root_is_valid_and_keeps_values_out_of_hcl(tmp_path):
    main_tf = render_root(str(MODULE_DIR), ["name", "image", "user", "listen_port", "server_environment"], PROVIDER)
    (tmp_path / "main.tf").write_text(main_tf)
    env = terraform_env()
    subprocess.run(["terraform", "init", "-backend=false", "-input=false"], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    out = subprocess.run(["terraform", "validate", "-json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert json.loads(out.stdout)["valid"], out.stdout
    with pytest.raises(ValueError):
        render_root(str(MODULE_DIR), ['name = "x"\n'], PROVIDER)


def test_audit_is_append_only_and_private(tmp_path):
    ws = Workspace(tmp_path / "u" / "s")

    async def go():
        await ws.audit({"operation": "start", "outcome": "ok"})
        await ws.audit({"operation": "stop", "outcome": "ok"})

    asyncio.run(go())
    assert [r["operation"] for r in ws.audit_records()] == ["start", "stop"]
    assert stat.S_IMODE(os.stat(ws.audit_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ws.path).st_mode) == 0o700


def test_seal_takes_group_and_world_access(tmp_path):
    ws = Workspace(tmp_path / "w")
    ws.path.mkdir()
    f = ws.path / ".terraform.lock.hcl"
    f.write_text("x")
    os.chmod(f, 0o644)
    asyncio.run(ws.seal())
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600


def test_seal_keeps_the_owners_bits(tmp_path):
    """The provider that `terraform init` unpacks from a registry or packed mirror is a real
    executable in the workspace: sealing must not take its owner's execute bit."""
    ws = Workspace(tmp_path / "w")
    sub = ws.path / ".terraform" / "providers"
    sub.mkdir(parents=True)
    os.chmod(sub, 0o755)
    exe = sub / "terraform-provider-lxd_v1.5.0"
    exe.write_text("#!/bin/sh\n")
    os.chmod(exe, 0o755)
    plain = ws.path / "terraform.tfstate"
    plain.write_text("{}")
    os.chmod(plain, 0o644)
    outside = tmp_path / "outside"
    outside.write_text("x")
    os.chmod(outside, 0o755)
    link = sub / "link"
    link.symlink_to(outside)
    asyncio.run(ws.seal())
    assert stat.S_IMODE(os.stat(exe).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(plain).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(sub).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sub.parent).st_mode) == 0o700
    assert link.is_symlink() and os.readlink(link) == str(outside)
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o755  # not followed


def test_sealed_workspace_can_still_run_its_provider(tmp_path):
    """With the project's packed mirror, init installs the provider as a file (not a link); after
    seal, Terraform can still start it (the old seal made this 'fork/exec ... permission denied')."""
    ws = Workspace(tmp_path / "w")
    ws.path.mkdir()
    ws.main_tf.write_text('terraform {\n  required_providers {\n    lxd = { source = "terraform-lxd/lxd" }\n'
                          '  }\n}\nprovider "lxd" {\n  generate_client_certificates = false\n}\n')
    env = terraform_env()
    subprocess.run(["terraform", "init", "-input=false"], cwd=ws.path, env=env, check=True, capture_output=True)
    installed = [os.path.join(root, name) for root, _, names in os.walk(ws.path / ".terraform" / "providers")
                 for name in names if name.startswith("terraform-provider-lxd")]
    assert installed and not any(os.path.islink(p) for p in installed), (
        f"provider not installed as a file ({installed}): is .cache's mirror packed? run `make provider`")
    asyncio.run(ws.seal())
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o700 for p in installed)
    out = subprocess.run(["terraform", "validate", "-json"], cwd=ws.path, env=env, capture_output=True, text=True)
    assert json.loads(out.stdout)["valid"], out.stdout


def test_lock_is_exclusive_across_processes(tmp_path):
    ws = Workspace(tmp_path / "w")

    async def go():
        async with ws.lock():
            holder = subprocess.run(
                [sys.executable, "-c", "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR)\n"
                 "try:\n    fcntl.flock(fd, fcntl.LOCK_EX|fcntl.LOCK_NB)\n"
                 "except BlockingIOError:\n    print('busy')\nelse:\n    print('taken')",
                 str(ws.path / ".spawner.lock")],
                capture_output=True, text=True)
            # another process cannot take it: flock itself says it is held (not any other error)
            assert (holder.returncode, holder.stdout) == (0, "busy\n"), holder.stderr
        async with ws.lock():  # released: taken again at once
            pass

    asyncio.run(go())


def test_lock_held_elsewhere_is_reported(tmp_path):
    ws = Workspace(tmp_path / "w")
    ws.path.mkdir(parents=True)
    holder = subprocess.Popen(
        ["python", "-c", "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT);"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)",
         str(ws.path / ".spawner.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"

        async def go():
            async with ws.lock():
                pass

        with pytest.raises(WorkspaceBusy):
            asyncio.run(go())
    finally:
        holder.kill()
        holder.wait()



def test_lock_waits_for_another_process_when_asked(tmp_path):
    """wait_for_others: a lock another process releases soon (a shared init) is taken once
    free; without it the same lock is refused at once."""
    ws = Workspace(tmp_path / "w")
    ws.path.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT);"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1.5)",
         str(ws.path / ".spawner.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"

        async def go(wait):
            async with ws.lock(wait_for_others=wait):
                return holder.poll()

        with pytest.raises(WorkspaceBusy):
            asyncio.run(go(0))
        assert asyncio.run(go(30)) is not None  # taken only once the holder had ended
    finally:
        holder.kill()
        holder.wait()

# -- names at JupyterHub's limits ----------------------------------------------------------------
LONG = ["é" * 255, "名" * 255, "ж" * 255, "λ" * 254 + "a", "u" * 255, "😀" * 255, "ab-" * 85]


def test_long_names_fit_a_directory_name_and_stay_unique():
    from tf_lxd_spawner.systems.naming import PATH_COMPONENT_MAX
    from tf_lxd_spawner.systems.workspace import path_component

    parts = [path_component(n) for n in LONG]
    assert all(len(p.encode()) <= PATH_COMPONENT_MAX for p in parts), [len(p) for p in parts]
    assert len(set(parts)) == len(parts)
    assert parts == [path_component(n) for n in LONG]  # stable: a restarted hub finds the same
    # Names that differ only past the cut still get their own directory.
    assert path_component("é" * 254 + "a") != path_component("é" * 254 + "b")
    # Short names keep their readable form, without a hash.
    assert path_component("zoë") == "zo-C3-AB" and "_" not in path_component("alice")


def test_long_names_make_real_directories(tmp_path):
    from tf_lxd_spawner.systems.workspace import Workspace, workspace_path

    for name in LONG:
        ws = Workspace(workspace_path(tmp_path, name, name))
        ws._prepare("# root\n", {"name": name})
        archived = ws.path.with_name(ws.path.name + ".deleted-20261129T001332Z")
        ws.path.rename(archived)  # what delete_forever does: the suffix must fit too
        assert archived.is_dir()


def test_unreadable_state_is_not_an_empty_one(tmp_path):
    from tf_lxd_spawner.systems.workspace import StateUnreadable, Workspace

    ws = Workspace(tmp_path)
    assert ws.state_resources() == []  # no state yet
    ws.state_file.write_text('{"version": 4, "resources": [{"type": "lxd_co')
    with pytest.raises(StateUnreadable, match="is not a valid Terraform state"):
        ws.state_resources()


def test_scrub_removes_tokens_from_state_backup_and_logs(tmp_path):
    from tf_lxd_spawner.systems.workspace import Workspace

    token = "4f9c0e1d2b3a49e8a7c6b5d4e3f2a1b0"
    env_json = json.dumps({"JUPYTERHUB_API_TOKEN": token, "OTHER": "x"})
    state = {"version": 4, "serial": 7, "resources": [{"type": "lxd_container", "instances": [
        {"attributes": {"name": "jupyter-a", "file": [{"target_file": "/etc/x/env.json", "content": env_json}]}}]}]}
    ws = Workspace(tmp_path)
    ws.state_file.write_text(json.dumps(state))
    (tmp_path / "terraform.tfstate.backup").write_text(json.dumps(state))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "run.jsonl").write_text(f'{{"@message": "token {token}"}}\n')
    ws._scrub_secrets(set())
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(), path
    assert not (tmp_path / "terraform.tfstate.backup").exists()
    scrubbed = json.loads(ws.state_file.read_text())
    assert scrubbed["serial"] == 8
    assert scrubbed["resources"][0]["instances"][0]["attributes"]["name"] == "jupyter-a"


def test_dangling_provider_links_are_removed_and_init_runs_again(tmp_path):
    """A workspace initialised from an unpacked mirror that was since repacked or moved."""
    ws = Workspace(tmp_path / "ws")
    assert ws._prepare("# root\n", {}) is True
    ws._mark_initialised("# root\n")
    assert ws._prepare("# root\n", {}) is False
    platform = ws.path / ".terraform" / "providers" / "registry.terraform.io" / "terraform-lxd" / "lxd" / "1.5.0"
    platform.mkdir(parents=True)
    (platform / "linux_amd64").symlink_to(tmp_path / "old-mirror" / "linux_amd64")
    assert ws._prepare("# root\n", {}) is True
    assert not os.path.lexists(platform / "linux_amd64")


def test_outputs_are_read_from_the_state(tmp_path):
    """The outputs of the last apply, without running `terraform output`; none before a state."""
    ws = Workspace(tmp_path / "ws")
    ws.path.mkdir()
    assert ws.state_outputs() == {}
    ws.state_file.write_text(json.dumps({"version": 4, "resources": [], "outputs": {
        "connect_port": {"value": 20001, "type": "number"}, "files": {"value": [], "type": ["list", "string"]}}}))
    assert ws.state_outputs() == {"connect_port": 20001, "files": []}
    ws.state_file.write_text("{not json")
    with pytest.raises(StateUnreadable):
        ws.state_outputs()


def _runs(ws, count, token=""):
    """`count` runs as the spawner makes them: a run log, an audit record, then seal."""
    made = []
    for i in range(count):
        path = ws.run_log("apply")
        while made and path == made[-1]:  # two runs in one microsecond: take the next
            path = ws.run_log("apply")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'{{"@message": "run {i} {token}"}}\n')
        ws._audit({"operation": "start", "run": i})
        ws._seal()
        made.append(path)
    return made


def test_only_the_newest_run_logs_are_kept_and_the_audit_stays_whole(tmp_path):
    RUN_LOGS_KEPT = 50  # noqa: N806 (workspace.RUN_LOGS_KEPT, the default)

    ws = Workspace(tmp_path / "ws")
    made = _runs(ws, RUN_LOGS_KEPT + 10)
    assert sorted(ws.logs_dir.iterdir()) == made[-RUN_LOGS_KEPT:]  # the newest
    assert ws.run_logs() == made[-RUN_LOGS_KEPT:]  # in order
    assert [r["run"] for r in ws.audit_records()] == list(range(RUN_LOGS_KEPT + 10))
    # A smaller bound per workspace; scrub prunes too, and files that are not run logs stay.
    (ws.logs_dir / "operator-notes.txt").write_text("mine\n")
    small = Workspace(ws.path, keep_logs=3)
    small._scrub_secrets({"no-such-token"})
    assert small.run_logs() == made[-3:] and (ws.logs_dir / "operator-notes.txt").exists()
    assert len(ws.audit_records()) == RUN_LOGS_KEPT + 10
    from tf_lxd_spawner.systems.workspace import RUN_LOGS_KEPT as default
    assert default == RUN_LOGS_KEPT


def test_scrub_reads_a_run_log_once_and_still_scrubs_new_ones(tmp_path, monkeypatch):
    """Run logs are written once, during their run: one a scrub read clean need not be read at
    the next stop; one written (or changed) since is read."""
    ws = Workspace(tmp_path / "ws")
    old = _runs(ws, 20, token="tok-one")
    assert ws._scrub_secrets({"tok-one"})
    new = _runs(ws, 2, token="tok-two")
    read = []
    real = Path.read_bytes

    def counting(self):
        read.append(self)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    changed = ws._scrub_secrets({"tok-two"})
    assert sorted(map(str, new)) == sorted(c for c in changed if "/logs/" in c)
    assert not set(old) & set(read), "logs read clean by the last scrub were read again"
    assert set(new) <= set(read)
    old[0].write_text('{"@message": "tok-two, appended later"}\n')  # changed since: read again
    assert ws._scrub_secrets({"tok-two"}) == [str(old[0])]
    for path in ws.path.rglob("*"):
        if path.is_file():
            assert "tok-" not in path.read_text(), path


def test_hub_id_made_by_racing_first_spawns_is_one_whole_id(tmp_path):
    """The first spawns of a new hub make its id at once (threads of one hub, and hubs sharing
    a state_dir): every one of them must read the same whole id, never an empty one."""
    from concurrent.futures import ThreadPoolExecutor

    from tf_lxd_spawner.systems.workspace import HUB_ID_FILE, hub_id

    for round in range(20):
        state_dir = tmp_path / f"s{round}"
        with ThreadPoolExecutor(16) as pool:
            ids = set(pool.map(lambda _: hub_id(state_dir), range(16)))
        assert len(ids) == 1 and len(next(iter(ids))) == 32, ids
        assert [p.name for p in state_dir.iterdir()] == [HUB_ID_FILE]  # no temporary file left
