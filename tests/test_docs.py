"""What the docs show can be run: every command names a real subcommand and real flags, and
every environment variable the package reads is documented."""
import re
from pathlib import Path

from nnmnist import cli
from nnmnist.run.command import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def doc_lines():
    for path in DOCS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            yield f"{path.name}:{number}", line


def doc_commands():
    """(where, command) for every line of a fenced block and every `inline code` span."""
    for path in DOCS:
        fenced = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.name}:{number}"
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if fenced or line.startswith("    "):
                yield where, line.strip()
            else:
                for span in re.findall(r"`([^`]+)`", line):
                    yield where, span.strip()


def test_every_variable_the_package_reads_is_documented():
    read = set()
    for path in (REPO / "nnmnist").rglob("*.py"):
        read |= set(re.findall(r'"(NNMNIST_[A-Z_]+)"', path.read_text(encoding="utf-8")))
    assert read, "the search found no variable at all"
    documented = (REPO / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    missing = sorted(v for v in read if f"`{v}`" not in documented)
    assert not missing, f"read by the package but not in docs/CONFIG.md: {missing}"


def test_docs_name_only_real_subcommands():
    bad, seen = [], set()
    for where, line in doc_lines():
        if re.search(r"python -m nnmnist\.\w", line):
            bad.append(f"{where}: module form (use the nnmnist command): {line.strip()}")
    for where, command in doc_commands():
        m = re.match(r"(?:\$ )?(?:\w+=\S+ )*(?:python -m )?nnmnist ([A-Za-z][\w-]*)", command)
        if m:
            seen.add(m.group(1))
            if m.group(1) not in cli.COMMANDS and m.group(1) != "SUBCOMMAND":
                bad.append(f"{where}: unknown subcommand {m.group(1)!r}: {command}")
    assert not bad, "\n".join(bad)
    assert {"sweep", "evaluate", "fetch"} <= seen, "the search found too few commands"


def test_training_commands_in_the_docs_use_real_flags():
    known = {opt for action in build_parser()._actions for opt in action.option_strings}
    bad = []
    for where, line in doc_lines():
        m = re.search(r"(?:python run\.py|nnmnist (?:train|resume))\b(.*)", line)
        if not m:
            continue
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", m.group(1)):
            if flag not in known:
                bad.append(f"{where}: {flag}: {line.strip()}")
    assert not bad, "\n".join(bad)
