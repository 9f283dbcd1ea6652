"""Every ``perceptlab ...`` and ``make ...`` line of the README and docs/ parses, and every
repository path it names exists: Lightning commands with ``--print_config``, the others in
parse-only mode (``PERCEPTLAB_PARSE_ONLY=1``), make targets with ``make -n``."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from perceptlab.commands.cli import LIGHTNING_COMMANDS, main

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "design.md")]
TOP = ("experiments/", "benchmarks/", "docs/", "core/", "callbacks/", "commands/", "datamodules/",
       "lightning_modules/", "tests/", "perceptlab/", "tools/", "requirements/")
PLACEHOLDER = re.compile(r"(^|[\s=/])(RUN_DIR|MODEL|CKPT|DIR|PATH|SUITE\.yaml|N|NAME)([\s.,\]/]|$)|\\\||\.\.\.|<[a-z_.]+>")


def commands() -> list[tuple[str, str]]:
    """(source, command) for each perceptlab / make line: fenced blocks (continuations joined,
    comments dropped, a leading ``$`` removed) and inline code without placeholders."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = re.sub(r"\s+#\s.*$", "", line).strip().removeprefix("$ ").strip()
                if re.match(r"(perceptlab|make)\s", line + " "):
                    out.append((doc.name, line))
        for inline in re.findall(r"`((?:perceptlab|make) [^`]+)`", text):
            if not PLACEHOLDER.search(inline) and len(inline.split()) > 2:  # not a bare command name
                out.append((doc.name, inline))
    return sorted(set(out))


COMMANDS = commands()


def test_the_docs_name_commands():
    assert len(COMMANDS) > 15 and any(c.startswith("make demo") for _, c in COMMANDS)


@pytest.mark.parametrize("source,command", COMMANDS, ids=[f"{s}:{c[:60]}" for s, c in COMMANDS])
def test_a_documented_command_parses_and_its_paths_exist(source, command, monkeypatch, capsys):
    words = shlex.split(command)
    for word in words:
        for part in re.split(r"[=,]", word):
            if part.startswith(TOP):
                path = REPO / part.split("*")[0].split("{")[0]
                assert path.exists() or path.parent.is_dir() and "*" in part, f"{source}: {command}: {part} not found"
    monkeypatch.chdir(REPO)
    if words[0] == "make":
        proc = subprocess.run(["make", "-n", *words[1:]], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, f"{source}: {command}: {proc.stderr}"
        return
    monkeypatch.setenv("PERCEPTLAB_PARSE_ONLY", "1")
    args = words[1:] + (["--print_config"] if words[1] in LIGHTNING_COMMANDS else [])
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), f"{source}: {command}: {capsys.readouterr().err[-800:]}"
