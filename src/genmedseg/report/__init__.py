"""Reports people would rather look at: an HTML page per evaluation, training curves and previews per run, a table
of runs.

- :func:`write_report` turns an evaluation folder into one self-contained ``report.html``;
- :func:`plot_training_curves` draws ``curves.png`` of a run folder from its CSV logs, resumed sessions merged;
- :func:`write_preview_grid` saves what a model makes of a few validation images;
- :func:`runs_table` lists finished runs side by side as plain text.
"""

from genmedseg.report.curves import TrainingLog, plot_training_curves, read_training_log
from genmedseg.report.evaluation import select_cases, write_report
from genmedseg.report.previews import preview_grid, write_preview_grid
from genmedseg.report.runs import recorded_evaluations, runs_table

__all__ = [
    "TrainingLog",
    "plot_training_curves",
    "preview_grid",
    "read_training_log",
    "recorded_evaluations",
    "runs_table",
    "select_cases",
    "write_preview_grid",
    "write_report",
]
