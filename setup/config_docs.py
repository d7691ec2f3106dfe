#!/usr/bin/env python3
"""Writes the configuration table of README.md from the help of LxdSpawner's settings.

The table sits between `<!-- BEGIN_CONFIG_DOCS -->` and `<!-- END_CONFIG_DOCS -->`; the rest of
the README (the prose before the table included) stays as written. `--check` changes nothing and
exits 1 when the table is out of date, so a test can keep it in sync with the settings.

Usage: python setup/config_docs.py [--check] [README]
       (default: the repository's README.md; run it with the venv's python, which has the package)

The one source is tf_lxd_spawner/settings.py: every option of LxdSpawner beyond JupyterHub's
Spawner's is a config trait of LxdSpawnerSettings, and its help is the option's documentation.
One row per trait, in the order settings.py defines them (so its grouping stays: seed-compatible,
storage, Terraform, LXD); the default is the trait's value as Python code, or, for a default
computed when the spawner runs (an @default method), the words of DYNAMIC_DEFAULTS.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # a source checkout's package, also when it is not installed

from traitlets import TraitType  # noqa: E402

from tf_lxd_spawner.settings import LxdSpawnerSettings  # noqa: E402

README = REPO / "README.md"
BEGIN = "<!-- BEGIN_CONFIG_DOCS -->"
END = "<!-- END_CONFIG_DOCS -->"
COMMAND = "make config-docs"

#: The default column of the traits whose default is computed when the spawner runs (an
#: @default method): said in words, since the trait's static default_value means nothing there.
DYNAMIC_DEFAULTS = {
    "mount_idmap": 'the backend\'s: `"shift"` on Incus, `"raw.idmap"` on LXD',
    "module_source": "the `notebook` module shipped with the package",
    "storage_module_source": "the `storage` module shipped with the package",
}


class DocsError(ValueError):
    """The settings (or the README) cannot be laid out; the message says why."""


def config_traits(cls: type = LxdSpawnerSettings) -> list[tuple[str, TraitType]]:
    """The class's own config traits, in definition order (the class __dict__ keeps it;
    class_own_traits does not)."""
    return [(name, value) for name, value in vars(cls).items()
            if isinstance(value, TraitType) and value.metadata.get("config")]


def python_code(value) -> str:
    """A default as Python code: strings in double quotes, containers spelt out."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(python_code(v) for v in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(python_code(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{python_code(k)}: {python_code(v)}" for k, v in value.items()) + "}"
    return repr(value)


def default_text(cls: type, name: str, trait: TraitType) -> str:
    """The default column: the value in backticks, or DYNAMIC_DEFAULTS' words."""
    dynamic = name in getattr(cls, "_trait_default_generators", {}) or hasattr(cls, f"_{name}_default")
    if dynamic:
        if name not in DYNAMIC_DEFAULTS:
            raise DocsError(f"{name}'s default is computed (an @default method): say what it is in "
                            "DYNAMIC_DEFAULTS of setup/config_docs.py")
        return DYNAMIC_DEFAULTS[name]
    return _code(python_code(trait.default()))


# --- rendering -------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{_cell(text)}{pad}{fence}"


def _prose(text: str) -> str:
    """A help text in a table cell: on one line, `|` escaped, and outside `code` spans "<key>"
    written as entities (it would be read as an HTML tag and vanish; inside a code span an
    entity would show as it is written)."""
    parts = " ".join(text.split()).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans at all
        parts = ["`".join(parts)]
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _cell("`".join(parts))


def render(cls: type = LxdSpawnerSettings) -> str:
    """The generated section, markers included."""
    lines = [
        BEGIN,
        "<!-- Generated from the help of the traits in tf_lxd_spawner/settings.py by setup/config_docs.py:"
        f" run `{COMMAND}` after changing them; edits here are overwritten. -->",
        "",
        "| option | default | what it does |",
        "|---|---|---|",
    ]
    traits = config_traits(cls)
    if not traits:
        raise DocsError(f"{cls.__name__} has no config traits")
    for name, trait in traits:
        help_text = trait.help.strip()
        if not help_text:
            raise DocsError(f"{name} has no help: write what it does in settings.py")
        lines.append(f"| `{name}` | {default_text(cls, name, trait)} | {_prose(help_text)} |")
    lines.append(END)
    return "\n".join(lines)


def updated_readme(readme: str, section: str) -> str:
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise DocsError(f"the README has no {BEGIN} ... {END} section to fill")
    return readme[:start] + section + readme[end + len(END):]


def update(readme_path: Path, check: bool) -> int:
    """0: the table is up to date (or now rewritten); 1: out of date under --check; 2: unreadable."""
    try:
        readme = readme_path.read_text(encoding="utf-8")
        new = updated_readme(readme, render())
    except (DocsError, OSError) as e:
        print(f"config_docs: {readme_path}: {e}", file=sys.stderr)
        return 2
    if new == readme:
        return 0
    if check:
        print(f"config_docs: the configuration table in {readme_path} is out of date: run `{COMMAND}`"
              f" (python setup/config_docs.py{'' if readme_path == README else f' {readme_path}'})",
              file=sys.stderr)
        return 1
    readme_path.write_text(new, encoding="utf-8")
    print(f"config_docs: rewrote the configuration table in {readme_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("readme", nargs="?", type=Path, default=README, metavar="README",
                        help="the README to update (default: the repository's README.md)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when out of date")
    args = parser.parse_args(argv)
    return update(args.readme, args.check)


if __name__ == "__main__":
    sys.exit(main())
