"""The repository points only inside itself: no tracked file cites a design document that is not
in it, and every markdown link and every ``docs/<file>.md#<anchor>`` reference names a file and
a heading that exist."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

#: Documents that were never part of the repository (the project's own are in docs/).
OUTSIDE = re.compile(r"\b(?:MEASUREMENT|PROTOCOLS|DESIGN|PLATFORM)\.md\b|\.\./shared\b")
#: ``[text](target)``; the target is a path, an anchor, or both.
MD_LINK = re.compile(r"\]\(([^()\s]+)\)")
#: A docs page, and its anchor if any, mentioned in any text (a comment, a docstring, a message).
DOCS_REF = re.compile(r"(?<![\w./-])docs/([\w.-]+\.md)(?:#([\w-]+))?")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")


def project_files() -> list[str]:
    """The files git tracks; outside a git checkout (an unpacked source archive), every file
    but caches and build output, which then is all the project there is."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        return listing.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}

        def ours(parts: tuple[str, ...]) -> bool:
            return not any(p in skip or p == "build" or p.endswith(".egg-info") for p in parts)

        return [
            p.relative_to(ROOT).as_posix()
            for p in ROOT.rglob("*")
            if ours(p.relative_to(ROOT).parts)
        ]


def tracked_text_files() -> dict[str, str]:
    """Every project file that is text, by its path relative to the root."""
    texts = {}
    for name in project_files():
        path = ROOT / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            texts[name] = data.decode()
        except UnicodeDecodeError:
            continue
    return texts


def prose_lines(markdown: str) -> list[str]:
    """The lines of a markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"\s", "-", text)


@cache
def anchors(path: Path) -> frozenset[str]:
    """The heading anchors of a markdown file (a repeated heading gets ``-1``, ``-2``, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


def broken(target: Path, anchor: str) -> str | None:
    """Why ``target#anchor`` does not resolve, or ``None`` when it does."""
    if not target.exists():
        return f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} missing"
    if anchor and target.suffix == ".md" and anchor not in anchors(target):
        return f"no heading for #{anchor} in {target.relative_to(ROOT)}"
    return None


def markdown_links(name: str, text: str) -> list[tuple[str, Path, str]]:
    """(link as written, target file, anchor) of every relative link in a markdown file."""
    links = []
    for line in prose_lines(text):
        for target in MD_LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (ROOT / name).parent / path if path else ROOT / name
            links.append((target, file.resolve(), anchor))
    return links


def test_no_file_cites_documents_outside_the_repository() -> None:
    hits = [
        f"{name}:{n}: {line.strip()}"
        for name, text in tracked_text_files().items()
        if name != THIS
        for n, line in enumerate(text.splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, "cite docs/ instead:\n" + "\n".join(hits)


def test_markdown_links_resolve() -> None:
    checked, problems = 0, []
    for name, text in tracked_text_files().items():
        if not name.endswith(".md"):
            continue
        for target, file, anchor in markdown_links(name, text):
            checked += 1
            if (why := broken(file, anchor)) is not None:
                problems.append(f"{name}: ]({target}): {why}")
    assert not problems, "\n".join(problems)
    assert checked > 20  # the docs cross-link a lot: finding none means the pattern broke


def test_docs_references_in_any_file_resolve() -> None:
    checked, problems = 0, []
    for name, text in tracked_text_files().items():
        if name == THIS:  # its examples of broken references
            continue
        for page, anchor in DOCS_REF.findall(text):
            checked += 1
            if (why := broken(ROOT / "docs" / page, anchor)) is not None:
                problems.append(f"{name}: docs/{page}{'#' * bool(anchor)}{anchor}: {why}")
    assert not problems, "\n".join(problems)
    assert checked > 50  # comments and docstrings cite docs/ throughout


def test_github_anchors() -> None:
    assert slug("Latency mode (supplemental)") == "latency-mode-supplemental"
    assert slug("Synthetic inputs: choosing a board's accuracy") == (
        "synthetic-inputs-choosing-a-boards-accuracy"
    )
    assert slug("`farm sim`, the simulators") == "farm-sim-the-simulators"
    assert slug("Top-1") == "top-1"


def test_a_broken_reference_is_reported(tmp_path: Path) -> None:
    page = ROOT / "docs" / "measurement.md"
    assert broken(page, "early-stopping") is None
    assert (
        broken(page, "no-such-heading") == "no heading for #no-such-heading in docs/measurement.md"
    )
    assert broken(ROOT / "docs" / "nowhere.md", "x") == "docs/nowhere.md missing"
    fenced = "# Title\n\n```\n# not a heading\n```\n\n## Title\n"
    (tmp_path / "a.md").write_text(fenced)
    assert anchors(tmp_path / "a.md") == {"title", "title-1"}
    assert OUTSIDE.search("see MEASUREMENT.md §2") and OUTSIDE.search("../shared/datasets")
    assert not OUTSIDE.search("see docs/measurement.md#datasets")
