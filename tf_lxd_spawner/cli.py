"""Operator commands over a state_dir (the audit record of every server) and LXD.

    tf-lxd-spawner list     [--state-dir D | -f jupyterhub_config.py]
    tf-lxd-spawner audit    [--user U] ...
    tf-lxd-spawner orphans  [--destroy] [--json] ...   exit 0: none found (or all cleaned), 1: found
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from . import backends, lxd, orphans
from .terraform import TerraformRunner, pick_binary
from .workspace import StateUnreadable, Workspace

SETTINGS = ("state_dir", "backend", "lxd_endpoint", "lxd_cert", "lxd_key", "lxd_verify", "terraform_path",
            "terraform_cli_config", "orphan_grace_period", "lxd_timeout")


def _hub_settings(path: str | None) -> dict:
    """The LxdSpawner settings of a jupyterhub_config.py (only plain values are read)."""
    if not path:
        return {}
    from traitlets.config.loader import PyFileConfigLoader

    cfg = PyFileConfigLoader(os.path.basename(path), os.path.dirname(os.path.abspath(path))).load_config()
    section = cfg.get("LxdSpawner", {})
    return {k: section[k] for k in SETTINGS if k in section}


def _settings(args) -> dict:
    settings = {"state_dir": "tf-lxd-spawner-state", "backend": "lxd", "lxd_endpoint": "", "lxd_cert": "",
                "lxd_key": "", "lxd_verify": True, "terraform_path": "", "terraform_cli_config": "",
                "orphan_grace_period": orphans.DEFAULT_GRACE, "lxd_timeout": 60.0}
    settings.update(_hub_settings(args.config))
    for key in SETTINGS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if isinstance(settings["lxd_verify"], str) and settings["lxd_verify"].lower() in ("true", "false"):
        settings["lxd_verify"] = settings["lxd_verify"].lower() == "true"
    return settings


def _workspaces(state_dir: Path):
    for audit in sorted(state_dir.glob("*/*/audit.jsonl")):
        yield Workspace(audit.parent)


def cmd_list(args, settings) -> int:
    for ws in _workspaces(Path(settings["state_dir"])):
        records = ws.audit_records()
        last = records[-1] if records else {}
        try:
            live = "live" if ws.state_resources() else "empty"
        except StateUnreadable:
            live = "unreadable-state"
        print(f"{ws.path}\t{last.get('instance', '')}\t{last.get('member', '')}\t{live}\t"
              f"{last.get('operation', '')}:{last.get('outcome', '')}\t{last.get('time', '')}")
    return 0


def cmd_audit(args, settings) -> int:
    for ws in _workspaces(Path(settings["state_dir"])):
        for record in ws.audit_records():
            if args.user and record.get("user") != args.user:
                continue
            print(json.dumps(record))
    return 0


def cmd_orphans(args, settings) -> int:
    backend = backends.BACKENDS[settings["backend"]]
    endpoint = lxd.Endpoint(url=backends.endpoint_url(backend, settings["lxd_endpoint"]),
                            cert=settings["lxd_cert"] or None, key=settings["lxd_key"] or None,
                            verify=settings["lxd_verify"],
                            timeout=float(settings["lxd_timeout"]), daemon=backend.display)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tf-lxd-spawner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", "--config", help="read LxdSpawner settings from this jupyterhub_config.py")
    parser.add_argument("--state-dir", dest="state_dir", help="the spawner's state_dir")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="one line per workspace: path, instance, member, state, last operation")
    audit = sub.add_parser("audit", help="every audit record, as JSON lines")
    audit.add_argument("--user", help="only this JupyterHub user")
    orph = sub.add_parser("orphans", help="instances no workspace owns, workspaces whose instance is gone")
    orph.add_argument("--destroy", action="store_true", help="delete orphan instances, clear stale workspaces")
    orph.add_argument("--json", action="store_true", help="print the report as JSON")
    orph.add_argument("--backend", choices=sorted(backends.BACKENDS), help="the daemon: lxd (default) or incus")
    for name in ("lxd-endpoint", "lxd-cert", "lxd-key", "lxd-verify", "terraform-path", "terraform-cli-config"):
        orph.add_argument(f"--{name}", dest=name.replace("-", "_"))
    orph.add_argument("--grace", dest="orphan_grace_period", type=float,
                      help=f"leave instances younger than this many seconds alone (default {orphans.DEFAULT_GRACE:g})")
    args = parser.parse_args(argv)
    settings = _settings(args)
    return {"list": cmd_list, "audit": cmd_audit, "orphans": cmd_orphans}[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
