#!/usr/bin/env python3
"""Generate docs/API.md and docs/rpool.3 from include/rpool.h.

Every RP_API declaration is listed with the comment block that precedes it,
so the reference can only say what the header says. Sections that have no
home in the header (TUNING, ENVIRONMENT, DIAGNOSTIC MESSAGES) come from
docs/api-extra.md. `--check` exits 1 when the generated files are stale.
"""
import re
import sys
from pathlib import Path

top = Path(__file__).resolve().parent.parent
header = (top / "include/rpool.h").read_text()
extra = (top / "docs/api-extra.md").read_text()


def decls(text):
    """Yield (section, comment, declaration) for each RP_API declaration."""
    section = "General"
    comment = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"/\* (\S.*\S) +\*/$", line.strip())
        if m and not line.startswith(" ") and lines[i - 1].startswith("/* ---"):
            section = m.group(1).rstrip(".")
            i += 1
            continue
        if line.startswith("/*") and not line.startswith("/* ---"):
            block = [line]
            while "*/" not in lines[i]:
                i += 1
                block.append(lines[i])
            comment = block
            i += 1
            continue
        if line.startswith("RP_API"):
            decl = [line]
            while not decl[-1].rstrip().endswith(";"):
                i += 1
                decl.append(lines[i])
            text_c = "\n".join(re.sub(r"^\s*/?\*+/?\s?", "", c).rstrip() for c in comment)
            text_c = text_c.replace("*/", "").strip()
            yield section, text_c, " ".join(d.strip() for d in decl).replace("RP_API ", "")
            comment = []
        elif line.strip() == "":
            pass
        else:
            comment = [] if not line.startswith(" ") else comment
        i += 1


def sync_table(text):
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if "Synchronization table" in l)
    body = []
    for l in lines[start + 1:]:
        if l.strip() == "*/":
            break
        body.append(l[3:])
    return "\n".join(body).strip("\n")


def markdown():
    out = ["# rpool API reference", "",
           "Generated from `include/rpool.h` by `tools/gen_api.py`; do not edit.", "",
           "## Thread-safety", "", "```", sync_table(header), "```", ""]
    cur = None
    for sec, com, decl in decls(header):
        if sec != cur:
            out += ["## " + sec, ""]
            cur = sec
        name = re.search(r"(\w+)\s*\(", decl).group(1)
        out += ["### `%s`" % name, "", "```c", decl, "```", "", com, ""]
    return "\n".join(out) + "\n" + extra


def roff_escape(s):
    return s.replace("\\", "\\\\").replace("-", "\\-").replace("\n.", "\n\\&.")


def manpage():
    out = ['.TH RPOOL 3 "" "rpool" "Library Functions Manual"',
           ".SH NAME", "rpool \\- region pool allocator with hard memory budgets",
           ".SH SYNOPSIS", ".nf", "#include <rpool.h>", ".sp"]
    items = list(decls(header))
    for _, _, decl in items:
        out.append(roff_escape(decl))
    out += [".fi", ".SH DESCRIPTION",
            roff_escape("Each function's contract: what it does, thread-safety, ownership, "
                        "failure conditions and cost."),
            ".SS Thread-safety", ".nf", roff_escape(sync_table(header)), ".fi"]
    for _, com, decl in items:
        name = re.search(r"(\w+)\s*\(", decl).group(1)
        out += [".TP", "\\fB%s\\fP" % roff_escape(name), roff_escape(com or "(see header)")]
    for part in re.split(r"^## ", extra, flags=re.M)[1:]:
        title, _, body = part.partition("\n")
        out += [".SH " + title.strip().upper(), ".nf", roff_escape(body.strip()), ".fi"]
    out += [".SH SEE ALSO", "docs/DESIGN.md, README.md"]
    return "\n".join(out) + "\n"


def main():
    targets = {top / "docs/API.md": markdown(), top / "docs/rpool.3": manpage()}
    stale = [p for p, t in targets.items() if not p.exists() or p.read_text() != t]
    if "--check" in sys.argv:
        for p in stale:
            print("stale: %s (run tools/gen_api.py)" % p.relative_to(top))
        n = sum(1 for _ in decls(header))
        print("%d documented functions" % n)
        sys.exit(1 if stale else 0)
    for p, t in targets.items():
        p.write_text(t)


main()
