import asyncio
import json
import os
import stat
import subprocess

import pytest

from conftest import MODULE_DIR, terraform_env
from tf_lxd_spawner.workspace import Workspace, WorkspaceBusy, hcl_string, render_root, workspace_path

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


def test_lock_is_exclusive_across_processes(tmp_path):
    ws = Workspace(tmp_path / "w")

    async def go():
        async with ws.lock():
            holder = subprocess.run(
                ["python", "-c", "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR);"
                 "fcntl.flock(fd, fcntl.LOCK_EX|fcntl.LOCK_NB)", str(ws.path / ".spawner.lock")],
                capture_output=True)
            assert holder.returncode != 0  # another process cannot take it
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
