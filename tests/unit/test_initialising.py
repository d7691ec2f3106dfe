"""One `terraform init` per root module, shared by the workspaces (initialising.py), with a
stand-in binary that lays out what init makes and counts its runs (the real Terraform and
OpenTofu run it in every e2e spawn)."""

import asyncio
import dataclasses
import os
from pathlib import Path

from tf_lxd_spawner.systems import initialising
from tf_lxd_spawner.systems.terraform import Terraform, TerraformRunner
from tf_lxd_spawner.systems.workspace import Workspace

FAKE_INIT = """#!/usr/bin/env python3
import json, os, sys, time
assert sys.argv[1] == "init", sys.argv
with open(os.environ["FAKE_COUNT"], "a") as f:
    f.write(os.getcwd() + "\\n")
time.sleep(0.3)  # long enough for concurrent callers to pile up behind the first
os.makedirs(".terraform/providers/example/lxd/1.5.0", exist_ok=True)
open(".terraform/providers/example/lxd/1.5.0/terraform-provider-lxd", "w").write("binary")
open(".terraform.lock.hcl", "w").write('provider "example/lxd" {\\n  version = "1.5.0"\\n}\\n')
print(json.dumps({"type": "init_output", "@message": "Terraform has been successfully initialized!"}))
"""


def stand_in(tmp_path: Path, share: bool = True):
    binary = tmp_path / "terraform"
    binary.write_text(FAKE_INIT)
    binary.chmod(0o755)
    count = tmp_path / "inits.txt"
    runner = TerraformRunner(str(binary), env={"FAKE_COUNT": str(count)})

    return Terraform(runner, str(tmp_path / "state"), share), count


async def prepared(tf, name: str, main_tf: str) -> Workspace:
    ws = Workspace(Path(tf.state_dir) / name / "_default")
    assert await ws.prepare(main_tf, {"name": name})  # a new workspace needs init
    return ws


def test_new_workspaces_share_one_init_even_when_started_at_once(tmp_path):
    tf, count = stand_in(tmp_path)

    async def main():
        wss = [await prepared(tf, f"user{i}", "root A") for i in range(5)]
        ran = await asyncio.gather(*(initialising.initialise(tf, ws, "root A") for ws in wss))
        return wss, ran

    wss, ran = asyncio.run(main())
    assert sorted(ran) == [False] * 4 + [True]  # one of them initialised, for all
    [shared] = (Path(tf.state_dir) / initialising.SHARED_DIR).iterdir()
    assert count.read_text().splitlines() == [str(shared)]  # init ran once, in the shared directory
    for ws in wss:
        dot = ws.path / ".terraform"
        assert dot.is_symlink() and Path(os.readlink(dot)) == shared / ".terraform"
        assert (ws.path / ".terraform.lock.hcl").read_text() == (shared / ".terraform.lock.hcl").read_text()
        assert oct(os.stat(ws.path / ".terraform.lock.hcl").st_mode & 0o777) == "0o600"
        assert not list(ws.logs_dir.iterdir())  # no init log of its own
        # The next start of the same root finds the workspace initialised (no init, no link).
        assert asyncio.run(ws.prepare("root A", {"name": "again"})) is False
    assert len(list((shared / "logs").glob("*-init.jsonl"))) == 1


def test_a_changed_root_initialises_once_more_and_relinks(tmp_path):
    tf, count = stand_in(tmp_path)

    async def main():
        ws = await prepared(tf, "u", "root A")
        await initialising.initialise(tf, ws, "root A")
        assert await ws.prepare("root B", {})  # the module source changed
        assert await initialising.initialise(tf, ws, "root B") is True
        return ws

    ws = asyncio.run(main())
    assert len(count.read_text().splitlines()) == 2
    assert Path(os.readlink(ws.path / ".terraform")).parent == initialising.shared_path(
        tf.state_dir, tf.binary, "root B")


def test_a_workspace_initialised_on_its_own_before_is_linked(tmp_path):
    """A workspace from before (a .terraform directory of its own) gives it up for the link;
    its state and audit are untouched."""
    tf, _ = stand_in(tmp_path)
    ws = Workspace(Path(tf.state_dir) / "old" / "_default")
    (ws.path / ".terraform" / "providers").mkdir(parents=True)
    (ws.path / "terraform.tfstate").write_text("{}")
    (ws.path / "audit.jsonl").write_text('{"operation": "start"}\n')

    async def main():
        assert await ws.prepare("root A", {})
        await initialising.initialise(tf, ws, "root A")

    asyncio.run(main())
    assert (ws.path / ".terraform").is_symlink()
    assert (ws.path / "terraform.tfstate").read_text() == "{}"
    assert (ws.path / "audit.jsonl").read_text() == '{"operation": "start"}\n'


def test_sharing_off_initialises_each_workspace(tmp_path):
    tf, count = stand_in(tmp_path, share=False)

    async def main():
        for name in ("a", "b"):
            ws = await prepared(tf, name, "root A")
            assert await initialising.initialise(tf, ws, "root A") is True
            assert (ws.path / ".terraform").is_dir() and not (ws.path / ".terraform").is_symlink()

    asyncio.run(main())
    assert len(count.read_text().splitlines()) == 2
    assert not (Path(tf.state_dir) / initialising.SHARED_DIR).exists()


def test_a_relative_state_dir_links_by_absolute_path(tmp_path, monkeypatch):
    """An operator's state_dir is often relative to the hub's directory: the link must still
    resolve from inside the workspace (found by test_installed_wheel's relative state_dir)."""
    tf, count = stand_in(tmp_path)
    monkeypatch.chdir(tmp_path)
    tf = dataclasses.replace(tf, state_dir="relative-state")

    async def main():
        ws = await prepared(tf, "u", "root A")
        await initialising.initialise(tf, ws, "root A")
        return ws

    ws = asyncio.run(main())
    dot = ws.path / ".terraform"
    assert os.path.isabs(os.readlink(dot))
    assert (dot / "providers").is_dir()  # the link resolves
