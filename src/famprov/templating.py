"""Jinja2 templates: famprov's own, shipped in the package, each replaceable
by a file of the same name in the operator's folder (``FAMPROV_TEMPLATE_FOLDER``).

HTML templates are autoescaped; text templates are not, since they are never
read as markup.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2


@lru_cache(maxsize=8)
def environment(folder: Path | None = None) -> jinja2.Environment:
    """The template environment, looking in ``folder`` before famprov's own."""
    loaders: list[jinja2.BaseLoader] = []
    if folder is not None:
        loaders.append(jinja2.FileSystemLoader(folder))
    loaders.append(jinja2.PackageLoader("famprov", "templates"))
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(["html"], default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
