"""The matrix report: ``matrix.json`` (the document of :func:`ascend_conformance.matrix.table.build` with the
host it ran on) and ``matrix.html`` (one self-contained page from ``templates/matrix.html.j2``)."""
from __future__ import annotations

import json
import os

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
CELL_CLASSES = {"pass": "pass", "expected divergence": "xdiv", "expected crash": "xcrash",
                "new divergence": "div", "crash": "crash", "fixed": "fixed", "not in release": "nir",
                "skipped": "skip", "no result": "none"}


def write(document: dict, out_dir: str) -> tuple[str, str]:
    """Write matrix.json and matrix.html into ``out_dir``; return their paths."""
    import jinja2

    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "matrix.json")
    with open(json_path + ".tmp", "w") as f:
        json.dump(document, f, indent=1)
    os.replace(json_path + ".tmp", json_path)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    html = env.get_template("matrix.html.j2").render(doc=document, classes=CELL_CLASSES)
    html_path = os.path.join(out_dir, "matrix.html")
    with open(html_path + ".tmp", "w") as f:
        f.write(html)
    os.replace(html_path + ".tmp", html_path)
    return json_path, html_path


__all__ = ["write", "CELL_CLASSES"]
