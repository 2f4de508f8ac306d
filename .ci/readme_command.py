#!/usr/bin/env python3
"""Print one of the README's marked quick-start commands, so CI runs exactly what a newcomer runs.

    python3 .ci/readme_command.py main [README.md]    # the line after <!-- main-command -->
    python3 .ci/readme_command.py test [README.md]    # the line after <!-- test-command -->

A marker is an HTML comment on its own line, followed (blank lines allowed)
by a fenced code block holding exactly one non-empty line: that line is the
command.  Each marker must appear exactly once.  Any deviation is an error
(exit 2) rather than a guess, so the README and CI cannot drift apart
silently.  Standard library only: runs before anything is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

NAMES = ("main", "test")
_FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)\s*$")


class ReadmeCommandError(ValueError):
    """The README's marked command is missing or malformed."""


def marker(name: str) -> str:
    if name not in NAMES:
        raise ReadmeCommandError(f"unknown command name {name!r}; use one of {', '.join(NAMES)}")
    return f"<!-- {name}-command -->"


def extract(text: str, name: str) -> str:
    """The single command line of the fenced block that follows ``<!-- {name}-command -->``."""
    tag = marker(name)
    lines = text.splitlines()
    where = [i for i, line in enumerate(lines) if line.strip() == tag]
    if len(where) != 1:
        raise ReadmeCommandError(f"README must contain the line {tag} exactly once, found {len(where)}")
    i = where[0] + 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i >= len(lines):
        raise ReadmeCommandError(f"{tag} is not followed by a fenced code block")
    opening = _FENCE.match(lines[i].strip())
    if not opening:
        raise ReadmeCommandError(f"{tag} must be followed by a fenced code block, found {lines[i]!r}")
    fence = opening.group(1)
    body: list[str] = []
    for line in lines[i + 1 :]:
        if line.strip() == fence:
            break
        body.append(line)
    else:
        raise ReadmeCommandError(f"the code block after {tag} is not closed")
    commands = [line.strip() for line in body if line.strip()]
    if len(commands) != 1:
        raise ReadmeCommandError(f"the code block after {tag} must hold exactly one command line, found {len(commands)}")
    command = commands[0]
    if command.startswith("$ "):
        raise ReadmeCommandError(f"the command after {tag} must not carry a '$ ' prompt: {command!r}")
    if command.endswith("\\"):
        raise ReadmeCommandError(f"the command after {tag} must be a single line (no trailing backslash)")
    return command


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] not in NAMES:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        print(f"usage: {Path(sys.argv[0]).name} {{{'|'.join(NAMES)}}} [README.md]", file=sys.stderr)
        return 2
    readme = Path(argv[1]) if len(argv) == 2 else Path(__file__).resolve().parents[1] / "README.md"
    try:
        print(extract(readme.read_text(encoding="utf-8"), argv[0]))
    except (OSError, ReadmeCommandError) as exc:
        print(f"readme_command: {readme}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
