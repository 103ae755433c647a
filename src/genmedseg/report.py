"""Reports people would rather look at: an HTML page per evaluation, training curves per run, a table of runs.

- :func:`write_report` turns an evaluation folder (written by ``genmedseg evaluate``) into ``report.html``: one
  self-contained page (images inline as base64 PNG, CSS inline, no external address) with the summary, the
  distributions of Dice, IoU and HD95, Dice against lesion size, overlays of the worst, median and best cases, and
  the per-image metrics table, each row with an anchor that the case figures link to.
- :func:`plot_training_curves` draws ``curves.png`` of a run folder from its CSV logs, resumed sessions merged.
- :func:`runs_table` lists finished runs side by side as plain text, with their test Dice where one was evaluated.

Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas, never through ``pyplot``, so making a
report neither needs a display nor switches the backend of a notebook that calls it. Colours are from the
Okabe-Ito palette, which stays distinguishable with the common colour-vision deficiencies.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from genmedseg.atomic import atomic_write
from genmedseg.data import discover, read_image, read_mask, read_probability_png
from genmedseg.errors import ConfigError, DataError
from genmedseg.metrics import METRIC_NAMES

REPORT_NAME = "report.html"
CURVES_NAME = "curves.png"
TRAIN_SUMMARY_NAME = "train_summary.json"  # written by genmedseg.engine.training (not imported: it needs Lightning)
EVALUATION_SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.csv"

# Okabe-Ito colours.
BLUE, ORANGE, SKY_BLUE, GREEN, VERMILLION, PURPLE, YELLOW = (
    "#0072B2", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#CC79A7", "#F0E442",
)
GROUND_TRUTH_STYLE = {"colors": SKY_BLUE, "linestyles": "solid"}
PREDICTION_STYLE = {"colors": ORANGE, "linestyles": "dashed"}

_METRIC_LABELS = {"dice": "Dice", "iou": "IoU", "hd95": "HD95 (px)"}
_VERSION_FOLDER = re.compile(r"version_(\d+)$")


@dataclass(frozen=True)
class _Case:
    """One row of ``metrics.csv``."""

    name: str
    dice: float
    iou: float
    hd95: float
    gt_empty: bool
    pred_empty: bool

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


# --------------------------------------------------------------------------------------------------- evaluation page


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
    ``probabilities/``). Images and ground truth are read from ``data_root``, by default the dataset recorded in
    ``summary.json`` (give ``data_root`` if it has moved; ``split_file`` if the folder holds several split files).
    ``n_cases`` overlays are drawn for each of the worst, median and best cases by Dice (ties broken by name); with
    ``3 * n_cases`` images or fewer, every image is drawn once. Numbers are shown with ``digits`` decimals.
    """
    if n_cases < 0:
        raise ConfigError(f"n_cases must be 0 or more, got {n_cases}")
    evaluation_dir = Path(evaluation_dir)
    summary = _read_evaluation_summary(evaluation_dir / EVALUATION_SUMMARY_NAME)
    cases = _read_metrics(evaluation_dir / METRICS_NAME)
    hint = ("check the data_root you gave" if data_root else
            "the dataset recorded in summary.json is used; pass data_root (--data) if it has moved")
    pairs = _dataset_pairs(Path(data_root or summary["data"]), split_file, [case.name for case in cases], hint)
    lesion_fraction = {case.name: float(read_mask(pairs[case.name][1]).mean()) for case in cases}

    groups = select_cases({case.name: case.dice for case in cases}, n_cases)
    by_name = {case.name: case for case in cases}
    figure_ids = {name: _anchor("figure", name) for _, names in groups for name in names}
    sections = [
        ("summary", "summary", _summary_section(summary, digits)),
        ("distributions", "distributions",
         _png_img(_distribution_figure(cases), dpi, "Histograms and box plots of Dice, IoU and HD95")),
        ("size", "Dice against lesion size",
         _png_img(_size_figure(cases, lesion_fraction), dpi, "Dice against the ground-truth foreground fraction")),
        ("cases", "cases", _cases_section(groups, by_name, pairs, evaluation_dir, lesion_fraction, digits, dpi)),
        ("metrics", f"per-image metrics ({METRICS_NAME})",
         _metrics_section(cases, lesion_fraction, figure_ids, digits)),
    ]
    title = f"{_model_label(summary['model'])} on {Path(summary['data']).name} ({summary['split']})"
    page = _page(title, sections)
    path = evaluation_dir / REPORT_NAME
    atomic_write(path, lambda temporary: temporary.write_text(page, encoding="utf-8"))
    return path


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


def _read_json(path: Path, fix: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error}); {fix}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(value).__name__}; {fix}")
    return value


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
            _Case(row["name"], float(row["dice"]), float(row["iou"]), float(row["hd95"]),
                  _flag(row["gt_empty"]), _flag(row["pred_empty"]))
            for row in rows
        ]
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: unexpected content ({type(error).__name__}: {error}); the columns must be "
                        f"name,dice,iou,hd95,gt_empty,pred_empty; {fix}") from None


def _flag(text: str) -> bool:
    if text.strip().lower() in ("true", "1"):
        return True
    if text.strip().lower() in ("false", "0"):
        return False
    raise ValueError(f"{text!r} is not True or False")


def _read_evaluation_summary(path: Path) -> dict[str, Any]:
    fix = "run `genmedseg evaluate RUN --data DIR --out EVAL` (again)"
    summary = _read_json(path, fix)
    missing = [key for key in (*METRIC_NAMES, "n_gt_empty", "n_pred_empty", "model", "data", "split")
               if key not in summary]
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


# ----------------------------------------------------------------------------------------------------- figures


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png_bytes(figure: Any, dpi: int) -> bytes:
    buffer = io.BytesIO()
    # No "Software" text chunk: it holds matplotlib's web address, and the page must not name any.
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def _distribution_figure(cases: Sequence[_Case]) -> Any:
    """Histogram (top) and box plot (bottom) of each metric, the mean marked."""
    figure = _new_figure(11, 4.2)
    grid = figure.add_gridspec(2, len(METRIC_NAMES), height_ratios=(3, 1))
    for column, name in enumerate(METRIC_NAMES):
        values = np.array([case.metric(name) for case in cases])
        upper = 1.0 if name in ("dice", "iou") else max(float(values.max()), 1.0)
        histogram = figure.add_subplot(grid[0, column])
        histogram.hist(values, bins=np.linspace(0.0, upper, 21), color=BLUE, edgecolor="white")
        histogram.axvline(values.mean(), color=VERMILLION, linestyle="--", linewidth=2,
                          label=f"mean {values.mean():.3f}")
        histogram.set_title(_METRIC_LABELS[name])
        histogram.set_ylabel("images")
        histogram.legend(loc="upper center" if name in ("dice", "iou") else "upper right", frameon=False)
        box = figure.add_subplot(grid[1, column], sharex=histogram)
        box.boxplot(values, widths=0.6, medianprops={"color": VERMILLION, "linewidth": 2}, **_horizontal())
        box.set_yticks([])
        box.set_xlabel(_METRIC_LABELS[name])
        histogram.tick_params(labelbottom=False)
    return figure


def _horizontal() -> dict[str, Any]:
    """Keyword of ``Axes.boxplot`` for a horizontal box: ``orientation`` from matplotlib 3.10, ``vert`` before."""
    import matplotlib

    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _size_figure(cases: Sequence[_Case], lesion_fraction: Mapping[str, float]) -> Any:
    figure = _new_figure(7.5, 4.2)
    axes = figure.add_subplot()
    for empty, colour, marker, label in ((False, BLUE, "o", "images"), (True, VERMILLION, "x", "empty ground truth")):
        chosen = [case for case in cases if case.gt_empty == empty]
        if chosen:
            axes.scatter([100.0 * lesion_fraction[case.name] for case in chosen], [case.dice for case in chosen],
                         color=colour, marker=marker, s=28, alpha=0.8, label=f"{label} ({len(chosen)})")
    axes.set_xlabel("lesion size: ground-truth foreground (% of the image)")
    axes.set_ylabel("Dice")
    axes.set_ylim(-0.03, 1.03)
    axes.set_xlim(left=-1.0)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return figure


def _case_figure(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, probability: np.ndarray, panel_width: float = 2.8
) -> Any:
    """Image; image with the ground-truth and predicted outlines; probability map. Arrays may differ in size."""
    from matplotlib.lines import Line2D

    height, width = image.shape[:2]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # every array is stretched onto the image's pixel grid
    # Three panels side by side fill ``width`` inches; very tall or very wide images are letterboxed.
    panel_height = min(max(panel_width * height / width, 0.5 * panel_width), 1.4 * panel_width)
    figure = _new_figure(3 * panel_width + 0.9, panel_height + 0.9)
    image_axes, outline_axes, probability_axes = figure.subplots(1, 3)
    for axes, title in ((image_axes, "image"), (outline_axes, "outlines"), (probability_axes, "probability")):
        axes.set_title(title)
        axes.set_axis_off()
    image_axes.imshow(image, extent=extent)
    outline_axes.imshow(image, extent=extent)
    handles = []
    outlines = ((truth, GROUND_TRUTH_STYLE, "ground truth"), (prediction, PREDICTION_STYLE, "prediction"))
    for mask, style, label in outlines:
        if mask.any():
            _draw_outline(outline_axes, mask, (height, width), style)
        handles.append(Line2D([], [], color=style["colors"], linestyle=style["linestyles"], linewidth=2.5,
                              label=label if mask.any() else f"{label}: empty"))
    outline_axes.set_xlim(extent[0], extent[1])
    outline_axes.set_ylim(extent[2], extent[3])
    shown = probability_axes.imshow(probability, extent=extent, cmap="viridis", vmin=0.0, vmax=1.0,
                                    interpolation="nearest")
    figure.colorbar(shown, ax=probability_axes, shrink=0.85, label="foreground probability")
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


# --------------------------------------------------------------------------------------------------- HTML parts


def _anchor(kind: str, name: str) -> str:
    # Percent-encoding keeps ids free of spaces and quotes; the same string is used in the id and in the link.
    return f"{kind}-{quote(name, safe='-_.~')}"


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def _png_img(figure: Any, dpi: int, alt: str) -> str:
    from PIL import Image

    png = _png_bytes(figure, dpi)
    width, height = Image.open(io.BytesIO(png)).size
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" width="{width}" height="{height}" alt="{html.escape(alt)}">'


def _summary_section(summary: Mapping[str, Any], digits: int) -> str:
    rows = []
    for name in METRIC_NAMES:
        cells = "".join(
            f'<td class="num" id="summary-{name}-{key}">'
            f'{_number(summary[name][key], digits) if key != "n" else int(summary[name][key])}</td>'
            for key in ("mean", "std", "n")
        )
        rows.append(f"<tr><th>{_METRIC_LABELS[name]}</th>{cells}</tr>")
    details = [
        ("n_gt_empty", "images with an empty ground truth", str(summary["n_gt_empty"])),
        ("n_pred_empty", "images with an empty prediction", str(summary["n_pred_empty"])),
        ("model", "model", summary["model"]),
        ("data", "data", summary["data"]),
        ("split", "split", summary["split"]),
        ("resolution", "resolution", summary.get("resolution", "native")),
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
    evaluation_dir: Path,
    lesion_fraction: Mapping[str, float],
    digits: int,
    dpi: int,
) -> str:
    if not groups:
        return ""
    headings = {"worst": "Worst {n} by Dice", "median": "Median {n} by Dice", "best": "Best {n} by Dice",
                "all": "All {n} images, by Dice"}
    parts = ['<p class="note">Outlines: ground truth solid sky blue, prediction dashed orange. Ascending Dice within '
             "each group; the name links to the image's row of the metrics table.</p>"]
    for group, names in groups:
        parts.append(f'<h3 id="cases-{group}">{headings[group].format(n=len(names))}</h3>')
        for name in names:
            case = by_name[name]
            image_path, mask_path = pairs[name]
            figure = _case_figure(
                read_image(image_path),
                read_mask(mask_path),
                read_mask(_evaluation_file(evaluation_dir, "masks", name)),
                read_probability_png(_evaluation_file(evaluation_dir, "probabilities", name)),
            )
            parts.append(_case_block(case, lesion_fraction[name], digits,
                                     _png_img(figure, dpi, f"{name}: image, outlines and probability map")))
    return "\n".join(parts)


def _evaluation_file(evaluation_dir: Path, folder: str, name: str) -> Path:
    path = evaluation_dir / folder / f"{name}.png"
    if not path.is_file():
        raise DataError(f"{path}: not found although metrics.csv lists {name!r}; run `genmedseg evaluate` again")
    return path


def _case_block(case: _Case, fraction: float, digits: int, img: str) -> str:
    name = html.escape(case.name)
    facts = [
        ("Dice", _number(case.dice, digits)),
        ("IoU", _number(case.iou, digits)),
        ("HD95", _number(case.hd95, digits) + " px"),
        ("lesion", "empty" if case.gt_empty else f"{100.0 * fraction:.2f} %"),
        ("prediction", "empty" if case.pred_empty else "not empty"),
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
            f"<td>{'empty' if case.gt_empty else ''}</td><td>{'empty' if case.pred_empty else ''}</td></tr>"
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


# ------------------------------------------------------------------------------------------------ training curves


@dataclass
class TrainingLog:
    """Per-epoch values from a run's CSV logs (``logs/version_*/metrics.csv``), resumed sessions merged.

    ``values[epoch][column]`` is the last non-empty value of that column in that epoch; when several sessions logged
    the same epoch, the later session's epoch replaces the earlier one entirely. ``resumed_at`` holds the first
    epoch of every session after the first.
    """

    values: dict[int, dict[str, float]] = field(default_factory=dict)
    resumed_at: list[int] = field(default_factory=list)


def read_training_log(run_dir: str | os.PathLike) -> TrainingLog:
    """Merge the Lightning CSV logs of ``run_dir``, in version order (``version_10`` after ``version_9``)."""
    log = TrainingLog()
    for index, path in enumerate(_log_files(Path(run_dir))):
        session = _read_log_file(path)
        if not session:
            continue
        if index and log.values:
            log.resumed_at.append(min(session))
        log.values.update(session)
    log.values = dict(sorted(log.values.items()))
    return log


def _log_files(run_dir: Path) -> list[Path]:
    folders = []
    for folder in (run_dir / "logs").glob("version_*"):
        match = _VERSION_FOLDER.match(folder.name)
        if match and (folder / "metrics.csv").is_file():
            folders.append((int(match.group(1)), folder / "metrics.csv"))
    return [path for _, path in sorted(folders)]


def _read_log_file(path: Path) -> dict[int, dict[str, float]]:
    epochs: dict[int, dict[str, float]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            epoch_text = (row.get("epoch") or "").strip()
            if not epoch_text:
                continue
            try:
                epoch = int(float(epoch_text))
                values = {key: float(text) for key, text in row.items()
                          if key not in ("epoch", "step") and text is not None and text.strip()}
            except (TypeError, ValueError) as error:
                raise DataError(f"{path}, line {line}: not a number ({error}); the log is damaged") from None
            epochs.setdefault(epoch, {}).update(values)
    return epochs


def plot_training_curves(run_dir: str | os.PathLike, dpi: int = 100) -> Path | None:
    """Write ``run_dir/curves.png``: loss parts and validation Dice per epoch; None if the run has no logs yet.

    The loss axis is logarithmic when the plotted values span more than a factor of ten; dotted lines mark where a
    resumed session started.
    """
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    log = read_training_log(run_dir)
    if not log.values:
        return None
    figure = _new_figure(11, 4)
    loss_axes, dice_axes = figure.subplots(1, 2)
    _plot_losses(loss_axes, log.values)
    _plot_validation_dice(dice_axes, log.values)
    for axes in (loss_axes, dice_axes):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        for number, epoch in enumerate(log.resumed_at):
            axes.axvline(epoch - 0.5, color="grey", linestyle=":", label="resumed" if number == 0 else None)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(frameon=False, loc="lower right" if axes is dice_axes else "upper right")
    path = run_dir / CURVES_NAME
    png = _png_bytes(figure, dpi)
    atomic_write(path, lambda temporary: temporary.write_bytes(png))
    return path


def _plot_losses(axes: Any, values: Mapping[int, Mapping[str, float]], log_range: float = 10.0) -> None:
    columns = sorted({key for row in values.values() for key in row if key.startswith("train_")},
                     key=lambda key: (key != "train_loss", key))
    colours = (BLUE, VERMILLION, GREEN, ORANGE, PURPLE, SKY_BLUE, YELLOW)
    plotted = []
    for number, column in enumerate(columns):
        epochs = [epoch for epoch, row in values.items() if column in row]
        losses = [values[epoch][column] for epoch in epochs]
        plotted.extend(losses)
        axes.plot(epochs, losses, color=colours[number % len(colours)],
                  linewidth=2.5 if column == "train_loss" else 1.5, label=column.removeprefix("train_"))
    if plotted and min(plotted) > 0 and max(plotted) > log_range * min(plotted):
        axes.set_yscale("log")
    axes.set_title("training loss and its parts")


def _plot_validation_dice(axes: Any, values: Mapping[int, Mapping[str, float]]) -> None:
    epochs = [epoch for epoch, row in values.items() if "val_dice" in row]
    axes.set_title("validation Dice")
    axes.set_ylim(0.0, 1.0)
    if not epochs:
        axes.text(0.5, 0.5, "no validation Dice logged", ha="center", va="center", transform=axes.transAxes)
        return
    dice = [values[epoch]["val_dice"] for epoch in epochs]
    axes.plot(epochs, dice, color=BLUE, marker="o", markersize=3, label="validation Dice")
    best = int(np.argmax(dice))
    axes.plot([epochs[best]], [dice[best]], linestyle="none", marker="*", markersize=14, color=VERMILLION,
              label=f"best {dice[best]:.4f} (epoch {epochs[best]})")


# ------------------------------------------------------------------------------------------------------ runs table


def runs_table(run_dirs: Sequence[str | os.PathLike], evaluations: Sequence[str | os.PathLike] = ()) -> str:
    """Plain-text table of runs side by side, one line per run folder.

    Columns: run, model, data (folder name), epochs (done/planned), best validation Dice, test Dice, trainable
    parameters, training time. The test Dice is the mean Dice of an evaluation of the run's model on the ``test``
    split of the run's own dataset, looked up in the ``summary.json`` of ``evaluations`` (folders or files), of
    ``RUN/*/`` and of ``RUN/../*/``; the newest wins; "-" when there is none. A run folder without
    ``train_summary.json`` is listed as unfinished.
    """
    explicit = [_summary_path(Path(entry)) for entry in evaluations]
    header = ("run", "model", "data", "epochs", "best val Dice", "test Dice", "parameters", "time")
    lines = [header]
    for run_dir in map(Path, run_dirs):
        if not (run_dir / TRAIN_SUMMARY_NAME).is_file():
            lines.append((str(run_dir), "-", "-", "unfinished", "-", "-", "-", "-"))
            continue
        summary = _read_json(run_dir / TRAIN_SUMMARY_NAME, "it is rewritten when training finishes (--resume)")
        candidates = explicit + sorted(run_dir.glob(f"*/{EVALUATION_SUMMARY_NAME}")) + sorted(
            run_dir.parent.glob(f"*/{EVALUATION_SUMMARY_NAME}"))
        test = _test_dice(run_dir, summary.get("data"), candidates)
        best = summary.get("best_val_dice")
        parameters = summary.get("trainable_parameters")
        seconds = summary.get("train_seconds")
        lines.append((
            str(run_dir),
            str(summary.get("model", "-")),
            Path(summary["data"]).name if summary.get("data") else "-",
            f"{summary.get('epochs_done', '-')}/{summary.get('epochs', '-')}",
            "-" if best is None else f"{best:.4f}",
            "-" if test is None else f"{test:.4f}",
            "-" if parameters is None else f"{parameters:,}",
            "-" if seconds is None else _duration(seconds),
        ))
    return _text_table(lines, right_aligned={3, 4, 5, 6, 7})


def _summary_path(entry: Path) -> Path:
    path = entry / EVALUATION_SUMMARY_NAME if entry.is_dir() else entry
    if not path.is_file():
        raise DataError(f"{entry}: no evaluation here (expected {path}); give evaluation folders written by "
                        "`genmedseg evaluate`")
    return path


def _test_dice(run_dir: Path, run_data: str | None, candidates: Iterable[Path]) -> float | None:
    """Mean test Dice of the newest evaluation of this run's model on its own dataset, if any."""
    run_root = run_dir.resolve()
    found = []
    for path in dict.fromkeys(path.resolve() for path in candidates):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            model, data, dice = Path(summary["model"]), summary.get("data"), float(summary["dice"]["mean"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a summary.json of something else: not an evaluation
        same_data = run_data is None or data is None or Path(data).resolve() == Path(run_data).resolve()
        if summary.get("split") == "test" and same_data and model.resolve().is_relative_to(run_root):
            found.append((path.stat().st_mtime, str(path), dice))
    return max(found)[2] if found else None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _text_table(lines: Sequence[Sequence[str]], right_aligned: set[int]) -> str:
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]

    def render(line: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if column in right_aligned else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])
