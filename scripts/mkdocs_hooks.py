"""mkdocs hooks: the README and the CHANGELOG as pages of the reference site.

They live at the repository's root, where GitHub and PyPI show them, outside
mkdocs's ``docs/``; rather than copy them there, they are added as generated
pages and their links rewritten to the site's layout. A link into the source
tree (``../src/...``) points at ``repo_url``, as no page holds it.

The docstrings use Sphinx's roles (``:class:`~gapless.Upgrader```), which
mkdocstrings leaves as text: the rendered pages show the name alone, in code;
and reST's ``Example::`` before a code block loses its second colon.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
# Root file -> its page in the site.
PAGES = {"README.md": "index.md", "CHANGELOG.md": "changelog.md"}
_LINK = re.compile(r"\]\((?!https?://|#)([^)\s]+)\)")
# A role as rendered: :meth:<code>~a.b.c</code> -> <code>c</code>.
_ROLE = re.compile(r":(?:mod|class|meth|func|data|attr|exc|obj):<code>(~?)([^<]*)</code>")


def on_files(files: Files, config: Any) -> Files:
    for source, page in PAGES.items():
        text = (ROOT / source).read_text(encoding="utf-8")
        files.append(File.generated(config, page, content=text))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    at_root = page.file.src_uri in PAGES.values()
    return _LINK.sub(lambda m: f"]({_target(m.group(1), at_root, config)})", markdown)


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    return _ROLE.sub(_role, html).replace("::</p>", ":</p>")


def _role(match: re.Match[str]) -> str:
    name = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
    return f"<code>{name}</code>"


def _target(link: str, at_root: bool, config: Any) -> str:
    """Where ``link`` goes in the site: a page, or the source tree on repo_url."""
    path = link if at_root else f"docs/{link}"
    parts: list[str] = []
    for part in path.split("/"):  # docs/../src/x -> src/x
        if part == ".." and parts:
            parts.pop()
        elif part not in (".", ".."):
            parts.append(part)
    path = "/".join(parts)
    if path in PAGES:
        return PAGES[path]
    if path.startswith("docs/"):
        return path.removeprefix("docs/") if at_root else link
    return f"{config['repo_url'].rstrip('/')}/blob/main/{path}"
