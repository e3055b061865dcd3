"""Evaluation: classification metrics with bootstrap confidence intervals, plots and reports.

- :mod:`chestdx.evaluate.metrics`  figures with percentile-bootstrap intervals, case aggregation,
  mean +- std over seeds
- :mod:`chestdx.evaluate.plots`    confusion matrix, ROC, training curves, PNG writing (Agg, atomic)
- :mod:`chestdx.evaluate.report`   markdown tables, metrics.json / metrics.md, self-contained HTML
"""

from chestdx.evaluate.metrics import (
    MetricInputError,
    aggregate,
    classification_metrics,
    get_metric,
    summarise_seeds,
    validate_predictions,
)
from chestdx.evaluate.plots import (
    plot_confusion_matrix,
    plot_roc,
    plot_training_curves,
    png_bytes,
    save_png,
)
from chestdx.evaluate.report import (
    format_figure,
    html_report,
    markdown_table,
    markdown_to_html,
    metrics_markdown,
    seed_table,
    write_html,
    write_metrics,
)

__all__ = [
    "MetricInputError",
    "aggregate",
    "classification_metrics",
    "format_figure",
    "get_metric",
    "html_report",
    "markdown_table",
    "markdown_to_html",
    "metrics_markdown",
    "plot_confusion_matrix",
    "plot_roc",
    "plot_training_curves",
    "png_bytes",
    "save_png",
    "seed_table",
    "summarise_seeds",
    "validate_predictions",
    "write_html",
    "write_metrics",
]
