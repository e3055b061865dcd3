"""``chestdx table``: train each recipe for several seeds on the same sites, evaluate each run on the
test split per site, and write the paper-style table (mean +- std over seeds).

Layout of ``OUT``::

    OUT/<recipe>/seed<s>/            a run folder (resumable: finished runs are reused)
    OUT/<recipe>/seed<s>/eval-test/  its evaluation
    OUT/<trained>/seed<s>/eval-test-<recipe>/  a row that trains like an earlier row and differs only
                                     in its inference procedure (``full`` = ``snapmix_cpe`` answered
                                     by CAM voting): that row's checkpoint answered this row's way
    OUT/results.json                 every run's metrics
    OUT/comparisons.json             each row against the first (baseline) row, paired
    OUT/table.md                     one table per site (+ all sites together), then the differences

**Rows that only answer differently share a checkpoint.** Two recipes whose settings are equal
except ``name``, ``description``, ``paper`` and ``inference`` train the same model; training it
twice would confound the inference procedure's effect (CAM voting's gain) with training noise, so
the later row evaluates the earlier row's run of the same seed with its own procedure.

**Which rows differ from the baseline.** The first recipe is the baseline. Every other row is
compared with it paired, on the same test cases (seed s against seed s, fold f against fold f):
the difference of the mean over seeds of each figure, with a patient-level paired-bootstrap 95%
interval and p-value (:mod:`chestdx.evaluate.compare`). A cell whose interval excludes 0 is marked
``*`` in the table; the differences follow the tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chestdx.errors import ConfigError
from chestdx.utils import write_json, write_text

if TYPE_CHECKING:
    from chestdx.config import Recipe


def row_overrides(name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A table's overrides as they apply to its row ``name``: all of them, except that an
    ``inference.params`` key goes only to a row whose inference procedure takes it.

    A table's overrides apply to every row, and ``--set inference.params.cell=2`` is meant for its
    voting rows (``full``: ``cam_voting``), not for the rows answered by ``plain``, which takes no
    params. :func:`load_rows` refuses a key that no row of the table takes (a typo, with did-you-mean).

    Raises:
        ConfigError: the row's recipe (without the ``inference.params`` override) is invalid.
    """
    from chestdx.config import deep_merge, load_recipe

    inference = overrides.get("inference")
    params = inference.get("params") if isinstance(inference, Mapping) else None
    if not isinstance(params, Mapping) or not params:
        return dict(overrides)
    from chestdx.engine.infer import PROCEDURES

    rest = {k: v for k, v in overrides.items() if k != "inference"}
    others = {k: v for k, v in inference.items() if k != "params"}  # type: ignore[union-attr]
    if others:
        rest["inference"] = others
    procedure = load_recipe(name, rest, parts=False).inference.name
    if procedure not in PROCEDURES:
        return dict(overrides)  # the row's validation names the unknown procedure
    taken = PROCEDURES.entry(procedure).accepted
    mine = {k: v for k, v in params.items() if k in taken}
    return deep_merge(rest, {"inference": {"params": mine}}) if mine else rest


def load_rows(names: Sequence[str], overrides: Mapping[str, Any]) -> list[Any]:
    """Every row of a table, each loaded with its :func:`row_overrides` and validated whole.

    Raises:
        ConfigError: an invalid row, or an ``inference.params`` override key that no row's procedure
            takes (it would change nothing).
    """
    from chestdx.config import load_recipe
    from chestdx.engine.infer import PROCEDURES
    from chestdx.registry import did_you_mean

    rows = [load_recipe(name, row_overrides(name, overrides)) for name in names]
    inference = overrides.get("inference")
    params = inference.get("params") if isinstance(inference, Mapping) else None
    taken = {k for r in rows for k in PROCEDURES.entry(r.inference.name).accepted}
    unused = sorted(set(params or {}) - taken, key=str) if isinstance(params, Mapping) else []
    if unused:
        answers = ", ".join(f"{r.name}: {r.inference.name}" for r in rows)
        raise ConfigError("\n".join(
            f"inference.params.{k} [set by an override: --set or a flag]: no row of this table answers with a "
            f"procedure that takes it{did_you_mean(str(k), taken)} (rows: {answers})" for k in unused))
    return rows


def training_key(recipe: Recipe) -> str:
    """The settings that decide what a run learns: the recipe without ``name``, ``description``,
    ``paper`` and ``inference`` (JSON, keys sorted). Equal keys: the same training."""
    import json

    d = recipe.model_dump(mode="json")
    for k in ("name", "description", "paper", "inference"):
        d.pop(k, None)
    return json.dumps(d, sort_keys=True)


def _comparisons(preds: dict[str, list[Path]], baseline: str, metrics: Sequence[str], n_boot: int,
                 seed: int) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{row: {site: {metric: paired difference}}}`` of every row against ``baseline``, per site and
    over "all sites"; seed / fold s of a row is paired with seed / fold s of the baseline.

    Raises:
        ComparisonError: a row was scored on other test cases than the baseline.
    """
    import numpy as np

    from chestdx.evaluate.compare import (
        ComparisonError,
        align_predictions,
        paired_difference,
        read_predictions,
    )

    base = [read_predictions(p) for p in preds[baseline]]
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for name, files in preds.items():
        if name == baseline:
            continue
        pairs_by_site: dict[str, list[Any]] = {}
        for a, path in zip(base, files, strict=False):
            b = read_predictions(path)
            order = align_predictions(a, b)
            pb = b.probs[order]
            groups = np.asarray(a.groups, dtype=object)
            sites = np.asarray(a.sites)
            pairs_by_site.setdefault("all sites", []).append((a.labels, a.probs, pb, list(groups)))
            if len(set(a.sites)) > 1:
                for site in sorted(set(a.sites)):
                    m = sites == site
                    pairs_by_site.setdefault(site, []).append((a.labels[m], a.probs[m], pb[m], list(groups[m])))
        out[name] = {}
        for site, pairs in pairs_by_site.items():
            figs: dict[str, dict[str, float]] = {}
            for m in metrics:
                try:
                    figs[m] = paired_difference(pairs, base[0].class_names, [m], n_boot=n_boot, seed=seed)[m]
                except ComparisonError:
                    continue  # a figure compare does not know (the table shows n/a or the value alone)
            out[name][site] = figs
    return out


def _differences_markdown(comparisons: dict[str, Any], baseline: str, metrics: Sequence[str], n_boot: int) -> str:
    import math

    from chestdx.evaluate.compare import differs

    if not comparisons:
        return ""
    sites: list[str] = []
    for per_site in comparisons.values():
        sites += [s for s in per_site if s not in sites]
    lines = [f"## Paired differences from the baseline row ({baseline})", "",
             "Row minus baseline, percentage points, on the same test cases (seed s against seed s); 95% "
             f"interval and p-value from a patient-level paired bootstrap ({n_boot} resamples). `*` in the "
             "tables above: the interval excludes 0.", ""]
    for site in sites:
        lines += [f"### {site}", "", "| Method | " + " | ".join(metrics) + " |",
                  "|---|" + "|".join("---" for _ in metrics) + "|"]
        for name, per_site in comparisons.items():
            cells = []
            for m in metrics:
                f = per_site.get(site, {}).get(m)
                if f is None or not math.isfinite(f["difference"]):
                    cells.append("n/a")
                    continue
                ci = "" if not math.isfinite(f["low"]) else f" ({100 * f['low']:+.2f} to {100 * f['high']:+.2f})"
                cells.append(f"{100 * f['difference']:+.2f}{ci} p={f['p_value']:.2g}{' *' if differs(f) else ''}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def run_table(recipes: Sequence[str], sources: Sequence[str | Path], out: str | Path, *, seeds: int = 3,
              overrides: dict[str, Any] | None = None, n_boot: int = 200, progress: bool = False,
              metrics: Sequence[str] = ("accuracy", "precision", "recall", "f1"),
              folds: int | None = None, n_boot_compare: int = 2000, device: Any = "cpu") -> str:
    """Train and evaluate ``recipes`` x ``seeds``; returns the markdown table (also written).

    Training runs where each recipe's ``trainer.accelerator`` / ``trainer.devices`` say; the
    evaluations run on ``device`` (a :class:`torch.device` or an accelerator,
    :func:`chestdx.engine.device.resolve_device`).

    The first recipe is the baseline row; every other row is compared with it (paired, patient-level
    bootstrap, ``n_boot_compare`` resamples) and the cells that differ are marked (module docstring).
    A row that trains exactly like an earlier row (same :func:`training_key`) reuses that row's runs
    and only answers with its own inference procedure. ``overrides`` apply to every row, except an
    ``inference.params`` key, which goes only to the rows whose procedure takes it (:func:`row_overrides`;
    every row is validated before anything trains, :func:`load_rows`).

    The data are read once: every recipe and seed sees the same samples and the same split (the
    split is seeded by the first seed), so the rows differ only by method and training seed.

    With ``folds = k`` (k-fold cross-validation, e.g. MAG-SD's 5 folds) each seed is replaced by a
    fold: run ``OUT/<recipe>/fold<f>`` tests on patient-grouped fold f and trains on the others
    (15 % of their images, by patient, held out for validation); the table is mean +- std over folds.
    """
    import json

    from chestdx.config import deep_merge, load_recipe
    from chestdx.engine.run import Run
    from chestdx.engine.train import train
    from chestdx.evaluate.report import seed_table
    from chestdx.evaluate.run import evaluate_run
    from chestdx.tasks import load_samples

    out = Path(out)
    overrides = overrides or {}
    first = load_rows(recipes, overrides)[0]  # every row checked before anything trains
    samples = load_samples(sources, first)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    preds: dict[str, list[Path]] = {}
    trained: dict[str, str] = {}  # training_key -> the row whose runs hold that training
    shared: dict[str, str] = {}  # row -> the row whose checkpoints it answers
    for name in recipes:
        for s in range(folds or seeds):
            if folds:
                from chestdx.experiments.kfold import fold_samples

                recipe = load_recipe(name, row_overrides(name, overrides))
                sub = f"fold{s}"
                run_samples = fold_samples(samples, folds, s, seed=first.seed)
            else:
                recipe = load_recipe(name, deep_merge(row_overrides(name, overrides), {"seed": first.seed + s}))
                sub = f"seed{s}"
                run_samples = samples
            owner = trained.setdefault(training_key(recipe), recipe.name)
            run_dir = out / owner / sub
            if owner != recipe.name:  # same training as an earlier row: its checkpoint, this row's answers
                shared[recipe.name] = owner
                run = Run(run_dir)
                eval_dir = run_dir / f"eval-test-{recipe.name}"
                metrics_file = eval_dir / "metrics.json"
                res = json.loads(metrics_file.read_text()) if metrics_file.is_file() else evaluate_run(
                    run, split="test", n_boot=n_boot, out=eval_dir, procedure=recipe.inference.name,
                    procedure_params=dict(recipe.inference.params), device=device)
                res["checkpoint_of"] = owner
            else:
                if (run_dir / "train.json").is_file():
                    run = Run(run_dir)
                else:
                    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
                    run = train(recipe, sources, run_dir, samples=None if resume else run_samples,
                                resume=resume, progress=progress)
                eval_dir = run_dir / "eval-test"
                metrics_file = eval_dir / "metrics.json"
                res = json.loads(metrics_file.read_text()) if metrics_file.is_file() else evaluate_run(
                    run, split="test", n_boot=n_boot, out=eval_dir, device=device)
            raw.setdefault(recipe.name, []).append(res)
            preds.setdefault(recipe.name, []).append(eval_dir / "predictions.csv")
            blocks = dict(res.get("sites") or {})
            blocks["all sites"] = res["overall"]
            for site, block in blocks.items():
                results.setdefault(recipe.name, {}).setdefault(site, []).append(block)
    baseline = next(iter(results))
    comparisons = _comparisons(preds, baseline, metrics, n_boot_compare, first.seed)
    write_json(out / "results.json", raw)
    write_json(out / "comparisons.json", {"baseline": baseline, "n_boot": n_boot_compare,
                                          "shared_checkpoints": shared, "rows": comparisons})
    from chestdx.evaluate.compare import differs

    marks: dict[str, dict[str, set[str]]] = {}
    for row, per_site in comparisons.items():
        for site, figs in per_site.items():
            marks.setdefault(site, {})[row] = {m for m, f in figs.items() if differs(f)}
    notes = {baseline: "(baseline)", **{row: f"({owner}'s checkpoint)" for row, owner in shared.items()}}
    table = seed_table(results, metrics=tuple(metrics), marks=marks, note=notes)
    header = (f"Recipes {', '.join(recipes)}; {f'{folds} folds' if folds else f'{seeds} seed(s)'}; data {', '.join(str(s) for s in sources)}; "
              f"overrides {overrides or 'none'}. Binary tasks report the positive class; multi-class tasks the macro average. "
              f"`*`: differs from the baseline row ({baseline}): the 95% patient-level paired-bootstrap interval of "
              "the difference excludes 0.\n\n")
    text = header + table + "\n" + _differences_markdown(comparisons, baseline, metrics, n_boot_compare)
    write_text(out / "table.md", text)
    return text

