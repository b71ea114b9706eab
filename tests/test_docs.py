"""The README and docs/ as a user reads them: every python snippet runs, the commands CI relies on
are the README's, every command is documented, generated blocks are current."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bnwd.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _blocks(path: Path, lang: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```lang fenced block of a markdown file."""
    out, text = [], path.read_text()
    for m in re.finditer(rf"^```{lang}\n(.*?)^```$", text, re.S | re.M):
        out.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


SNIPPETS = [(p, line, code) for p in PAGES for line, code in _blocks(p, "python")]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path,line,code", SNIPPETS, ids=[f"{p.relative_to(ROOT)}:{line}" for p, line, _ in SNIPPETS])
def test_python_snippet_runs(path, line, code, tmp_path, monkeypatch, one_thread):
    """Each snippet as a user would paste it (in a scratch folder, its own namespace)."""
    for mod in re.findall(r"^(?:import|from) (\w+)", code, re.M):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{path.relative_to(ROOT)}:{line}", "exec"), {"__name__": "__main__"})


def test_readme_has_snippets_for_the_library():
    code = "\n".join(c for p, _, c in SNIPPETS if p == README)
    for api in ("bnwd.Monitor", "bnwd.weight_decay_as_lr", "bnwd.find_scale_invariant", "BnwdMonitor"):
        assert api in code, f"the README has no runnable snippet using {api}"


def test_readme_first_commands_are_what_ci_runs():
    """.ci/run installs exactly as the README's first command does and runs its test command."""
    first = _blocks(README, "bash")[0][1]
    commands = [line for line in first.splitlines() if line and not line.startswith("#")]
    install, tests = commands[0], commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    pip = re.search(r"pip install (.*?) &&", install).group(1)
    assert f"pip install -q {pip}\n" in ci, f"README installs with `pip install {pip}`, .ci/run does not"
    assert "bnwd reproduce --preset cpu" in install
    for part in tests.split(" && ")[1:]:  # after `. .venv/bin/activate`
        assert part in ci, f"README's test command runs `{part}`, .ci/run does not"
    assert "pip install torch==2.13.0 -e .  " in README.read_text(), "the quick start's user install line"


def test_readme_is_short_and_documents_every_command():
    text = README.read_text()
    assert len(text.encode()) < 16_000, "the README is a guide: move details to docs/"
    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    for cmd in sub.choices:
        assert f"`bnwd {cmd}" in text, f"`bnwd {cmd}` is not in the README's command table"
    assert "--optimizer sgd\\|adam\\|adamw" in text


def test_docs_links_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_generated_blocks_are_current():
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "update_readme.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_no_text_about_how_the_repository_was_made():
    pat = re.compile(r"\bsession\b|uncommitted|next time|fidelity owner|work period|\bcall[1-4]\b", re.I)
    hits = []
    for base in ("src", "tests", "docs", "benchmarks"):
        for f in (ROOT / base).rglob("*"):
            if f.is_file() and f.suffix in (".py", ".md", ".sh", ".txt") and f != Path(__file__):
                for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                    if pat.search(line) and 'scope="session"' not in line:
                        hits.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
