"""The install path a new user takes: a fresh venv's own pip resolves the pinned environment."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.commands import REPO, run_command


def _pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return {_name(n): v for n, v in (line.split("==") for line in lines if "==" in line)}


def _name(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


@pytest.mark.slow
def test_the_stock_pip_of_a_fresh_venv_resolves_the_pinned_environment(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run_command([sys.executable, "-m", "venv", str(venv)], check=True)  # with the pip its Python bundles
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    # torch first, as `make setup` does, so the resolver never reaches for a CUDA build
    run_command([*pip, "install", "-q", "torch==2.13.0"], check=True)
    report = tmp_path / "report.json"
    run_command([*pip, "install", "--dry-run", "-q", "--report", str(report), "-c", "constraints.txt", "-e",
                 ".[dev,eval]"], check=True)

    resolved = {_name(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert "lxml-html-clean" in resolved  # trafilatura cannot import without it (lxml >= 6)
    pins = _pins()
    assert {n: v for n, v in resolved.items() if n != "gptpipe" and pins.get(n) != v} == {}
    # the project's own editable install draws no warning from the build backend
    built = run_command([*pip, "install", "--no-deps", "-e", "."], check=True)
    assert [line for line in (built.stdout + built.stderr).splitlines() if "Warning" in line or "!!" in line] == []
    # a path entry for the checkout: its packages and top-level modules are found from any directory
    modules = ("curation", "model", "train", "data_contract", "gptpipe")
    found = run_command([str(venv / "bin" / "python"), "-c", "import importlib.util as u, sys; "
                         "print(*(u.find_spec(m).origin for m in sys.argv[1:]), sep=chr(10))", *modules],
                        cwd=tmp_path, check=True)
    assert [Path(origin).relative_to(REPO).parts[0] for origin in found.stdout.split()] == [
        "curation", "model", "train", "data_contract", "gptpipe.py"]
