#!/usr/bin/env python3
"""The Inputs and Outputs tables of the Terraform READMEs match variables.tf and outputs.tf.

Every README of terraform/modules/*/ and terraform/examples/*/ has one format:

    ## Inputs

    | Name | Description | Type | Default | Required |
    |------|-------------|------|---------|:--------:|
    | `name` | the variable's description | `type` | `default`, or n/a | no, or yes |

    ## Outputs

    | Name | Description |
    |------|-------------|
    | `name` | the output's description |

This fails (exit 1, one line per problem) when a table is missing or has another header, lacks
a variable or output, lists one that does not exist, or shows a wrong description, type,
default or required. `--fix` rewrites both tables from the .tf files (rows in their order) and
changes nothing else. Run by scripts/check-terraform.sh with the same python-hcl2 as
scripts/terraform_check.py.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import hcl2

ROOT = Path(__file__).resolve().parent.parent
TF = ROOT / "terraform"

INPUTS_HEADER = ["| Name | Description | Type | Default | Required |", "|------|-------------|------|---------|:--------:|"]
OUTPUTS_HEADER = ["| Name | Description |", "|------|-------------|"]

problems: list[str] = []


def problem(text: str) -> None:
    problems.append(text)


# --- What the .tf files say ----------------------------------------------------------------


def unescape_hcl(text: str) -> str:
    """A quoted HCL string as Terraform reads it (the parser keeps the escapes)."""
    out = re.sub(r'\\(["\\nt])', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text)
    return out.replace("$${", "${").replace("%%{", "%{")


def first(value):
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def type_text(lines: list[str], start: int, end: int) -> str:
    """The `type = ...` expression of the block on lines start..end (1-based), on one line:
    object attributes joined with ", ", spacing collapsed."""
    block = lines[start - 1 : end]
    for i, line in enumerate(block):
        m = re.match(r"\s*type\s*=\s*(.*)$", line)
        if not m:
            continue
        parts = [m.group(1).strip()]
        depth = sum(parts[0].count(c) for c in "({[") - sum(parts[0].count(c) for c in ")}]")
        j = i + 1
        while depth > 0 and j < len(block):
            nxt = block[j].split("#")[0].strip()
            depth += sum(nxt.count(c) for c in "({[") - sum(nxt.count(c) for c in ")}]")
            if nxt:
                prev = parts[-1]
                if prev.endswith(("(", "{", "[")) or nxt.startswith((")", "}", "]")):
                    sep = ""
                elif prev.endswith(","):
                    sep = " "
                else:
                    sep = ", "  # one object attribute per line
                parts.append(sep + nxt)
            j += 1
        return re.sub(r"\s+", " ", "".join(parts)).replace(",)", ")").replace(",}", "}")
    return "any"


def render_default(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(unescape_hcl(value))
    return json.dumps(value)


def variables(directory: Path) -> list[dict]:
    path = directory / "variables.tf"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for block in hcl2.load(path.open()).get("variable", []):
        for name, body in block.items():
            required = "default" not in body
            out.append(
                {
                    "name": name,
                    "description": unescape_hcl(str(first(body.get("description", [""])))),
                    "type": type_text(lines, body["__start_line__"], body["__end_line__"]),
                    "default": "n/a" if required else render_default(first(body["default"])),
                    "required": "yes" if required else "no",
                }
            )
    return out


def outputs(directory: Path) -> list[dict]:
    path = directory / "outputs.tf"
    if not path.exists():
        return []
    out = []
    for block in hcl2.load(path.open()).get("output", []):
        for name, body in block.items():
            out.append({"name": name, "description": unescape_hcl(str(first(body.get("description", [""]))))})
    return out


# --- The README's tables ------------------------------------------------------------------------


def escape_cell(text: str) -> str:
    """Markdown for a table cell: pipes escaped, < and > outside code spans as entities."""
    pieces = re.split(r"(`[^`]*`)", text.replace("|", "\\|"))
    return "".join(p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in pieces)


def unescape_cell(text: str) -> str:
    return text.strip().replace("\\|", "|").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def code(text: str) -> str:
    return f"`{text}`"


def uncode(text: str) -> str:
    text = text.strip()
    return text[1:-1] if len(text) >= 2 and text.startswith("`") and text.endswith("`") else text


def input_rows(vs: list[dict]) -> list[str]:
    return INPUTS_HEADER + [
        f"| {code(v['name'])} | {escape_cell(v['description'])} | {code(v['type'])} | "
        f"{v['default'] if v['default'] == 'n/a' else code(v['default'])} | {v['required']} |"
        for v in vs
    ]


def output_rows(os_: list[dict]) -> list[str]:
    return OUTPUTS_HEADER + [f"| {code(o['name'])} | {escape_cell(o['description'])} |" for o in os_]


def find_table(lines: list[str], heading: str) -> tuple[int, int, int] | None:
    """(heading line, first table line, line after the table) of the table under `heading`;
    the table's start is -1 when the section has none."""
    try:
        h = lines.index(heading)
    except ValueError:
        return None
    i = h + 1
    while i < len(lines) and not lines[i].startswith("|") and not lines[i].startswith("#"):
        i += 1
    if i >= len(lines) or not lines[i].startswith("|"):
        return (h, -1, -1)
    j = i
    while j < len(lines) and lines[j].startswith("|"):
        j += 1
    return (h, i, j)


def cells(line: str) -> list[str]:
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [unescape_cell(c) for c in re.split(r"(?<!\\)\|", inner)]


def check_table(readme: Path, lines: list[str], heading: str, header: list[str], expected: list[dict], columns: list[str]) -> None:
    where = readme.relative_to(ROOT)
    kind = "variable" if heading == "## Inputs" else "output"
    found = find_table(lines, heading)
    if found is None or found[1] < 0:
        problem(f"{where}: no table under `{heading}` (write it with scripts/check_module_docs.py --fix)")
        return
    _, start, end = found
    if lines[start : start + 2] != header:
        problem(f"{where}: the `{heading}` table's header is not `{header[0]}` / `{header[1]}` (the one format: scripts/check_module_docs.py --fix)")
        return
    rows: dict[str, list[str]] = {}
    for n, line in enumerate(lines[start + 2 : end], start + 3):
        row = cells(line)
        if len(row) != len(columns):
            problem(f"{where}:{n}: a `{heading}` row has {len(row)} cells, not {len(columns)}")
            continue
        name = uncode(row[0])
        if name in rows:
            problem(f"{where}:{n}: {kind} `{name}` is listed twice")
        rows[name] = row
    file = "variables.tf" if kind == "variable" else "outputs.tf"
    known = {e["name"] for e in expected}
    for name in rows:
        if name not in known:
            problem(f"{where}: lists {kind} `{name}`, which {readme.parent.relative_to(ROOT)}/{file} does not have")
    for e in expected:
        row = rows.get(e["name"])
        if row is None:
            problem(f"{where}: {kind} `{e['name']}` of {file} is missing from the `{heading}` table")
            continue
        for column, cell in zip(columns, row):
            want = e[column]
            if column in ("name", "type") or (column == "default" and want != "n/a"):
                want = code(want)  # the one format: names, types and defaults as code
            if cell != want:
                problem(f"{where}: {kind} `{e['name']}` shows {column} {cell!r}; {file} says {want!r}")


def replace_table(lines: list[str], heading: str, rows: list[str]) -> list[str]:
    found = find_table(lines, heading)
    if found is None:
        return lines + ["", heading, ""] + rows
    h, start, end = found
    if start < 0:
        return lines[: h + 1] + [""] + rows + lines[h + 1 :]
    return lines[:start] + rows + lines[end:]


def main() -> int:
    fix = "--fix" in sys.argv[1:]
    directories = sorted(p for p in (TF / "modules").iterdir() if p.is_dir()) + sorted(
        p for p in (TF / "examples").iterdir() if p.is_dir()
    )
    for directory in directories:
        readme = directory / "README.md"
        if not readme.exists():
            problem(f"{directory.relative_to(ROOT)} has no README.md")
            continue
        vs, os_ = variables(directory), outputs(directory)
        lines = readme.read_text().splitlines()
        if fix:
            lines = replace_table(lines, "## Inputs", input_rows(vs))
            lines = replace_table(lines, "## Outputs", output_rows(os_))
            readme.write_text("\n".join(lines) + "\n")
        check_table(readme, lines, "## Inputs", INPUTS_HEADER, vs, ["name", "description", "type", "default", "required"])
        check_table(readme, lines, "## Outputs", OUTPUTS_HEADER, os_, ["name", "description"])
        print(f"module docs  {str(directory.relative_to(TF)):<26} {len(vs)} inputs, {len(os_)} outputs")
    for p in problems:
        print(f"FAIL: {p}")
    print("module docs: " + (f"{len(problems)} problem(s)" if problems else "PASS"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
