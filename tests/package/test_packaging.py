"""What a published package promises: one version source, the extras users
install, the contributors' dependency groups, and a documentation site that
lists every page (its build itself is .ci/run's: mkdocs build --strict)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

import gapless

ROOT = Path(__file__).resolve().parents[2]


def pyproject() -> dict[str, Any]:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib came with Python 3.11")
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_is_written_in_one_place() -> None:
    assert pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "gapless._version.__version__"
    }
    number = re.compile(rf"(?<![\d.]){re.escape(gapless.__version__)}(?![\d.])")
    texts = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "mkdocs.yml"]
    for folder in ("src", "docs", "tests"):
        texts += (ROOT / folder).rglob("*.py")
        texts += (ROOT / folder).rglob("*.md")
    repeated = [
        str(path.relative_to(ROOT))
        for path in texts
        if path.name != "_version.py" and number.search(path.read_text(errors="replace"))
    ]
    assert repeated == [], f"gapless {gapless.__version__} written again: use gapless.__version__"


def test_users_get_extras_and_contributors_dependency_groups() -> None:
    project = pyproject()
    assert sorted(project["project"]["optional-dependencies"]) == [
        "bench",
        "granian",
        "plot",
        "serve",
    ]
    groups = project["dependency-groups"]
    assert {"include-group": "test"} in groups["dev"]
    assert any(req.startswith("pyyaml") for req in groups["test"])
    assert project["project"]["dependencies"] == [], "the core has no runtime dependency"


def test_httptools_is_marked_as_in_uvicorn_standard() -> None:
    serve = pyproject()["project"]["optional-dependencies"]["serve"]
    httptools = [req for req in serve if req.startswith("httptools")]
    assert httptools == [
        "httptools>=0.6; platform_python_implementation == 'CPython' and sys_platform != 'win32'"
    ]


def test_every_doc_is_a_page_of_the_site() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = {next(iter(entry.values())) for entry in config["nav"]}
    docs = {path.name for path in (ROOT / "docs").glob("*.md")}
    # index.md and changelog.md are the README and CHANGELOG (scripts/mkdocs_hooks.py).
    assert pages == docs | {"index.md", "changelog.md"}
