"""Preview grids: what a model makes of a few validation images, saved by the trainer every few epochs.

A grid has one row per image and one column per panel that the method's ``preview`` names (a segmenter: image,
ground truth, probability and its extra maps; a generator: mask, generated, real), with the panel names on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from genmedseg.atomic import atomic_write

HEADER_PIXELS = 14
GAP_PIXELS = 2


def preview_grid(panels: Mapping[str, np.ndarray]) -> Image.Image:
    """Compose panels ``{name: (B, C, H, W)}`` in [0, 1] (C 1 or 3; each panel resized to the first one's size)."""
    names = list(panels)
    first = next(iter(panels.values()))
    rows, height, width = first.shape[0], first.shape[-2], first.shape[-1]
    grid = Image.new("RGB", (len(names) * (width + GAP_PIXELS), HEADER_PIXELS + rows * (height + GAP_PIXELS)), "white")
    draw = ImageDraw.Draw(grid)
    for column, name in enumerate(names):
        x = column * (width + GAP_PIXELS)
        draw.text((x + 2, 1), name[: max(1, width // 6)], fill="black")
        for row, values in enumerate(panels[name]):
            pixels = np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
            tile = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
            grid.paste(
                tile.convert("RGB").resize((width, height), Image.NEAREST),
                (x, HEADER_PIXELS + row * (height + GAP_PIXELS)),
            )
    return grid


def write_preview_grid(path: str | Path, panels: Mapping[str, np.ndarray]) -> Path:
    """Write :func:`preview_grid` as a PNG, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = preview_grid(panels)
    atomic_write(path, lambda temporary: image.save(temporary, format="PNG"))
    return path
