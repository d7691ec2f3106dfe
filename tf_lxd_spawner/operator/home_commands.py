"""`tf-lxd-spawner home ...`: an operator's commands for users' home volumes (see homes.py and
retention.py for what each does; docs/operations.md, "Bringing files back", for when).

    home list                                   every home: quota, use, snapshots; retained ones
    home snapshots --user U [--server S]        a home's snapshots
    home snapshot  --user U [--server S]        take one now
    home restore   --user U --snapshot N [--path P]   the whole home (servers stopped) or one path
    home grow      --user U --size 20GiB        a larger quota, in place
    home move      --user U --to MEMBER         to another cluster member (servers stopped)
    home export    --user U --file F            files and snapshots to a tarball
    home import    --user U --file F            a user without a home gets it from a tarball
    home undelete  --volume V --user U          a deleted user's retained home, to U
    home purge     [--volume V]                 retained homes whose time is up (or V now)

Exit status: 0 done, 1 refused (the message says why; nothing was changed), 2 bad usage or the
daemon unreachable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

from ..errors import SpawnError
from ..homes import operations, retention
from ..homes.storage import VOLUMES_DIR, member_of
from ..systems import lxd
from ..systems.workspace import Workspace

OPERATOR = "operator"


def add_parser(sub, daemon_options) -> None:
    home = sub.add_parser("home", help="users' home volumes: list, snapshots, restore, grow, move, export, "
                          "import, undelete, purge (every one audited)")
    verbs = home.add_subparsers(dest="verb", required=True)

    def verb(name, help, user=True):
        p = verbs.add_parser(name, help=help)
        if user:
            p.add_argument("--user", required=True, help="the JupyterHub user")
            p.add_argument("--server", default="", help="the named server (per-server volumes only)")
        daemon_options(p)
        return p

    ls = verb("list", "every home volume: quota, use, snapshots, and the retained homes of deleted users",
              user=False)
    ls.add_argument("--json", action="store_true", help="print JSON")
    verb("snapshots", "a home's snapshots, oldest first")
    verb("snapshot", "take a snapshot of a home now")
    restore = verb("restore", "put a home (its servers stopped), or one path of it, back to a snapshot; "
                   "a snapshot of how it is now is taken first")
    restore.add_argument("--snapshot", required=True, help="the snapshot's name (home snapshots lists them)")
    restore.add_argument("--path", help="only this file or folder, relative to the home; servers may run")
    grow = verb("grow", "a larger quota for one home, in place")
    grow.add_argument("--size", required=True, help="the new quota, e.g. 20GiB")
    move = verb("move", "move a home to another cluster member (its servers stopped)")
    move.add_argument("--to", required=True, dest="member", help="the member")
    export = verb("export", "write a home (files and snapshots) to a tarball")
    export.add_argument("--file", required=True, type=Path)
    imp = verb("import", "give a user without a home the one in a tarball (home export wrote it)")
    imp.add_argument("--file", required=True, type=Path)
    undelete = verb("undelete", "give a deleted user's retained home to a user (the same or another)")
    undelete.add_argument("--volume", required=True, help="the retained volume's name (home list shows it)")
    purge = verb("purge", "delete the retained homes whose retention is over (cron), or one now", user=False)
    purge.add_argument("--volume", help="purge this retained volume now, whatever its time")


def run(args, spawner_for) -> int:
    """Run one `home` verb; `spawner_for(user, server)` gives the hub's settings for a user."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.verb in ("list", "purge"):
            sp = spawner_for("doctor")
            return asyncio.run(_list(sp, args.json) if args.verb == "list" else _purge(sp, args.volume))
        sp = spawner_for(args.user, args.server)
        return asyncio.run(VERBS[args.verb](sp, args))
    except SpawnError as e:
        print(f"refused: {e.detail}", file=sys.stderr)
        return 1
    except lxd.LxdUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


async def _snapshots(sp, args) -> int:
    home = await operations.find(sp)
    for snap in await operations.list_snapshots(sp, home):
        print(f"{snap['name']}\texpires {snap['expires_at'] or 'never'}")
    return 0


async def _snapshot(sp, args) -> int:
    home = await operations.find(sp)
    print(await operations.snapshot(sp, home, "manual", OPERATOR))
    return 0


async def _restore(sp, args) -> int:
    home = await operations.find(sp)
    if args.path:
        before = await operations.restore_path(sp, home, args.snapshot, args.path, OPERATOR)
        print(f"{args.path} of {home.vol.name} is back as it was in {args.snapshot} (before: snapshot {before})")
    else:
        before = await operations.restore(sp, home, args.snapshot, OPERATOR)
        print(f"{home.vol.name} is back as it was in {args.snapshot} (before: snapshot {before})")
    return 0


async def _grow(sp, args) -> int:
    home = await operations.find(sp)
    await operations.grow(sp, home, args.size, OPERATOR)
    print(f"{home.vol.name}: quota {args.size}")
    return 0


async def _move(sp, args) -> int:
    home = await operations.find(sp)
    await operations.move(sp, home, args.member, OPERATOR)
    print(f"{home.vol.name}: moved from {home.target} to {args.member}; its servers start there")
    return 0


async def _export(sp, args) -> int:
    home = await operations.find(sp)
    size = await operations.export(sp, home, args.file.resolve(), OPERATOR)
    print(f"{home.vol.name}: {size} bytes written to {args.file}")
    return 0


async def _import(sp, args) -> int:
    home = await operations.import_(sp, args.file.resolve(), OPERATOR)
    print(f"{home.vol.name}: made from {args.file} for {sp.user.name}")
    return 0


async def _undelete(sp, args) -> int:
    where = await retention.undelete(sp, args.volume)
    print(f"{args.volume}: given to {sp.user.name} as their home (workspace {where}); their next start mounts it")
    return 0


async def _purge(sp, only: str | None) -> int:
    done = await retention.purge(sp.endpoint, sp.runner, sp.state_dir, logging.getLogger("tf-lxd-spawner"), only)
    if only and not done:
        print(f"refused: no retained home volume {only!r} of this hub", file=sys.stderr)
        return 1
    print("\n".join(f"purged {name}" for name in done) or "nothing to purge")
    return 0


async def _list(sp, as_json: bool) -> int:
    rows = []
    state_dir = Path(sp.state_dir).resolve()
    for tfvars in sorted(state_dir.glob(f"*/{VOLUMES_DIR}/*/terraform.tfvars.json")):
        ws = Workspace(tfvars.parent)
        if ".retained-" in ws.path.name or ".deleted-" in ws.path.name or ".released-" in ws.path.name:
            continue
        inputs, outputs = await asyncio.to_thread(ws.saved_inputs), await asyncio.to_thread(ws.state_outputs)
        if not outputs.get("name"):
            continue
        pool, name, where = inputs.get("pool") or "default", inputs["name"], member_of(outputs)
        info = await lxd.volume(sp.endpoint, pool, name, where, usage=True)
        snaps = await lxd.volume_snapshots(sp.endpoint, pool, name, where) if info else []
        labels = inputs.get("labels") or {}
        rows.append({"user": labels.get("user", ""), "server": labels.get("server", ""), "volume": name,
                     "pool": pool, "member": where or "", "quota": inputs.get("size") or "",
                     "used_bytes": info.used_bytes if info else None, "state": "live" if info else "missing",
                     "snapshots": len(snaps), "latest": snaps[-1]["name"] if snaps else "",
                     "workspace": str(ws.path)})
    for info in await retention.retained(sp.endpoint, sp.state_dir):
        rows.append({"user": info.config.get("user.tf-lxd-spawner.user", ""),
                     "server": info.config.get("user.tf-lxd-spawner.server", ""), "volume": info.name,
                     "pool": info.pool, "member": info.location, "quota": info.config.get("size", ""),
                     "used_bytes": None, "state": f"retained until {info.config.get(retention.PURGE_KEY, '')}",
                     "snapshots": None, "latest": "", "workspace": info.config.get(retention.ARCHIVE_KEY, "")})
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        used = "" if r["used_bytes"] is None else f"{r['used_bytes'] / 2**20:.1f}MiB used"
        snaps = "" if r["snapshots"] is None else f"{r['snapshots']} snapshots{', latest ' + r['latest'] if r['latest'] else ''}"
        print("\t".join([r["user"] + (f"/{r['server']}" if r["server"] else ""), f"{r['pool']}/{r['volume']}",
                         r["member"], r["quota"] or "no quota", used, snaps, r["state"], r["workspace"]]))
    return 0


VERBS = {"snapshots": _snapshots, "snapshot": _snapshot, "restore": _restore, "grow": _grow, "move": _move,
         "export": _export, "import": _import, "undelete": _undelete}
