"""Operator commands over a state_dir (the audit record of every server) and LXD.

    tf-lxd-spawner list     [--state-dir D | -f jupyterhub_config.py]
    tf-lxd-spawner audit    [--user U] ...
    tf-lxd-spawner orphans  [--destroy] [--json] ...   exit 0: none found (or all cleaned), 1: found
    tf-lxd-spawner doctor   [--json] [--lxd-endpoint E ...]  exit 0: every check passed, 1: one failed
    tf-lxd-spawner adopt-volume --user U --volume V   give a volume kept with a deleted user
                            (delete_storage = False) back to the new user of that name
    tf-lxd-spawner home list|snapshots|snapshot|restore|grow|move|export|import|undelete|purge
                            a user's home volume: its snapshots, a way back, a backup, retention
    tf-lxd-spawner shared list|snapshot|delete   groups' shared folders (shared_volumes)

-f reads the settings of jupyterhub_config.py, as the hub would (defaults and validation are
the spawner's own); options on the command line override them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse, urlunparse

from ..homes.shared_folders import SHARED_DIR
from ..homes.storage import RELEASED_KEY, VOLUMES_DIR, member_of
from ..lifecycle.record import read_record
from ..systems import backends, lxd, naming
from ..systems.terraform import TerraformRunner, pick_binary
from ..systems.workspace import StateUnreadable, Workspace
from . import doctor, home_commands, orphans, shared_commands

SETTINGS = ("state_dir", "backend", "lxd_endpoint", "lxd_cert", "lxd_key", "lxd_verify", "terraform_path",
            "terraform_cli_config", "orphan_grace_period", "lxd_timeout")
DEFAULT_HUB_API = "http://127.0.0.1:8081/hub/api"


def _load_config(path: str | None):
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    if not path:
        return Config()
    return PyFileConfigLoader(os.path.basename(path), os.path.dirname(os.path.abspath(path))).load_config()


def _hub(cfg):
    """The hub's own address object, from the JupyterHub settings the way JupyterHub makes it
    (hub_ip, hub_port, hub_bind_url, base_url, hub_connect_ip, hub_connect_url), without
    importing the whole hub application."""
    from jupyterhub.objects import Hub
    from jupyterhub.utils import url_path_join

    jh = cfg.get("JupyterHub", {})
    prefix = jh.get("hub_prefix") or url_path_join(jh.get("base_url", "/"), "/hub/")
    if jh.get("hub_bind_url"):
        hub = Hub(bind_url=urlunparse(urlparse(jh["hub_bind_url"])._replace(path=prefix)), base_url=prefix)
    else:
        hub = Hub(ip=jh.get("hub_ip", "127.0.0.1"), port=int(jh.get("hub_port", 8081)), base_url=prefix)
    if jh.get("hub_connect_ip"):
        hub.connect_ip = jh["hub_connect_ip"]
    if jh.get("hub_connect_port"):
        hub.connect_port = int(jh["hub_connect_port"])
    if jh.get("hub_connect_url"):
        hub.connect_url = urlunparse(urlparse(jh["hub_connect_url"])._replace(path=prefix))
    if jh.get("internal_ssl"):
        hub.proto = "https"
    return hub


def spawner_from(args, user_name: str = "doctor", server_name: str = ""):
    """An LxdSpawner configured as the hub would configure it (jupyterhub_config.py, then the
    command line's options), for a user (a stand-in by default): its traits are the settings,
    with the spawner's own defaults and validation."""
    from .. import LxdSpawner

    cfg = _load_config(args.config)
    for key in SETTINGS:
        value = getattr(args, key, None)
        if value is None:
            continue
        if key == "lxd_verify" and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        cfg.LxdSpawner[key] = value
    user = SimpleNamespace(name=user_name, url=f"/user/{user_name}/", escaped_name=user_name, state=None)
    orm_spawner = SimpleNamespace(name=server_name, server=None, state=None)
    return LxdSpawner(config=cfg, user=user, hub=_hub(cfg), orm_spawner=orm_spawner)


def _settings(spawner) -> dict:
    return {**{key: getattr(spawner, key) for key in SETTINGS}, "endpoint": spawner.endpoint}


def _workspaces(state_dir: Path):
    """Every workspace with an audit record: servers', then groups' shared folders'."""
    for audit in sorted(state_dir.glob("*/*/audit.jsonl")):
        yield Workspace(audit.parent)


def cmd_list(args, settings) -> int:
    for ws in _workspaces(Path(settings["state_dir"])):
        if ws.path.parent.name == SHARED_DIR:
            continue  # listed below, with the volumes
        records = ws.audit_records()
        last = records[-1] if records else {}
        try:
            live = "live" if ws.state_resources() else "empty"
        except StateUnreadable:
            live = "unreadable-state"
        record = read_record(ws.path)
        phase = record.phase.value if record else "unrecorded"
        print(f"{ws.path}\t{last.get('instance', '')}\t{last.get('member', '')}\t{live}\t{phase}\t"
              f"{last.get('operation', '')}:{last.get('outcome', '')}\t{last.get('time', '')}")
    for line in _volume_lines(Path(settings["state_dir"]), settings["endpoint"]):
        print(line)
    return 0


def _volume_lines(state_dir: Path, endpoint) -> list[str]:
    """One line per user's home volume: its workspace, name, pool, member, quota and use."""
    lines = []
    found = [*state_dir.glob(f"*/{VOLUMES_DIR}/*/terraform.tfvars.json"),
             *state_dir.glob(f"{SHARED_DIR}/*/terraform.tfvars.json")]
    for path in sorted(found):
        ws = Workspace(path.parent)
        inputs, outputs = ws.saved_inputs(), ws.state_outputs()
        pool, name = inputs.get("pool", ""), inputs.get("name", "")
        where = member_of(outputs)
        try:
            info = asyncio.run(lxd.volume(endpoint, pool, name, target=where, usage=True))
            used = "missing" if info is None else (f"{info.used_bytes / 2**20:.1f}MiB used"
                                                   if info.used_bytes is not None else "use unknown")
        except lxd.LxdUnavailable as e:
            used = f"daemon unreachable ({e})"
        kind = "shared folder" if ws.path.parent.name == SHARED_DIR else "volume"
        lines.append(f"{ws.path}\t{kind} {pool}/{name}\t{where or ''}\t{inputs.get('size') or 'no quota'}\t{used}")
    return lines


def cmd_audit(args, settings) -> int:
    for ws in _workspaces(Path(settings["state_dir"])):
        for record in ws.audit_records():
            if args.user and record.get("user") != args.user:
                continue
            print(json.dumps(record))
    return 0


def _endpoint(settings) -> lxd.Endpoint:
    backend = backends.BACKENDS[settings["backend"]]
    return lxd.Endpoint(url=backends.endpoint_url(backend, settings["lxd_endpoint"]),
                        cert=settings["lxd_cert"] or None, key=settings["lxd_key"] or None,
                        verify=settings["lxd_verify"], timeout=float(settings["lxd_timeout"]), daemon=backend.display)


def cmd_adopt_volume(args, settings) -> int:
    """A user was deleted with delete_storage = False and a new user of the same name is refused
    the kept volume (it may be someone else). The operator, having checked, gives it back: its
    archived workspace returns to its place and the volume's `released` mark goes."""
    volumes = Path(os.path.abspath(settings["state_dir"])) / naming.path_component(args.user) / VOLUMES_DIR
    place = volumes / args.volume
    archived = sorted(volumes.glob(f"{args.volume}.released-*"))
    if not archived:
        print(f"error: no released volume {args.volume!r} of user {args.user!r} under {volumes}", file=sys.stderr)
        return 2
    if place.exists():
        if (place / "terraform.tfstate").exists():
            print(f"error: {place} holds a volume workspace: the volume is this user's already, or another one is "
                  "there", file=sys.stderr)
            return 2
        # What the refused spawn left (its lock and audit record): kept beside, for the record.
        os.rename(place, place.with_name(f"{place.name}.refused-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"))
    ws = Workspace(archived[-1])
    inputs, where = ws.saved_inputs(), member_of(ws.state_outputs())
    try:
        asyncio.run(lxd.patch_volume_config(_endpoint(settings), inputs.get("pool") or "default", args.volume,
                                            where, {RELEASED_KEY: ""}))
    except lxd.LxdUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.rename(ws.path, place)
    asyncio.run(Workspace(place).audit({"operation": "volume-adopt", "user": args.user, "volume": args.volume,
                                        "from": str(ws.path), "outcome": "ok",
                                        "note": "given back to the user of this name by an operator"}))
    print(f"{args.volume}: given back to {args.user} ({ws.path} -> {place}); their next start mounts it")
    return 0


def cmd_orphans(args, settings) -> int:
    endpoint = _endpoint(settings)
    grace = float(settings["orphan_grace_period"])
    env = {"TF_CLI_CONFIG_FILE": settings["terraform_cli_config"]} if settings["terraform_cli_config"] else {}
    runner = TerraformRunner(pick_binary(settings["terraform_path"]), env=env)

    async def go():
        report = await orphans.scan(settings["state_dir"], endpoint, grace)
        found = not report.clean
        if args.destroy and found:
            await orphans.clean(report, endpoint, runner)
            found = not (await orphans.scan(settings["state_dir"], endpoint, grace)).clean
        return report, found

    try:
        report, found = asyncio.run(go())
    except lxd.LxdUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(orphans.as_json(report) if args.json else orphans.render(report))
    return 1 if found else 0


def cmd_doctor(args, spawner) -> int:
    def say(check):
        if not args.json:
            print(check.line(), flush=True)

    try:
        results = asyncio.run(doctor.run(spawner, say))
    except KeyboardInterrupt:  # its throwaway instances and scratch directories are already removed
        print("doctor: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(doctor.as_json(results))
    return 1 if any(r.status == "fail" for r in results) else 0


def _daemon_options(parser) -> None:
    """Overrides of the config file's daemon and Terraform settings."""
    parser.add_argument("--backend", choices=sorted(backends.BACKENDS), help="the daemon: lxd (default) or incus")
    for name in ("lxd-endpoint", "lxd-cert", "lxd-key", "lxd-verify", "terraform-path", "terraform-cli-config"):
        parser.add_argument(f"--{name}", dest=name.replace("-", "_"))


def _global_options(parser, default) -> None:
    parser.add_argument("-f", "--config", default=default,
                        help="read LxdSpawner settings from this jupyterhub_config.py")
    parser.add_argument("--state-dir", dest="state_dir", default=default, help="the spawner's state_dir")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tf-lxd-spawner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(parser, None)
    # The same options after the sub-command (tf-lxd-spawner doctor -f jupyterhub_config.py):
    # SUPPRESS, so a sub-command's absent option never hides one given before it.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser

    def sub_parser(name, **kwargs):
        return add(name, parents=[common], **kwargs)

    sub.add_parser = sub_parser
    sub.add_parser("list", help="one line per workspace (path, instance, member, state, phase, last operation), "
                   "then one per home volume and shared folder (pool/name, member, quota, space used)")
    audit = sub.add_parser("audit", help="every audit record, as JSON lines")
    audit.add_argument("--user", help="only this JupyterHub user")
    orph = sub.add_parser("orphans", help="instances no workspace owns, workspaces whose instance is gone")
    orph.add_argument("--destroy", action="store_true", help="delete orphan instances, clear stale workspaces")
    orph.add_argument("--json", action="store_true", help="print the report as JSON")
    _daemon_options(orph)
    orph.add_argument("--grace", dest="orphan_grace_period", type=float,
                      help=f"leave instances younger than this many seconds alone (default {orphans.DEFAULT_GRACE:g})")
    doc = sub.add_parser("doctor", help="check this host is ready to spawn: one line per check, with the fix")
    doc.add_argument("--json", action="store_true", help="print the checks as JSON")
    _daemon_options(doc)
    adopt = sub.add_parser("adopt-volume", help="give a home volume kept with a deleted user (delete_storage = "
                           "False) back to the new user of the same name")
    adopt.add_argument("--user", required=True, help="the JupyterHub user")
    adopt.add_argument("--volume", required=True, help="the volume's name (the refused spawn's log names it)")
    _daemon_options(adopt)
    home_commands.add_parser(sub, _daemon_options)
    shared_commands.add_parser(sub, _daemon_options)
    args = parser.parse_args(argv)
    try:
        spawner = spawner_from(args)
    except Exception as e:  # a config file that does not load, or a setting the spawner refuses
        print(f"error: {args.config or 'settings'}: {e}", file=sys.stderr)
        return 2
    if args.command == "doctor":
        return cmd_doctor(args, spawner)
    if args.command == "shared":
        return shared_commands.run(args, spawner)
    if args.command == "home":
        return home_commands.run(args, lambda user, server="": spawner_from(args, user, server))
    return {"list": cmd_list, "audit": cmd_audit, "orphans": cmd_orphans,
            "adopt-volume": cmd_adopt_volume}[args.command](args, _settings(spawner))


if __name__ == "__main__":
    sys.exit(main())
