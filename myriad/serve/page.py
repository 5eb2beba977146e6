"""The web page: static HTML, JavaScript and CSS of this package, served by FastAPI at ``/ui/``.

The page is a thin client of the REST API (:mod:`myriad.serve.app`): people upload normal
references and a test image, pick an expert, and see the heat-map overlay beside the image
with the findings measured on the map under it (region, extent, count, severity), Myriad's answer, and a chat for follow-up questions. Every byte it sends goes through the same
endpoints, limits and checks as any other client; there is no second server-side code path and
the server never reads a file on the page's behalf. Each browser tab is its own client (a random
``X-Myriad-Client`` id), with its own profile and sessions.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

__all__ = ["ELEMENT_IDS", "STATIC_FILES", "mount_page", "static_dir"]

#: Element ids the end-to-end test (and any user script) can rely on.
ELEMENT_IDS = ("expert", "normal-files", "expert-config", "question", "inspect-button", "test-image", "overlay",
               "answer", "chat", "follow-up", "ask-button", "error", "token", "findings")
#: The files of the page.
STATIC_FILES = ("index.html", "app.js", "style.css")


def static_dir() -> Path:
    """The folder of the page's files inside the installed package."""
    return Path(str(files("myriad.serve") / "static"))


def mount_page(app: "FastAPI", path: str = "/ui") -> None:
    """Serve the page's files at ``path`` (``path`` itself redirects to ``path/``); nothing else under it."""
    from fastapi.responses import RedirectResponse
    from fastapi.staticfiles import StaticFiles

    @app.get(path, include_in_schema=False)
    def _page_root() -> RedirectResponse:
        return RedirectResponse(f"{path}/")

    app.mount(f"{path}/", StaticFiles(directory=static_dir(), html=True, follow_symlink=False), name="ui")
