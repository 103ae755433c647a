"""What the report's pages and figures share: the palette, matplotlib figures without pyplot, inline PNGs, JSON.

Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas, never through ``pyplot``, so making a
report neither needs a display nor switches the backend of a notebook that calls it. Colours are from the
Okabe-Ito palette, which stays distinguishable with the common colour-vision deficiencies.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from genmedseg.errors import DataError

# Okabe-Ito colours.
BLUE, ORANGE, SKY_BLUE, GREEN, VERMILLION, PURPLE, YELLOW = (
    "#0072B2",
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#F0E442",
)


def new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Any, dpi: int) -> bytes:
    buffer = io.BytesIO()
    # No "Software" text chunk: it holds matplotlib's web address, and the page must not name any.
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def horizontal() -> dict[str, Any]:
    """Keyword of ``Axes.boxplot`` for a horizontal box: ``orientation`` from matplotlib 3.10, ``vert`` before."""
    import matplotlib

    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def png_img(figure: Any, dpi: int, alt: str) -> str:
    from PIL import Image

    png = png_bytes(figure, dpi)
    width, height = Image.open(io.BytesIO(png)).size
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" width="{width}" height="{height}" alt="{html.escape(alt)}">'


def read_json(path: Path, fix: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error}); {fix}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(value).__name__}; {fix}")
    return value
