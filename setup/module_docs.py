#!/usr/bin/env python3
"""Writes the inputs and outputs tables of a Terraform module's README from its *.tf files.

The tables sit between `<!-- BEGIN_TF_DOCS -->` and `<!-- END_TF_DOCS -->`; the rest of the README
is prose and stays as written. `--check` changes nothing and exits 1 when the tables are out of
date, so a test can keep them in sync with variables.tf and outputs.tf.

Usage: python setup/module_docs.py [--check] [MODULE_DIR]   (default: terraform/modules/notebook)

Terraform has no docs command and terraform-docs is a Go binary we do not build, so this reads
the few things it needs (top-level `variable` and `output` blocks, their description, type,
default and sensitive attributes) with a small scanner that knows HCL strings, comments and
brackets. Expressions (type, default) are shown as their source text on one line.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODULE = REPO / "terraform" / "modules" / "notebook"
BEGIN = "<!-- BEGIN_TF_DOCS -->"
END = "<!-- END_TF_DOCS -->"
COMMAND = "make module-docs"


class HclError(ValueError):
    """The file uses HCL this scanner does not read; the message says where."""


@dataclass
class Block:
    kind: str  # "variable" or "output"
    name: str
    attrs: dict[str, str]  # attribute name -> expression source text


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


# --- scanning --------------------------------------------------------------------------------

def _skip_string(text: str, i: int) -> int:
    """Index just after the quoted string (template) starting at text[i] == '"'."""
    i += 1
    depth = 0  # inside ${ ... } or %{ ... }, where quotes start nested strings
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if depth == 0 and c == '"':
            return i + 1
        if text.startswith(("$${", "%%{"), i):
            i += 3
            continue
        if text.startswith(("${", "%{"), i):
            depth += 1
            i += 2
            continue
        if depth and c == "{":
            depth += 1
        elif depth and c == "}":
            depth -= 1
        elif depth and c == '"':
            i = _skip_string(text, i)
            continue
        elif c == "\n" and depth == 0:
            raise HclError(f"unterminated string at offset {i}")
        i += 1
    raise HclError("unterminated string at end of file")


def _skip_comment(text: str, i: int) -> int:
    """Index after the comment starting at i, or i itself when there is none."""
    if text.startswith("#", i) or text.startswith("//", i):
        end = text.find("\n", i)
        return len(text) if end < 0 else end
    if text.startswith("/*", i):
        end = text.find("*/", i + 2)
        if end < 0:
            raise HclError("unterminated /* comment")
        return end + 2
    return i


_HEREDOC = re.compile(r"<<-?([A-Za-z_][A-Za-z0-9_]*)\n")


def _skip_heredoc(text: str, i: int) -> int:
    """Index after the heredoc starting at i (<<EOT or <<-EOT ... EOT)."""
    m = _HEREDOC.match(text, i)
    if not m:
        raise HclError(f"unreadable heredoc at offset {i}")
    end = re.compile(rf"^[ \t]*{m.group(1)}[ \t]*$", re.M).search(text, m.end())
    if not end:
        raise HclError(f"heredoc {m.group(1)} is never closed")
    return end.end()


def _matching(text: str, i: int) -> int:
    """Index just after the bracket that closes the one at text[i]."""
    pairs = {"{": "}", "(": ")", "[": "]"}
    stack = [pairs[text[i]]]
    i += 1
    while i < len(text):
        c = text[i]
        j = _skip_comment(text, i)
        if j != i:
            i = j
        elif c == '"':
            i = _skip_string(text, i)
        elif text.startswith("<<", i):
            i = _skip_heredoc(text, i)
        elif c in pairs:
            stack.append(pairs[c])
            i += 1
        elif c in ")]}":
            if c != stack.pop():
                raise HclError(f"unbalanced {c!r} at offset {i}")
            i += 1
            if not stack:
                return i
        else:
            i += 1
    raise HclError("unclosed bracket at end of file")


_WORD = re.compile(r'[A-Za-z_][A-Za-z0-9_-]*|"[^"\\\n]*"')


def _skip_space(text: str, i: int, newlines: bool = True) -> int:
    while i < len(text):
        j = _skip_comment(text, i)
        if j != i:
            i = j
        elif text[i] in " \t\r" or (newlines and text[i] == "\n"):
            i += 1
        else:
            break
    return i


def _body_items(text: str) -> list[tuple[str, list[str], str | None, int]]:
    """Items of a body: (name, labels, attribute expression or None for a block, block start)."""
    items = []
    i = _skip_space(text, 0)
    while i < len(text):
        m = _WORD.match(text, i)
        if not m or m.group().startswith('"'):
            raise HclError(f"expected an attribute or block name at offset {i}: {text[i:i + 30]!r}")
        name = m.group()
        i = _skip_space(text, m.end(), newlines=False)
        if i < len(text) and text[i] == "=" and not text.startswith("==", i):
            start = i = _skip_space(text, i + 1, newlines=False)
            while i < len(text) and text[i] != "\n":
                j = _skip_comment(text, i)
                if j != i:
                    break
                if text[i] == '"':
                    i = _skip_string(text, i)
                elif text[i] in "{([":
                    i = _matching(text, i)
                elif text.startswith("<<", i):
                    i = _skip_heredoc(text, i)
                else:
                    i += 1
            items.append((name, [], text[start:i].strip(), start))
        else:
            labels = []
            while i < len(text) and text[i] != "{":
                lm = _WORD.match(text, i)
                if not lm:
                    raise HclError(f"expected a block label or '{{' after {name!r} at offset {i}")
                labels.append(lm.group().strip('"'))
                i = _skip_space(text, lm.end(), newlines=False)
            if i >= len(text):
                raise HclError(f"block {name!r} has no body")
            end = _matching(text, i)
            items.append((name, labels, None, i))
            i = end
        i = _skip_space(text, i)
    return items


def blocks(text: str) -> list[Block]:
    """The top-level variable and output blocks of one .tf file, in order."""
    found = []
    for kind, labels, expr, start in _body_items(text):
        if expr is not None or kind not in ("variable", "output"):
            continue
        if len(labels) != 1:
            raise HclError(f"{kind} block needs one label, got {labels}")
        body = text[start + 1:_matching(text, start) - 1]
        attrs = {name: e for name, _, e, _ in _body_items(body) if e is not None}
        found.append(Block(kind, labels[0], attrs))
    return found


# --- values ----------------------------------------------------------------------------------

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def string_value(expr: str) -> str:
    """The text of a plain HCL string literal (descriptions); templates are refused."""
    if not (len(expr) >= 2 and expr[0] == expr[-1] == '"'):
        raise HclError(f"expected a quoted string, got {expr!r}")
    out, i, body = [], 0, expr[1:-1]
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1:i + 2]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
            elif nxt in ("u", "U"):
                width = 4 if nxt == "u" else 8
                out.append(chr(int(body[i + 2:i + 2 + width], 16)))
                i += 2 + width
            else:
                raise HclError(f"unknown escape \\{nxt} in {expr!r}")
        elif body.startswith(("$${", "%%{"), i):
            out.append(body[i] + "{")
            i += 3
        elif body.startswith(("${", "%{"), i):
            raise HclError(f"a description must be a plain string, not a template: {expr!r}")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def one_line(expr: str) -> str:
    """An expression's source on one line: line breaks between object attributes or list items
    become ", ", alignment runs of spaces one space, comments go; string literals stay as written."""
    strings: list[str] = []
    code, i = [], 0
    while i < len(expr):
        if expr[i] == '"':
            j = _skip_string(expr, i)
            strings.append(expr[i:j])
            code.append(f"\0{len(strings) - 1}\0")  # a placeholder the rewriting below cannot touch
            i = j
            continue
        j = _skip_comment(expr, i)
        if j != i:
            i = j
            continue
        code.append(" " if expr[i] in " \t\r" else expr[i])
        i += 1
    text = re.sub(r"\s*\n\s*", "\n", "".join(code))
    text = re.sub(r"([{(\[])\n", r"\1", text)
    text = re.sub(r"\n([})\]])", r"\1", text)
    text = re.sub(r",?\n", ", ", text)
    text = re.sub(r",\s*([})\]])", r"\1", text)  # trailing commas
    text = re.sub(r" {2,}", " ", text).strip()
    return re.sub(r"\0(\d+)\0", lambda m: strings[int(m.group(1))], text)


def variables(module: Path) -> list[Variable]:
    out = []
    for tf in sorted(module.glob("*.tf")):
        for b in blocks(tf.read_text(encoding="utf-8")):
            if b.kind == "variable":
                out.append(Variable(
                    name=b.name,
                    description=string_value(b.attrs["description"]) if "description" in b.attrs else "",
                    type=one_line(b.attrs.get("type", "any")),
                    default=one_line(b.attrs["default"]) if "default" in b.attrs else None,
                    sensitive=b.attrs.get("sensitive") == "true",
                ))
    return out


def outputs(module: Path) -> list[Output]:
    out = []
    for tf in sorted(module.glob("*.tf")):
        for b in blocks(tf.read_text(encoding="utf-8")):
            if b.kind == "output":
                description = string_value(b.attrs["description"]) if "description" in b.attrs else ""
                out.append(Output(b.name, description, b.attrs.get("sensitive") == "true"))
    return out


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
        raise HclError(f"the README has no {BEGIN} ... {END} section to fill")
    return readme[:start] + section + readme[end + len(END):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", nargs="?", type=Path, default=DEFAULT_MODULE)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when out of date")
    args = parser.parse_args(argv)
    readme_path = args.module / "README.md"
    try:
        readme = readme_path.read_text(encoding="utf-8")
        new = updated_readme(readme, render(args.module))
    except (HclError, KeyError, OSError) as e:
        print(f"module_docs: {args.module}: {e}", file=sys.stderr)
        return 2
    if new == readme:
        return 0
    if args.check:
        print(f"module_docs: the inputs/outputs tables in {readme_path} are out of date: run `{COMMAND}`"
              f" (python setup/module_docs.py{'' if args.module == DEFAULT_MODULE else f' {args.module}'})",
              file=sys.stderr)
        return 1
    readme_path.write_text(new, encoding="utf-8")
    print(f"module_docs: rewrote the inputs/outputs tables in {readme_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
