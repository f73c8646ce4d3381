"""The one way the package writes JSON reports: indented, with a final newline on disk."""

from __future__ import annotations

import json
from pathlib import Path


def dump_json(obj, path: "str | Path | None" = None, *, make_parents: bool = False) -> str:
    """``obj`` as indented JSON text; also written to ``path`` (plus a newline) when one is given.

    ``make_parents`` creates missing parent folders first (for ``--out``-style command-line paths).
    """
    text = json.dumps(obj, indent=2)
    if path is not None:
        path = Path(path)
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return text
