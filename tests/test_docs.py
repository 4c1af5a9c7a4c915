"""The documentation builds with warnings as errors, and its examples run or say why not.

* ``mkdocs build --strict`` of ``mkdocs.yml`` into a temp dir: a broken link or anchor, a page
  missing from the nav, an API reference entry that no longer resolves, a configuration key
  without a description (``docs/_gen/hooks.py``) each fail it.
* Every ``bash``/``sh``/``shell``/``console``/``python`` fenced block of ``README.md`` and
  ``docs/*.md`` (the generated pages included) is run here, or is preceded by
  ``<!-- not-run: <reason> -->``; a reason that names ``tests/test_*.py`` must name a file that
  exists.  ``<!-- exit: N -->`` before a block expects that exit status instead of 0.
* The Python examples run in this process, in the repository root, against one module store
  in which a small ``blobs`` model has been registered (so ``models:/blobs-kmeans-sklearn@champion``
  exists); the shell examples run under ``bash -e`` there, with the tracking URI pointed at it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = {"bash", "sh", "shell", "console", "python", "py"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n`]*$")
_NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<reason>.*?)\s*-->", re.S)
_EXIT = re.compile(r"<!--\s*exit:\s*(?P<code>\d+)\s*-->")


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason, or None: this test runs it
    exit_code: int = 0

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _hooks():
    spec = importlib.util.spec_from_file_location("_docs_hooks", REPO / "docs" / "_gen" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pages() -> dict[str, str]:
    """``{path: markdown}`` of the README and every docs page, generated pages as the site has them."""
    generated = _hooks().GENERATED
    out = {"README.md": (REPO / "README.md").read_text()}
    for path in sorted((REPO / "docs").glob("*.md")):
        make = generated.get(path.name)
        out[f"docs/{path.name}"] = make() if make else path.read_text()
    return out


def examples(name: str, text: str) -> list[Example]:
    """The fenced blocks of one page, with the marker before each (the nearest non-blank line)."""
    lines = text.splitlines()
    found, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group("indent"), m.group("lang").lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{name}:{i + 1}: a fence that is never closed"
        body = "\n".join(line[len(indent):] for line in lines[i + 1:end]) + "\n"
        # The marker: an HTML comment ending on the nearest non-blank line above (it may span lines).
        last = next((j for j in range(i - 1, -1, -1) if lines[j].strip()), -1)
        comment = ""
        if last >= 0 and lines[last].rstrip().endswith("-->"):
            first = next(j for j in range(last, -1, -1) if "<!--" in lines[j])
            comment = "\n".join(lines[first:last + 1])
        not_run = _NOT_RUN.search(comment)
        code = _EXIT.search(comment)
        if lang in CHECKED:
            found.append(Example(name, i + 1, lang, body, not_run.group("reason") if not_run else None,
                                 int(code.group("code")) if code else 0))
        i = end + 1
    return found


ALL = [ex for name, text in pages().items() for ex in examples(name, text)]
RUN_PY = [ex for ex in ALL if ex.not_run is None and ex.lang in {"python", "py"}]
RUN_SH = [ex for ex in ALL if ex.not_run is None and ex.lang not in {"python", "py"}]


def test_extractor_finds_markers_and_blocks():
    text = ("x\n\n<!-- not-run: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n"
            "  <!-- exit: 2 -->\n  ```python\n  raise SystemExit(2)\n  ```\n```text\nout\n```\n")
    found = examples("t.md", text)
    assert [(e.lang, e.not_run, e.exit_code, e.code) for e in found] == [
        ("bash", "needs a GPU", 0, "nvidia-smi\n"), ("python", None, 2, "raise SystemExit(2)\n")]


def test_every_fence_names_its_language():
    """An unlabelled fence would hide a command from the check below: say ``text`` for output."""
    for name, text in pages().items():
        inside = False
        for number, line in enumerate(text.splitlines(), 1):
            m = _FENCE.match(line)
            if m and not inside:
                assert m.group("lang"), f"{name}:{number}: a fence without a language (bash, python, text, yaml...)"
            inside = inside != bool(m)


def test_every_example_runs_or_says_why_not():
    assert len(ALL) > 30 and RUN_PY and RUN_SH, "the extractor found too few examples"
    for ex in ALL:
        if ex.not_run is not None:
            assert len(ex.not_run) > 10, f"{ex.id}: say why the example is not run"
            for named in re.findall(r"tests/[\w/]+\.py", ex.not_run):
                assert (REPO / named).is_file(), f"{ex.id}: the reason names {named}, which does not exist"


def test_docs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # Not --quiet: it hides warnings from --strict's count, and a broken page would pass.
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0 and not warnings, (
        "mkdocs build --strict failed:\n" + "\n".join(warnings or [proc.stderr[-4000:]]))
    # The generated reference holds every key of the models, a nested one included.
    reference = (tmp_path / "site" / "configuration" / "index.html").read_text()
    for key in ("n_clusters", "max_churn", "reduction_factor", "histogram_bins", "system_metrics"):
        assert f"<code>{key}</code>" in reference, key
    assert "toolkit.config.load_experiment" in (tmp_path / "site" / "api" / "index.html").read_text()


@pytest.fixture(scope="module")
def registered(store):
    """``blobs-kmeans`` and its twin registered once (v1: champion and challenger), on small data."""
    import mlflow

    from toolkit.config import load_experiment
    from toolkit.train import train

    cfg = load_experiment(REPO / "experiments" / "blobs.yaml",
                          ["data.n_samples=2000", "tracking.log_plot=false", "tracking.system_metrics=false",
                           "metrics.silhouette_sample=500"])
    train(cfg, register=True)
    while mlflow.active_run():
        mlflow.end_run()
    return store


@pytest.mark.parametrize("example", RUN_PY, ids=[ex.id for ex in RUN_PY])
def test_python_example_runs(example, registered, monkeypatch):
    import mlflow

    monkeypatch.chdir(REPO)
    namespace = {"__name__": "__docs_example__"}
    try:
        exec(compile(example.code, example.id, "exec"), namespace)
    finally:
        while mlflow.active_run():
            mlflow.end_run()


@pytest.mark.parametrize("example", RUN_SH, ids=[ex.id for ex in RUN_SH])
def test_shell_example_runs(example, registered, tmp_path):
    # The interpreter running the tests first on PATH: the examples' python3/mlflow are this environment's.
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", example.code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == example.exit_code, (
        f"{example.id} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def _slug(heading: str) -> str:
    """GitHub's (and MkDocs' toc) anchor of a Markdown heading."""
    text = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_readme_links_reach_a_file_and_heading():
    """The README is read on GitHub, outside the site's link check: each of its links must land."""
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert any(link.startswith("docs/") for link in links), "the README links no docs page"
    for link in links:
        if re.match(r"\w+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = REPO / target if target else REPO / "README.md"
        assert path.exists(), f"README links {link}: no such file"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"README links {link}: {target or 'README.md'} has no such heading"


def _resolves(dotted: str) -> bool:
    """Whether ``toolkit.a.b`` is a module, or a name that the longest importable module prefix has."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_toolkit_names_in_the_docs_exist():
    """A module or function the prose names (``toolkit.monitoring.drift_report``) still exists there:
    a package reshuffle must carry the docs with it."""
    assert _resolves("toolkit.config.load_experiment") and not _resolves("toolkit.config.no_such_name")
    named = {(m, page) for page, text in pages().items() for m in re.findall(r"\btoolkit(?:\.[A-Za-z_]\w*)+", text)}
    missing = sorted(f"{page}: {name}" for name, page in named if not _resolves(name))
    assert not missing, "the docs name what the toolkit no longer has:\n" + "\n".join(missing)
