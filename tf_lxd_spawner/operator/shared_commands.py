"""`tf-lxd-spawner shared ...`: an operator's commands for groups' shared folders (see
homes/shared_folders.py; docs/shared-folders.md).

    shared list [--json]              every shared folder: volume, member, quota, use, snapshots,
                                      the instances mounting it, whether shared_volumes names it
    shared snapshot NAME              take a snapshot now
    shared delete NAME [--force] [--now]   keep it storage_retention_days, then purged (as a
                                      deleted user's home; --now: its volume and snapshots go at
                                      once). Refused while mounted, and while shared_volumes
                                      names it unless --force
    shared undelete VOLUME            bring back a deleted (retained) folder under its name

Exit status: 0 done, 1 refused (the message says why; nothing was changed), 2 the daemon
unreachable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from ..errors import SpawnError
from ..homes import shared_folders
from ..systems import lxd

OPERATOR = "operator"


def add_parser(sub, daemon_options) -> None:
    cmd = sub.add_parser("shared", help="groups' shared folders (shared_volumes): list, snapshot, delete "
                         "(every one audited)")
    verbs = cmd.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", help="every shared folder: volume, member, quota, use, snapshots, mounted by")
    ls.add_argument("--json", action="store_true", help="print JSON")
    snap = verbs.add_parser("snapshot", help="take a snapshot of a shared folder now")
    snap.add_argument("name", help="the folder's name (its shared_volumes entry's)")
    delete = verbs.add_parser("delete", help="delete a shared folder: kept storage_retention_days (snapshot, "
                              "renamed), then purged; its workspace is archived with its audit record")
    delete.add_argument("name", help="the folder's name")
    delete.add_argument("--force", action="store_true", help="even though shared_volumes still names it (the "
                        "next start of one of its users makes a new, empty one)")
    delete.add_argument("--now", action="store_true", help="delete its volume and snapshots at once (no way back)")
    undelete = verbs.add_parser("undelete", help="bring back a deleted shared folder kept for retention")
    undelete.add_argument("volume", help="its retained volume's name (shared list shows it)")
    for p in (ls, snap, delete, undelete):
        daemon_options(p)


def run(args, spawner) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.verb == "list":
            return asyncio.run(_list(spawner, args.json))
        if args.verb == "snapshot":
            print(asyncio.run(shared_folders.snapshot(spawner, args.name, OPERATOR)))
            return 0
        if args.verb == "undelete":
            name = asyncio.run(shared_folders.undelete(spawner, args.volume, OPERATOR))
            print(f"{args.volume}: back as the shared folder {name}; its users' next starts mount it")
            return 0
        done = asyncio.run(shared_folders.delete(spawner, args.name, OPERATOR, args.force, args.now))
        if "retained_as" in done:
            print(f"shared folder {args.name} kept as {done['retained_as']} until {done['purge_after']} "
                  f"(snapshot {done['snapshot']}); tf-lxd-spawner shared undelete {done['retained_as']} brings it back")
        else:
            print(f"deleted shared folder {args.name} and its {done['snapshots_deleted']} snapshots")
        return 0
    except SpawnError as e:
        print(f"refused: {e.detail}", file=sys.stderr)
        return 1
    except lxd.LxdUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


async def _list(spawner, as_json: bool) -> int:
    rows = await shared_folders.listing(spawner)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        used = "" if r["used_bytes"] is None else f"{r['used_bytes'] / 2**20:.1f}MiB used"
        snaps = "" if r["snapshots"] is None else f"{r['snapshots']} snapshots"
        print("\t".join([r["folder"], f"{r['pool']}/{r['volume']}", r["member"], r["quota"] or "no quota", used,
                         snaps, "mounted by " + (", ".join(r["mounted_by"]) or "none"),
                         r["state"] + ("" if r["configured"] else ", not in shared_volumes"), r["workspace"]]))
    return 0
