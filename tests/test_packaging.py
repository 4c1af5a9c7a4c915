"""Packaging stays in step: pyproject <-> conda.yaml, MLproject commands, CI <-> README."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _norm(requirement: str) -> str:
    """Distribution name of a requirement, PEP 503-normalised, without extras or versions.

    Extras are dropped, which is also the conda-forge name: ``dask[array,dataframe]`` -> ``dask``.
    """
    name = re.split(r"[\[<>=!~;\s]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _conda() -> dict:
    return yaml.safe_load((REPO / "conda.yaml").read_text())


def _mlproject() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text())


def test_norm():
    assert _norm("dask[array,dataframe]>=2024.8") == "dask"
    assert _norm("scikit_learn >= 1.4") == "scikit-learn"
    assert _norm("PyYAML") == "pyyaml"
    assert _norm("mlflow") == "mlflow"


def test_conda_lists_the_runtime_dependencies_of_pyproject():
    runtime = {_norm(r) for r in _pyproject()["project"]["dependencies"]}
    conda_deps = _conda()["dependencies"]
    conda = {_norm(d) for d in conda_deps if isinstance(d, str)} - {"python", "pip"}
    assert conda == runtime, (
        f"only in conda.yaml: {conda - runtime}; only in pyproject: {runtime - conda}"
    )


def test_conda_lower_bounds_match_pyproject():
    def bounds(reqs):
        out = {}
        for r in reqs:
            m = re.search(r">=\s*([\w.]+)", r)
            out[_norm(r)] = m.group(1) if m else None
        return out

    py = bounds(_pyproject()["project"]["dependencies"])
    conda = bounds(d for d in _conda()["dependencies"] if isinstance(d, str))
    for name, low in py.items():
        assert conda.get(name) == low, (
            f"{name}: pyproject >= {low}, conda.yaml >= {conda.get(name)}"
        )


def test_conda_installs_the_project_itself():
    pip = [d for d in _conda()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert pip and any(line.replace(" ", "") == "-e." for line in pip[0]["pip"])


def test_mlproject_points_at_conda_env():
    project = _mlproject()
    assert (REPO / project["conda_env"]).is_file()
    assert project["name"] == _conda()["name"]


#: Entry points that are tools rather than lifecycle steps, and the package they live in.
_OUTSIDE_MLPROJECT = {"benchmark": "benchmarks."}


def _entry_points():
    return sorted(_mlproject()["entry_points"].items())


@pytest.mark.parametrize("name, spec", _entry_points(), ids=[n for n, _ in _entry_points()])
def test_entry_point_command_runs_an_existing_module(name, spec):
    argv = shlex.split(spec["command"])
    # Lifecycle commands start with KMEANS_LIFECYCLE_ENTRY_POINT=<name> so the toolkit knows it
    # runs under `mlflow run` (its hints then say -P name=value); it must name this entry point.
    if argv and argv[0].startswith("KMEANS_LIFECYCLE_ENTRY_POINT="):
        assert argv[0] == f"KMEANS_LIFECYCLE_ENTRY_POINT={name}", spec["command"]
        argv = argv[1:]
    assert argv[:2] == ["python", "-m"], spec["command"]
    module = argv[2]
    # Lifecycle entry points live in mlproject/; the benchmark harness is the one exception.
    home = _OUTSIDE_MLPROJECT.get(name, "mlproject.")
    assert module.startswith(home), f"entry point {name!r} runs {module}, expected a {home}* module"
    path = REPO / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"entry point {name!r} runs {module}, but {path} does not exist"
    assert "__main__" in path.read_text(), f"{path} cannot run with python -m"
    # Every {placeholder} in the command is a declared parameter.
    placeholders = set(re.findall(r"{(\w+)}", spec["command"]))
    assert placeholders <= set(spec.get("parameters", {})), placeholders
    for pname, pspec in spec.get("parameters", {}).items():
        assert f"{{{pname}}}" in spec["command"], f"{name}: parameter {pname} is never used"
        assert pspec["type"] in {"string", "float", "path", "uri"}, pspec


def test_required_entry_points_exist():
    assert {"main", "train"} <= set(_mlproject()["entry_points"])


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    readme = REPO / "README.md"
    if not readme.is_file():
        pytest.skip("README.md does not exist yet; nothing to compare .ci/run with")
    text = readme.read_text()
    commands = re.findall(r"python3? -m pytest[^\n`]*", text)
    assert commands, "README.md shows no pytest command"
    ci_lines = {line.strip() for line in ci.splitlines() if not line.strip().startswith("#")}
    for cmd in commands:
        assert cmd.strip() in ci_lines, f"README's test command {cmd!r} is not run by .ci/run"


def test_ci_installs_like_the_readme():
    ci = (REPO / ".ci" / "run").read_text()
    readme = REPO / "README.md"
    if not readme.is_file():
        pytest.skip("README.md does not exist yet")
    if 'pip install -e ".[test]"' not in readme.read_text():
        pytest.skip("README.md shows no editable install with the test extra")
    assert 'pip install -q -e ".[test]"' in ci or 'pip install -e ".[test]"' in ci
