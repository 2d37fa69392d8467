"""What a person meets before the code: the license, the project URLs, docstring examples that render as code."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def test_license_file_is_the_apache_2_text_the_metadata_names() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert re.match(r"\s*Apache License\s+Version 2\.0, January 2004\s+http://www\.apache\.org/licenses/", text)
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 150


def test_project_urls_and_the_docs_repo_url_agree() -> None:
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert set(urls) >= {"Homepage", "Repository", "Documentation", "Issues"}
    assert all(url.startswith("https://") for url in urls.values())
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    assert re.search(rf"^repo_url: {re.escape(urls['Repository'])}$", mkdocs, re.MULTILINE)


def test_docstring_examples_use_the_section_mkdocstrings_renders_as_code() -> None:
    """Google style: ``Examples:`` turns ``>>>`` lines into code; ``Example:`` is an admonition of plain text."""
    wrong = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.fullmatch(r"\s*Example:\s*", line)
    ]
    assert wrong == [], "write `Examples:` (a section mkdocstrings renders as code)"


def test_every_mutant_snippet_is_still_in_the_source():
    """``make mutants`` refuses a stale list before running anything; catch it in the default run instead."""
    import subprocess

    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "mutants.py"), "--list"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_the_adapter_guides_check_code_is_the_examples() -> None:
    """docs/adapters.md shows examples/check_my_adapter.py's "check" section as plain code (it reads on GitHub,
    where a snippet include does not render); the two stay equal."""
    example = (ROOT / "examples" / "check_my_adapter.py").read_text()
    section = example.split("# --8<-- [start:check]\n")[1].split("# --8<-- [end:check]")[0].rstrip() + "\n"
    guide = (ROOT / "docs" / "adapters.md").read_text()
    assert f"```python\n{section}```" in guide
    assert "--8<--" not in guide
