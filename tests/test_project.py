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


def _module_imports() -> dict[str, set[str]]:
    """Per module of src/: the project modules it imports at module level (TYPE_CHECKING blocks included, since a
    reader follows them too; imports inside functions are the lazy optional ones and are left out)."""
    import ast

    src = ROOT / "src"
    paths = {p: ".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__") for p in src.rglob("*.py")}
    modules = set(paths.values())
    graph: dict[str, set[str]] = {}
    for path, name in paths.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            for statement in node.body if isinstance(node, ast.If) else [node]:
                if isinstance(statement, ast.Import):
                    edges |= {alias.name for alias in statement.names if alias.name in modules}
                elif isinstance(statement, ast.ImportFrom):
                    base = package[: len(package) - statement.level + 1] if statement.level else []
                    target = ".".join([*base, *([statement.module] if statement.module else [])])
                    for alias in statement.names:
                        sub = f"{target}.{alias.name}"
                        edges |= {sub} if sub in modules else ({target} if target in modules else set())
        graph[name] = edges - {name}
    return graph


def test_no_import_circles() -> None:
    """No module of src/ reaches itself through module-level imports (vlm.py and attach.py once imported each other)."""
    graph = _module_imports()
    assert {"hero_adapters.attach", "hero_adapters.adapter"} <= graph["hero_adapters.vlm"]  # the walk sees imports

    def reaches(start: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module == start:
                return True
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
        return False

    assert sorted(module for module in graph if reaches(module)) == []


def test_source_modules_are_rooms_of_a_readable_size() -> None:
    """No module of src/ over 600 lines unless its opening docstring says why it is one cohesive thing."""
    long = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in (ROOT / "src").rglob("*.py")
        if len(path.read_text().splitlines()) > 600 and "One cohesive thing" not in path.read_text()[:3000]
    }
    assert long == {}
