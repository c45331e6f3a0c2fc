"""README.md and docs/*.md: every relative link points at a file that exists, and every ``#anchor`` at a heading.

The README was split into docs/ by topic; links between them (and to ``benchmarks/results/``) are relative to the
file they are in, so a moved section or a renamed heading breaks them silently unless something checks.
"""

from __future__ import annotations

import pathlib
import re

import pytest

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    found, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.add(slug(line))
    return found


def broken_links(path: pathlib.Path) -> list[str]:
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no such heading")
    return broken


def test_slug_matches_github() -> None:
    assert slug("## Served results equal the bare engine's") == "served-results-equal-the-bare-engines"
    assert slug("### Deploying on Cambricon MLUs (MagicMind)") == "deploying-on-cambricon-mlus-magicmind"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: pathlib.Path) -> None:
    assert broken_links(path) == []


def test_every_doc_is_in_the_readme_index() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in DOCS[1:] if f"](docs/{p.name})" not in readme]
    assert missing == [], f"docs/ files the README does not link: {missing}"


def test_a_broken_link_is_found(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n[ok](#title) [gone](#nope) [file](b.md) [ext](https://x.y/#z)\n")
    assert broken_links(tmp_path / "a.md") == ["#nope: no such heading", "b.md: no such file"]
