#!/usr/bin/env python3
"""Writes the inputs and outputs tables of a Terraform module's README from its *.tf files.

The tables sit between `<!-- BEGIN_TF_DOCS -->` and `<!-- END_TF_DOCS -->`; the rest of the README
is prose and stays as written. `--check` changes nothing and exits 1 when the tables are out of
date, so a test can keep them in sync with variables.tf and outputs.tf.

Usage: python setup/module_docs.py [--check] [MODULE_DIR ...]
       (default: every module the repository ships: terraform/modules/notebook and .../storage)

The module is read by HashiCorp's terraform-config-inspect (the library terraform-docs is built
on; setup/go-tools.sh builds it into .cache/bin), which parses HCL as Terraform does: this
script only lays its JSON out as tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODULES = [REPO / "terraform" / "modules" / name for name in ("notebook", "storage")]
INSPECT = "terraform-config-inspect"
BEGIN = "<!-- BEGIN_TF_DOCS -->"
END = "<!-- END_TF_DOCS -->"
COMMAND = "make module-docs"


class ModuleError(ValueError):
    """The module (or its README) cannot be read; the message says why."""


@dataclass
class Variable:
    name: str
    description: str
    type: str
    default: str | None  # None: no default, so the input is required
    sensitive: bool


@dataclass
class Output:
    name: str
    description: str
    sensitive: bool


def inspect_binary() -> str:
    """$TF_CONFIG_INSPECT, the one setup built, or one on PATH."""
    for candidate in (os.environ.get("TF_CONFIG_INSPECT"), str(REPO / ".cache" / "bin" / INSPECT), shutil.which(INSPECT)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ModuleError(f"{INSPECT} was not found: `make setup` builds it into .cache/bin")


def inspect(module: Path) -> dict:
    """The module as terraform-config-inspect reads it; refused when the HCL has errors."""
    out = subprocess.run([inspect_binary(), "--json", str(module)], capture_output=True, text=True)
    try:
        found = json.loads(out.stdout)
    except ValueError:
        raise ModuleError(f"{INSPECT} failed: {out.stderr.strip() or out.stdout.strip()}") from None
    errors = [d for d in found.get("diagnostics") or [] if d.get("severity") == "error"]
    if errors:
        where = errors[0].get("pos") or {}
        raise ModuleError(f"{Path(where.get('filename', '?')).name}:{where.get('line', '?')}: "
                          + "; ".join(sorted({f"{d['summary']}: {d['detail']}" for d in errors})))
    return found


def _in_file_order(items: dict) -> list[dict]:
    return sorted(items.values(), key=lambda i: ((i.get("pos") or {}).get("filename", ""),
                                                 (i.get("pos") or {}).get("line", 0)))


def _uncommented(line: str) -> str:
    """The line without a trailing `#` or `//` comment (one inside a quoted string stays)."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"' and (i == 0 or line[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and (ch == "#" or line.startswith("//", i)):
            return line[:i]
    return line


def _one_line(text: str) -> str:
    """A type expression on one line, as a table cell needs it: an object's attributes, one per
    line in the source, become comma-separated."""
    out = ""
    for line in (_uncommented(part).strip() for part in text.splitlines()):
        if not line:
            continue
        if out and not out.endswith(("{", "(", "[", ",")) and not line.startswith(("}", ")", "]")):
            out += ", "
        out += line
    return " ".join(out.split())


def variables(module: Path) -> list[Variable]:
    return [Variable(v["name"], v.get("description", ""), _one_line(v.get("type") or "any"),
                     None if v.get("required") else json.dumps(v.get("default")), bool(v.get("sensitive")))
            for v in _in_file_order(inspect(module)["variables"])]


def outputs(module: Path) -> list[Output]:
    return [Output(o["name"], o.get("description", ""), bool(o.get("sensitive")))
            for o in _in_file_order(inspect(module)["outputs"])]


# --- rendering -------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def _prose(text: str) -> str:
    """A description in a table cell: "<key>" would be read as an HTML tag and vanish."""
    return _cell(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{_cell(text)}{pad}{fence}"


def _described(description: str, sensitive: bool) -> str:
    return " ".join(filter(None, [description, "(sensitive)" if sensitive else ""]))


def render(module: Path) -> str:
    """The generated section, markers included."""
    lines = [
        BEGIN,
        f"<!-- Generated from the module's variables and outputs by setup/module_docs.py: run `{COMMAND}`"
        " after changing them; edits here are overwritten. -->",
        "## Inputs",
        "",
        "| Name | Description | Type | Default | Required |",
        "|---|---|---|---|:---:|",
    ]
    for v in variables(module):
        description = _described(v.description, v.sensitive)
        default = "n/a" if v.default is None else _code(v.default)
        required = "yes" if v.default is None else "no"
        lines.append(f"| {_code(v.name)} | {_prose(description)} | {_code(v.type)} | {default} | {required} |")
    lines += ["", "## Outputs", "", "| Name | Description |", "|---|---|"]
    for o in outputs(module):
        description = _described(o.description, o.sensitive)
        lines.append(f"| {_code(o.name)} | {_prose(description)} |")
    lines.append(END)
    return "\n".join(lines)


def updated_readme(readme: str, section: str) -> str:
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ModuleError(f"the README has no {BEGIN} ... {END} section to fill")
    return readme[:start] + section + readme[end + len(END):]


def update(module: Path, check: bool) -> int:
    """0: the tables are up to date (or now rewritten); 1: out of date under --check; 2: unreadable."""
    readme_path = module / "README.md"
    try:
        readme = readme_path.read_text(encoding="utf-8")
        new = updated_readme(readme, render(module))
    except (ModuleError, OSError) as e:
        print(f"module_docs: {module}: {e}", file=sys.stderr)
        return 2
    if new == readme:
        return 0
    if check:
        print(f"module_docs: the inputs/outputs tables in {readme_path} are out of date: run `{COMMAND}`"
              f" (python setup/module_docs.py{'' if module in DEFAULT_MODULES else f' {module}'})",
              file=sys.stderr)
        return 1
    readme_path.write_text(new, encoding="utf-8")
    print(f"module_docs: rewrote the inputs/outputs tables in {readme_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", type=Path, metavar="MODULE_DIR",
                        help="module directories (default: every module the repository ships)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when out of date")
    args = parser.parse_args(argv)
    # Every module is looked at, so one run names every README that is out of date.
    return max(update(m, args.check) for m in args.modules or DEFAULT_MODULES)


if __name__ == "__main__":
    sys.exit(main())
