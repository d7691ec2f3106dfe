"""Operator commands around a start: commands_to_prepare inside the container (as the user),
post_hub_commands on the hub host."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..errors import SpawnError
from ..systems import lxd
from ..systems.environment import allowed

if TYPE_CHECKING:  # annotations only: the spawner imports these steps
    from ..spawner import LxdSpawner
    from .preflight import Checked


async def run_prepare_commands(spawner: LxdSpawner, checked: Checked) -> None:
    commands = checked.prepare_cmds
    if not commands:
        return
    uid, gid = checked.ids
    home = spawner.account["home"]
    spawner.progress_bar.emit(86, f"Running {len(commands)} commands_to_prepare")
    # The launcher creates the account and its home at boot: wait for the home to exist.
    for _ in range(100):
        rc, _, _ = await lxd.execute(spawner.endpoint, spawner.instance, ["test", "-d", home])
        if rc == 0:
            break
        await asyncio.sleep(0.2)
    env = {"HOME": home, "USER": spawner.account["name"], "PATH": "/opt/jupyter/bin:/usr/local/bin:/usr/bin:/bin"}
    for argv in commands:
        rc, out, err = await lxd.execute(spawner.endpoint, spawner.instance, argv, uid, gid, home, env)
        if rc != 0:
            raise SpawnError(f"commands_to_prepare {argv} exited {rc}: {(err or out).strip()[-500:]}")


async def run_post_hub_commands(spawner: LxdSpawner, checked: Checked) -> None:
    """Each command with the allow-listed environment only. What a failing command printed may
    hold anything (paths, hosts, secrets): it goes to the operator's log, and the user is told
    which command failed and where the details are."""
    env = allowed(spawner.host_environment_allowlist)
    for i, argv in enumerate(checked.post_cmds):
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=env)
        except OSError as e:
            spawner.log.error("post_hub_commands[%d] %s for %s could not run: %s", i, argv, spawner.instance, e)
            raise SpawnError(f"post_hub_commands[{i}] could not run; the hub's log has the details") from None
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            spawner.log.error("post_hub_commands[%d] %s for %s exited %d: %s", i, argv, spawner.instance,
                              proc.returncode, out.decode(errors="replace").strip()[-2000:])
            raise SpawnError(f"post_hub_commands[{i}] exited {proc.returncode}; "
                             "the hub's log has its output")
