"""Operator commands: read the workspaces under a state_dir (the audit record of every server)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .workspace import Workspace


def _workspaces(state_dir: Path):
    for audit in sorted(state_dir.glob("*/*/audit.jsonl")):
        yield Workspace(audit.parent)


def cmd_list(args) -> int:
    for ws in _workspaces(Path(args.state_dir)):
        records = ws.audit_records()
        last = records[-1] if records else {}
        live = "live" if ws.state_resources() else "empty"
        print(f"{ws.path}\t{last.get('instance', '')}\t{last.get('member', '')}\t{live}\t"
              f"{last.get('operation', '')}:{last.get('outcome', '')}\t{last.get('time', '')}")
    return 0


def cmd_audit(args) -> int:
    for ws in _workspaces(Path(args.state_dir)):
        for record in ws.audit_records():
            if args.user and record.get("user") != args.user:
                continue
            print(json.dumps(record))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tf-lxd-spawner", description=__doc__)
    parser.add_argument("--state-dir", default="tf-lxd-spawner-state", help="the spawner's state_dir")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="one line per workspace: path, instance, member, state, last operation")
    audit = sub.add_parser("audit", help="every audit record, as JSON lines")
    audit.add_argument("--user", help="only this JupyterHub user")
    args = parser.parse_args(argv)
    return {"list": cmd_list, "audit": cmd_audit}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
