"""The evaluation report: ``report.html`` for a folder written by ``genmedseg evaluate``.

One self-contained page (images inline as base64 PNG, CSS inline, no external address) with the summary (and the
prompts and sampling that produced it), the distributions of Dice, IoU and HD95, Dice against lesion size, overlays
of the worst, median and best cases with every extra map of the predictions (e.g. uncertainty) beside the
probability map, and the per-image metrics table, each row with an anchor that the case figures link to.
"""

from __future__ import annotations

import csv
import html
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from genmedseg.atomic import atomic_write
from genmedseg.data import discover, read_image, read_mask, read_probability_png
from genmedseg.errors import ConfigError, DataError
from genmedseg.folders import EvaluationFolder
from genmedseg.metrics import METRIC_NAMES
from genmedseg.report.common import BLUE, ORANGE, SKY_BLUE, VERMILLION, horizontal, new_figure, png_img, read_json

GROUND_TRUTH_STYLE = {"colors": SKY_BLUE, "linestyles": "solid"}
PREDICTION_STYLE = {"colors": ORANGE, "linestyles": "dashed"}
_METRIC_LABELS = {"dice": "Dice", "iou": "IoU", "hd95": "HD95 (px)"}


@dataclass(frozen=True)
class _Case:
    """One row of ``metrics.csv``."""

    name: str
    dice: float
    iou: float
    hd95: float
    gt_empty: bool
    pred_empty: bool
    pred_full: bool = False

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


def write_report(
    evaluation_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    n_cases: int = 3,
    split_file: str | os.PathLike | None = None,
    digits: int = 4,
    dpi: int = 100,
) -> Path:
    """Write ``evaluation_dir/report.html`` and return its path.

    ``evaluation_dir`` is what ``genmedseg evaluate`` wrote (``metrics.csv``, ``summary.json``, ``masks/``,
    ``probabilities/`` and a folder per extra map named in ``summary.json``). Images and ground truth are read from
    ``data_root``, by default the dataset recorded in ``summary.json`` (give ``data_root`` if it has moved;
    ``split_file`` if the folder holds several split files).
    ``n_cases`` overlays are drawn for each of the worst, median and best cases by Dice (ties broken by name); with
    ``3 * n_cases`` images or fewer, every image is drawn once. Numbers are shown with ``digits`` decimals.
    """
    if n_cases < 0:
        raise ConfigError(f"n_cases must be 0 or more, got {n_cases}")
    folder = EvaluationFolder(Path(evaluation_dir))
    summary = _read_evaluation_summary(folder.summary)
    cases = _read_metrics(folder.metrics)
    hint = (
        "check the data_root you gave"
        if data_root
        else "the dataset recorded in summary.json is used; pass data_root (--data) if it has moved"
    )
    pairs = _dataset_pairs(Path(data_root or summary["data"]), split_file, [case.name for case in cases], hint)
    lesion_fraction = {case.name: float(read_mask(pairs[case.name][1]).mean()) for case in cases}

    groups = select_cases({case.name: case.dice for case in cases}, n_cases)
    by_name = {case.name: case for case in cases}
    figure_ids = {name: _anchor("figure", name) for _, names in groups for name in names}
    sections = [
        ("summary", "summary", _summary_section(summary, digits)),
        (
            "distributions",
            "distributions",
            png_img(_distribution_figure(cases), dpi, "Histograms and box plots of Dice, IoU and HD95"),
        ),
        (
            "size",
            "Dice against lesion size",
            png_img(_size_figure(cases, lesion_fraction), dpi, "Dice against the ground-truth foreground fraction"),
        ),
        (
            "cases",
            "cases",
            _cases_section(groups, by_name, pairs, folder, summary.get("maps", []), lesion_fraction, digits, dpi),
        ),
        (
            "metrics",
            f"per-image metrics ({folder.metrics.name})",
            _metrics_section(cases, lesion_fraction, figure_ids, digits),
        ),
    ]
    title = f"{_model_label(summary['model'])} on {Path(summary['data']).name} ({summary['split']})"
    page = _page(title, sections)
    atomic_write(folder.report, lambda temporary: temporary.write_text(page, encoding="utf-8"))
    return folder.report


def select_cases(dice_by_name: Mapping[str, float], n_cases: int) -> list[tuple[str, list[str]]]:
    """Names to draw: ``[("worst", ...), ("median", ...), ("best", ...)]``, each ``n_cases`` long, by ascending Dice.

    Cases are ranked by (Dice, name), so ties are broken by name and the choice does not depend on the order of
    ``metrics.csv``. The median group is the ``n_cases`` names around the middle of that ranking. With ``3 * n_cases``
    names or fewer there is nothing to choose from, so every name is returned once as ``[("all", ranked)]``.
    """
    ranked = sorted(dice_by_name, key=lambda name: (dice_by_name[name], name))
    if n_cases == 0 or not ranked:
        return []
    if len(ranked) <= 3 * n_cases:
        return [("all", ranked)]
    middle = (len(ranked) - n_cases) // 2
    return [("worst", ranked[:n_cases]), ("median", ranked[middle : middle + n_cases]), ("best", ranked[-n_cases:])]


def _model_label(model: str) -> str:
    """The run folder's name for ``RUN/model``, else the model folder's own name."""
    folder = Path(model)
    return folder.parent.name if folder.name == "model" and folder.parent.name else folder.name


def _read_metrics(path: Path) -> list[_Case]:
    fix = "run `genmedseg evaluate` again to rewrite it"
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `genmedseg evaluate RUN --out DIR` first") from None
    if not rows:
        raise DataError(f"{path}: no rows; {fix}")
    try:
        return [
            _Case(
                row["name"],
                float(row["dice"]),
                float(row["iou"]),
                float(row["hd95"]),
                _flag(row["gt_empty"]),
                _flag(row["pred_empty"]),
                _flag(row.get("pred_full") or "False"),
            )
            for row in rows
        ]
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"{path}: unexpected content ({type(error).__name__}: {error}); the columns must be "
            f"name,dice,iou,hd95,gt_empty,pred_empty(,pred_full); {fix}"
        ) from None


def _flag(text: str) -> bool:
    if text.strip().lower() in ("true", "1"):
        return True
    if text.strip().lower() in ("false", "0"):
        return False
    raise ValueError(f"{text!r} is not True or False")


def _read_evaluation_summary(path: Path) -> dict[str, Any]:
    fix = "run `genmedseg evaluate RUN --data DIR --out EVAL` (again)"
    summary = read_json(path, fix)
    missing = [
        key for key in (*METRIC_NAMES, "n_gt_empty", "n_pred_empty", "model", "data", "split") if key not in summary
    ]
    if missing:
        raise DataError(f"{path}: not an evaluation summary (no {', '.join(missing)}); {fix}")
    return summary


def _dataset_pairs(
    root: Path, split_file: str | os.PathLike | None, names: list[str], hint: str
) -> dict[str, tuple[Path, Path]]:
    """Image and mask paths of every evaluated name; ``hint`` says where ``root`` came from and what to do."""
    try:
        pairs = discover(root, split_file).pairs
    except DataError as error:
        raise DataError(f"{error} ({hint})") from None
    missing = [name for name in names if name not in pairs]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{root}: {len(missing)} evaluated image(s) have no image/mask pair here ({shown}); {hint}")
    return pairs


def _distribution_figure(cases: Sequence[_Case]) -> Any:
    """Histogram (top) and box plot (bottom) of each metric, the mean marked."""
    figure = new_figure(11, 4.2)
    grid = figure.add_gridspec(2, len(METRIC_NAMES), height_ratios=(3, 1))
    for column, name in enumerate(METRIC_NAMES):
        values = np.array([case.metric(name) for case in cases])
        upper = 1.0 if name in ("dice", "iou") else max(float(values.max()), 1.0)
        histogram = figure.add_subplot(grid[0, column])
        histogram.hist(values, bins=np.linspace(0.0, upper, 21), color=BLUE, edgecolor="white")
        histogram.axvline(
            values.mean(), color=VERMILLION, linestyle="--", linewidth=2, label=f"mean {values.mean():.3f}"
        )
        histogram.set_title(_METRIC_LABELS[name])
        histogram.set_ylabel("images")
        histogram.legend(loc="upper center" if name in ("dice", "iou") else "upper right", frameon=False)
        box = figure.add_subplot(grid[1, column], sharex=histogram)
        box.boxplot(values, widths=0.6, medianprops={"color": VERMILLION, "linewidth": 2}, **horizontal())
        box.set_yticks([])
        box.set_xlabel(_METRIC_LABELS[name])
        histogram.tick_params(labelbottom=False)
    return figure


def _size_figure(cases: Sequence[_Case], lesion_fraction: Mapping[str, float]) -> Any:
    figure = new_figure(7.5, 4.2)
    axes = figure.add_subplot()
    for empty, colour, marker, label in ((False, BLUE, "o", "images"), (True, VERMILLION, "x", "empty ground truth")):
        chosen = [case for case in cases if case.gt_empty == empty]
        if chosen:
            axes.scatter(
                [100.0 * lesion_fraction[case.name] for case in chosen],
                [case.dice for case in chosen],
                color=colour,
                marker=marker,
                s=28,
                alpha=0.8,
                label=f"{label} ({len(chosen)})",
            )
    axes.set_xlabel("lesion size: ground-truth foreground (% of the image)")
    axes.set_ylabel("Dice")
    axes.set_ylim(-0.03, 1.03)
    axes.set_xlim(left=-1.0)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return figure


def _case_figure(
    image: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    probability: np.ndarray,
    maps: Mapping[str, np.ndarray] | None = None,
    panel_width: float = 2.8,
) -> Any:
    """Image; image with the ground-truth and predicted outlines; probability map; each extra map (e.g.
    uncertainty). Arrays may differ in size."""
    from matplotlib.lines import Line2D

    maps = dict(maps or {})
    height, width = image.shape[:2]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # every array is stretched onto the image's pixel grid
    # Panels side by side, ``panel_width`` inches each; very tall or very wide images are letterboxed.
    panel_height = min(max(panel_width * height / width, 0.5 * panel_width), 1.4 * panel_width)
    panels = 3 + len(maps)
    figure = new_figure(panels * panel_width + 0.9 * (1 + len(maps)), panel_height + 0.9)
    image_axes, outline_axes, probability_axes, *map_axes = figure.subplots(1, panels)
    titles = ("image", "outlines", "probability", *maps)
    for axes, title in zip((image_axes, outline_axes, probability_axes, *map_axes), titles, strict=True):
        axes.set_title(title)
        axes.set_axis_off()
    image_axes.imshow(image, extent=extent)
    outline_axes.imshow(image, extent=extent)
    handles = []
    outlines = ((truth, GROUND_TRUTH_STYLE, "ground truth"), (prediction, PREDICTION_STYLE, "prediction"))
    for mask, style, label in outlines:
        if mask.any():
            _draw_outline(outline_axes, mask, (height, width), style)
        handles.append(
            Line2D(
                [],
                [],
                color=style["colors"],
                linestyle=style["linestyles"],
                linewidth=2.5,
                label=label if mask.any() else f"{label}: empty",
            )
        )
    outline_axes.set_xlim(extent[0], extent[1])
    outline_axes.set_ylim(extent[2], extent[3])
    shown = probability_axes.imshow(
        probability, extent=extent, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    figure.colorbar(shown, ax=probability_axes, shrink=0.85, label="foreground probability")
    for axes, (name, values) in zip(map_axes, maps.items(), strict=True):
        shown = axes.imshow(
            values, extent=extent, cmap="magma", vmin=0.0, vmax=max(float(values.max()), 1e-6), interpolation="nearest"
        )
        figure.colorbar(shown, ax=axes, shrink=0.85, label=name)
    figure.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
    return figure


def _draw_outline(axes: Any, mask: np.ndarray, image_shape: tuple[int, int], style: Mapping[str, str]) -> None:
    """Outline of ``mask`` on the image's pixel grid, with a dark edge so that it shows on light and dark images."""
    from matplotlib import patheffects

    # A border of background, so that a mask touching the image edge gets a closed outline along that edge.
    padded = np.pad(mask.astype(np.float32), 1)
    rows = (np.arange(-1, mask.shape[0] + 1) + 0.5) * image_shape[0] / mask.shape[0] - 0.5
    columns = (np.arange(-1, mask.shape[1] + 1) + 0.5) * image_shape[1] / mask.shape[1] - 0.5
    outline = axes.contour(columns, rows, padded, levels=[0.5], linewidths=2.0, **style)
    outline.set_path_effects([patheffects.withStroke(linewidth=3.5, foreground="black")])


def _anchor(kind: str, name: str) -> str:
    # Percent-encoding keeps ids free of spaces and quotes; the same string is used in the id and in the link.
    return f"{kind}-{quote(name, safe='-_.~')}"


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def _summary_section(summary: Mapping[str, Any], digits: int) -> str:
    rows = []
    for name in METRIC_NAMES:
        cells = "".join(
            f'<td class="num" id="summary-{name}-{key}">'
            f"{_number(summary[name][key], digits) if key != 'n' else int(summary[name][key])}</td>"
            for key in ("mean", "std", "n")
        )
        rows.append(f"<tr><th>{_METRIC_LABELS[name]}</th>{cells}</tr>")
    details = [
        ("n_gt_empty", "images with an empty ground truth", str(summary["n_gt_empty"])),
        ("n_pred_empty", "images with an empty prediction", str(summary["n_pred_empty"])),
        ("n_pred_full", "images predicted foreground everywhere", str(summary.get("n_pred_full", 0))),
        ("model", "model", summary["model"]),
        ("data", "data", summary["data"]),
        ("split", "split", summary["split"]),
        ("resolution", "metric grid", summary.get("resolution", "native")),
        ("prompts", "prompts", summary.get("prompts") or "none"),
        ("sampling", "sampling", ", ".join(f"{k}={v}" for k, v in (summary.get("sampling") or {}).items()) or "none"),
    ]
    detail_rows = "".join(
        f'<tr><th>{label}</th><td id="summary-{key}">{html.escape(str(value))}</td></tr>'
        for key, label, value in details
    )
    return (
        '<div class="row">'
        '<table class="metrics"><thead><tr><th></th><th>mean</th><th>std</th><th>n</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>\n"
        f'<table class="details"><tbody>{detail_rows}</tbody></table></div>\n'
        '<p class="note">Mean over images; std with ddof=1; HD95 in pixels. Empty-mask rule: both masks empty gives '
        "Dice 1 and HD95 0; exactly one empty gives Dice 0 and HD95 = the image diagonal.</p>"
    )


def _cases_section(
    groups: list[tuple[str, list[str]]],
    by_name: Mapping[str, _Case],
    pairs: Mapping[str, tuple[Path, Path]],
    folder: EvaluationFolder,
    map_names: Sequence[str],
    lesion_fraction: Mapping[str, float],
    digits: int,
    dpi: int,
) -> str:
    if not groups:
        return ""
    headings = {
        "worst": "Worst {n} by Dice",
        "median": "Median {n} by Dice",
        "best": "Best {n} by Dice",
        "all": "All {n} images, by Dice",
    }
    parts = [
        '<p class="note">Outlines: ground truth solid sky blue, prediction dashed orange. Ascending Dice within '
        "each group; the name links to the image's row of the metrics table.</p>"
    ]
    for group, names in groups:
        parts.append(f'<h3 id="cases-{group}">{headings[group].format(n=len(names))}</h3>')
        for name in names:
            case = by_name[name]
            image_path, mask_path = pairs[name]
            figure = _case_figure(
                read_image(image_path),
                read_mask(mask_path),
                read_mask(_evaluation_file(folder.masks, name)),
                read_probability_png(_evaluation_file(folder.probabilities, name)),
                {
                    map_name: read_probability_png(_evaluation_file(folder.map_folder(map_name), name))
                    for map_name in map_names
                },
            )
            shown = ", ".join(("image, outlines and probability map", *map_names))
            parts.append(_case_block(case, lesion_fraction[name], digits, png_img(figure, dpi, f"{name}: {shown}")))
    return "\n".join(parts)


def _evaluation_file(folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    if not path.is_file():
        raise DataError(f"{path}: not found although metrics.csv lists {name!r}; run `genmedseg evaluate` again")
    return path


def _prediction_flag(case: _Case) -> str:
    """``empty`` or ``full`` (foreground everywhere): the two trivial answers of a stuck model."""
    return "empty" if case.pred_empty else "full" if case.pred_full else ""


def _case_block(case: _Case, fraction: float, digits: int, img: str) -> str:
    name = html.escape(case.name)
    facts = [
        ("Dice", _number(case.dice, digits)),
        ("IoU", _number(case.iou, digits)),
        ("HD95", _number(case.hd95, digits) + " px"),
        ("lesion", "empty" if case.gt_empty else f"{100.0 * fraction:.2f} %"),
        ("prediction", _prediction_flag(case) or "not empty"),
    ]
    rows = "".join(f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in facts)
    return (
        f'<figure class="case" id="{_anchor("figure", case.name)}"><figcaption>'
        f'<a href="#{_anchor("case", case.name)}">{name}</a><table>{rows}</table></figcaption>{img}</figure>'
    )


def _metrics_section(
    cases: Sequence[_Case], lesion_fraction: Mapping[str, float], figure_ids: Mapping[str, str], digits: int
) -> str:
    rows = []
    for case in cases:
        name = html.escape(case.name)
        shown = f'<a href="#{figure_ids[case.name]}">{name}</a>' if case.name in figure_ids else name
        rows.append(
            f'<tr id="{_anchor("case", case.name)}"><td>{shown}</td>'
            + "".join(f'<td class="num">{_number(case.metric(metric), digits)}</td>' for metric in METRIC_NAMES)
            + f'<td class="num">{100.0 * lesion_fraction[case.name]:.2f}</td>'
            f"<td>{'empty' if case.gt_empty else ''}</td><td>{_prediction_flag(case)}</td></tr>"
        )
    return (
        '<p class="note">Linked names have a figure above.</p>'
        '<table class="per-image"><thead><tr><th>name</th><th>Dice</th><th>IoU</th><th>HD95 (px)</th>'
        "<th>lesion (%)</th><th>ground truth</th><th>prediction</th></tr></thead>"
        f"<tbody>\n{chr(10).join(rows)}\n</tbody></table>"
    )


_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1a1a1a; margin: 0 auto; padding: 0 24px 48px; max-width: 1180px; }
h1 { font-size: 1.6em; margin: 24px 0 4px; } h2 { border-bottom: 1px solid #ccc; margin-top: 36px; }
nav a { margin-right: 16px; } img { max-width: 100%; height: auto; }
table { border-collapse: collapse; } th, td { padding: 3px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.row { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
.metrics th, .metrics td, .per-image th, .per-image td { border-bottom: 1px solid #ddd; }
.details td { word-break: break-all; } .note { color: #555; font-size: 0.92em; }
.per-image tbody tr:nth-child(even) { background: #f5f5f5; }
tr:target, figure:target { outline: 3px solid #E69F00; background: #fff6e0; }
figure.case { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; margin: 12px 0 24px; }
figure.case figcaption { min-width: 190px; } figure.case figcaption a { font-weight: 600; word-break: break-all; }
figure.case figcaption th { color: #555; font-weight: normal; padding-left: 0; }
"""

# Marks every image that the browser decoded, so that a headless browser's DOM dump shows whether all loaded.
_MARK_LOADED = """
window.addEventListener("load", function () {
  document.querySelectorAll("img").forEach(function (img) {
    img.setAttribute("data-loaded", img.complete && img.naturalWidth > 0 ? "1" : "0");
  });
});
"""


def _page(title: str, sections: Iterable[tuple[str, str, str]]) -> str:
    """The whole page; ``sections`` are (id, heading, HTML body), and those with an empty body are left out."""
    present = [(section_id, heading, body) for section_id, heading, body in sections if body]
    navigation = " ".join(f'<a href="#{section_id}">{heading}</a>' for section_id, heading, _ in present)
    body = "\n".join(
        f'<section id="{section_id}"><h2>{heading[0].upper() + heading[1:]}</h2>\n{body}\n</section>'
        for section_id, heading, body in present
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        f"<h1>Evaluation: {html.escape(title)}</h1>\n<nav>{navigation}</nav>\n{body}\n"
        f"<script>{_MARK_LOADED}</script>\n</body></html>\n"
    )
