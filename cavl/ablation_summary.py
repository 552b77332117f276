"""The ablation table: each config variant's main metric per task over seeds, tested against the baseline.

    python -m cavl.ablation_summary --runs results/ablations/runs.json --md results/ablations/summary.md \
        --csv results/ablations/summary.csv --html results/ablations/summary.html \
        --plot results/ablations/summary.png [--resamples 10000]

RUNS.json: a JSON list, one object per (variant, seed, task) evaluation — `variant`, `seed`, `task`,
`metrics` (its metrics.json), `predictions` (its predictions.parquet), `copy_to` (where a copy of
the metrics.json goes), and for vqa, vcr, nlvr2 and rpg (whose predictions lack the gold labels)
`examples`, the evaluated split's task table (resources/tasks/{task}/{split}.parquet). rpg may name
`features` (the task's feature index): its candidates score phrases whose best scores tie exactly
(without them such a phrase is an error when its first best candidate is a hit). The first variant
is the baseline.

- table (CSV, Markdown, HTML with the per-seed values): per variant and task — variant, task,
  metric, mean, sd (sample s.d.; empty with one seed), seeds, difference (mean − the baseline's),
  p_value (two-sided paired bootstrap), significant (`*` when p < 0.05), examples — in percent.
  Variants in the list's order, tasks in registry order; p-values to 6 (CSV) or 2 significant digits.
- plot (PNG): one panel per task, per-seed points and mean ± s.d. bars, the baseline highlighted,
  p < 0.05 starred.

`example_scores` gives each example a score whose stratum means sum to the main metric (tir /
zs_tir: two query directions summing to rsum); `paired_bootstrap` resamples examples within strata,
one draw for every seed, keeping the correlation across seeds. Every input is read and checked (a
run's scores must give its metrics.json value) before anything is written; bad input is an error
naming the file (exit code 2). Every file is written atomically.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cavl.io import atomic_path
from cavl.metrics.grounding import as_boxes, candidate_hits, hit_rank
from cavl.metrics.retrieval import KS
from cavl.metrics.vqa import vqa_scores
from cavl.summary import to_csv, to_html_table, to_markdown, write_text_atomic
from cavl.tasks import REGISTRY, get_task

TABLE_COLUMNS = ["variant", "task", "metric", "mean", "sd", "seeds", "difference", "p_value", "significant",
                 "examples"]
SEED_COLUMNS = ["variant", "task", "seed", "metric", "value", "examples"]
SCORE_COLUMNS = ["example", "stratum", "score"]
RUN_KEYS = ("variant", "seed", "task", "metrics", "predictions", "copy_to")
ALPHA = 0.05  # `significant` marks p < ALPHA
RESAMPLES = 10_000
ONE_STRATUM = "all"
CHUNK_ELEMENTS = 1 << 22  # resampled indices held at once: chunks of resamples keep memory flat
METRIC_TOLERANCE = 1e-6  # percent: per-example scores against the metrics.json value (float rounding)


class AblationError(ValueError):
    """Input that cannot be summarised (the message names the file)."""


def _frame(examples, strata, scores) -> pd.DataFrame:
    out = pd.DataFrame({"example": np.asarray(examples).astype(str), "stratum": strata,
                        "score": np.asarray(scores, dtype=np.float64)})
    duplicated = int(out["example"].duplicated().sum())
    if duplicated:
        raise ValueError(f"{duplicated} predictions repeat an example id (e.g. "
                         f"{out['example'][out['example'].duplicated()].iloc[0]!r})")
    return out


def _require(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lack the columns {', '.join(missing)}")


def _gold(examples, key: str, ids: pd.Series, task: str, columns) -> pd.DataFrame:
    """The rows of `examples` for the predicted `ids`, in their order (as the task's metric reads them)."""
    if examples is None:
        raise ValueError(f"{task} predictions do not hold the gold labels: the evaluated split's task table "
                         "(examples) is needed")
    _require(examples, [key, *columns], f"the {task} examples")
    table = examples.set_index(key)
    if table.index.has_duplicates:
        raise ValueError(f"the {task} examples repeat {key}s (e.g. {table.index[table.index.duplicated()][0]!r})")
    missing = ~ids.isin(table.index)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} predictions have no row in the {task} examples (e.g. "
                         f"{key} {ids[missing].iloc[0]!r}): another split?")
    return table.loc[ids]


def _vqa_scores(predictions, examples) -> pd.DataFrame:
    """Each question's official VQA score (0, 30, 60, 90 or 100)."""
    _require(predictions, ["question_id", "answer"], "vqa predictions")
    gold = _gold(examples, "question_id", predictions["question_id"], "vqa", ["answers"])
    answers = [[] if a is None else list(a) for a in gold["answers"]]
    return _frame(predictions["question_id"], ONE_STRATUM,
                  100.0 * vqa_scores(predictions["answer"].tolist(), answers))


def _vcr_scores(predictions, examples) -> pd.DataFrame:
    """100 when both the answer and the rationale are right (q2ar), else 0."""
    _require(predictions, ["annot_id", "answer_pred", "rationale_pred"], "vcr predictions")
    gold = _gold(examples, "annot_id", predictions["annot_id"], "vcr", ["answer_label", "rationale_label"])
    right = ((predictions["answer_pred"].to_numpy() == gold["answer_label"].to_numpy())
             & (predictions["rationale_pred"].to_numpy() == gold["rationale_label"].to_numpy()))
    return _frame(predictions["annot_id"], ONE_STRATUM, 100.0 * right)


def _nlvr2_scores(predictions, examples) -> pd.DataFrame:
    """100 when the statement's label is right, else 0."""
    _require(predictions, ["identifier", "prediction"], "nlvr2 predictions")
    gold = _gold(examples, "identifier", predictions["identifier"], "nlvr2", ["label"])["label"].astype(bool)
    right = predictions["prediction"].to_numpy(bool) == gold.to_numpy(bool)
    return _frame(predictions["identifier"], ONE_STRATUM, 100.0 * right)


def _rpg_right(scores, best_box, candidates, gt) -> bool | None:
    """Whether a phrase is right at 1 under the metric's pessimistic ties; None when that needs
    the candidates and there are none (best scores tie and the first of them is a hit)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if candidates is not None:
        boxes = as_boxes("candidate_boxes", candidates)
        if len(boxes) != len(scores):
            raise ValueError(f"{len(scores)} region scores for {len(boxes)} candidates (other features?)")
        return bool(hit_rank(scores, candidate_hits(boxes, gt)) < 1)
    if len(scores) == 0 or not candidate_hits(as_boxes("best_box", [best_box]), gt)[0]:
        return False  # no candidate, or a wrong one scored ≥ every right one
    return True if (scores == scores.max()).sum() == 1 else None


def _rpg_scores(predictions, examples) -> pd.DataFrame:
    """100 when the phrase's best-scored candidate reaches IoU 0.5 (r@1), else 0; phrases whose
    entity has no box are left out, as the metric leaves them out."""
    from cavl.tasks.rpg import phrase_ids

    _require(predictions, ["phrase_id", "scores", "best_box"], "rpg predictions")
    if examples is not None:
        _require(examples, ["image_id", "sentence_index", "first_word_index"], "the rpg examples")
        examples = examples.assign(phrase_id=phrase_ids(examples))
    gold = _gold(examples, "phrase_id", predictions["phrase_id"], "rpg", ["gt_boxes"])
    candidates = gold["candidate_boxes"] if "candidate_boxes" in gold else [None] * len(gold)
    right, kept, unknown = [], [], 0
    for scores, best, cands, gt in zip(predictions["scores"], predictions["best_box"], candidates, gold["gt_boxes"]):
        gt = as_boxes("gt_boxes", gt)
        kept.append(len(gt) > 0)
        if kept[-1]:
            right.append(_rpg_right(scores, best, cands, gt))
            unknown += right[-1] is None
    if unknown:
        raise ValueError(f"{unknown} phrases have tied best scores whose first candidate is a hit: whether r@1 "
                         "counts them depends on the other tied candidates (give the examples their "
                         "candidate_boxes: the run's `features`)")
    return _frame(predictions["phrase_id"][np.asarray(kept, bool)], ONE_STRATUM, 100.0 * np.asarray(right, bool))


def _retrieval_scores(predictions, examples=None) -> pd.DataFrame:
    """Per query, 100 × the number of K in (1, 5, 10) with its rank < K; strata i2t and t2i (the
    mean of each is the sum of that direction's three recalls, and the two sum to rsum)."""
    _require(predictions, ["direction", "query", "rank"], "retrieval predictions (whole-split, "
                                                          "python -m cavl.evaluate)")
    ranks = predictions["rank"].to_numpy()
    hits = sum((ranks < k).astype(np.float64) for k in KS)
    direction = predictions["direction"].astype(str)
    return _frame(direction + ":" + predictions["query"].astype(str), direction.to_numpy(), 100.0 * hits)


# task → (the main metric the scores sum to, the scorer)
SCORERS = {
    "vqa": ("accuracy", _vqa_scores),
    "vcr": ("q2ar", _vcr_scores),
    "nlvr2": ("accuracy", _nlvr2_scores),
    "rpg": ("r@1", _rpg_scores),
    "tir": ("rsum", _retrieval_scores),
    "zs_tir": ("rsum", _retrieval_scores),
}
NEEDS_EXAMPLES = {"vqa", "vcr", "nlvr2", "rpg"}  # their predictions do not hold the gold labels
NEEDS_CANDIDATES = {"rpg"}  # `features` rebuild its candidate boxes (ties); other tasks ignore them


def main_metric(task: str) -> str:
    """The task's main metric, the one its per-example scores add up to."""
    if task not in SCORERS:
        raise ValueError(f"no per-example scores for task {task!r}; known: {', '.join(SCORERS)}")
    metric, actual = SCORERS[task][0], get_task(task).main_metric
    if actual != metric:
        raise ValueError(f"{task}'s main metric is now {actual!r}: its per-example scores add up to {metric!r}")
    return metric


def example_scores(task: str, predictions: pd.DataFrame, examples: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per evaluated example: `example` (an id stable across runs), `stratum` and `score`, such that
    the sum over strata of the mean score is the task's main metric (percent, as metrics.json).

    `examples`: the evaluated split's task table, for the gold labels of vqa, vcr, nlvr2 and rpg
    (rpg: with `candidate_boxes`, as the task's with_features gives them, ties are exact)."""
    main_metric(task)
    return SCORERS[task][1](predictions, examples)


def metric_from_scores(scores: pd.DataFrame) -> float:
    """The main metric of per-example scores: the sum over strata of the mean score."""
    return float(scores.groupby("stratum")["score"].mean().sum())


def _seed_key(seed):
    return (isinstance(seed, str), seed)


def _check_scores(frame: pd.DataFrame, name: str) -> None:
    _require(frame, ["seed", *SCORE_COLUMNS], f"the {name} scores")
    duplicated = int(frame.duplicated(["seed", "example"]).sum())
    if duplicated:
        raise ValueError(f"the {name} scores repeat {duplicated} (seed, example) pairs")
    if not np.isfinite(frame["score"].to_numpy(np.float64)).all():
        raise ValueError(f"the {name} scores are not all finite")


def _example_differences(baseline: pd.DataFrame, variant: pd.DataFrame) -> pd.Series:
    """Per (stratum, example), sorted: the variant's score minus the baseline's, averaged over seeds."""
    merged = baseline.merge(variant, on=["seed", "example"], how="outer", suffixes=("_base", "_variant"),
                            indicator=True)
    only_base = int((merged["_merge"] == "left_only").sum())
    only_variant = int((merged["_merge"] == "right_only").sum())
    if only_base or only_variant:
        raise ValueError(f"{only_base + only_variant} (seed, example) pairs are in only one of the two "
                         f"({only_base} only in the baseline, {only_variant} only in the variant)")
    restratified = int((merged["stratum_base"] != merged["stratum_variant"]).sum())
    if restratified:
        raise ValueError(f"{restratified} examples are in different strata in the baseline and the variant")
    merged["difference"] = merged["score_variant"] - merged["score_base"]
    table = merged.pivot(index=["stratum_base", "example"], columns="seed", values="difference")
    incomplete = int(table.isna().any(axis=1).sum())
    if incomplete:
        raise ValueError(f"{incomplete} examples are missing from some seeds: every seed must score the same "
                         "examples (the draw is shared by the seeds)")
    return table.mean(axis=1).sort_index()


def _bootstrap_statistics(groups: list, resamples: int, rng) -> np.ndarray:
    """The statistic (sum over strata of the mean) of `resamples` draws with replacement within
    each group, computed a chunk of resamples at a time."""
    out = np.empty(resamples)
    chunk = max(1, CHUNK_ELEMENTS // max(len(g) for g in groups))
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        total = np.zeros(n)
        for group in groups:
            total += group[rng.integers(0, len(group), size=(n, len(group)))].mean(axis=1)
        out[start : start + n] = total
    return out


def paired_bootstrap(baseline: pd.DataFrame, variant: pd.DataFrame, resamples: int = RESAMPLES,
                     seed: int = 0) -> dict:
    """Paired bootstrap of the metric difference variant − baseline.

    Both frames: `seed`, `example`, `stratum`, `score` (example_scores of each seed's run). Rows are
    paired by (seed, example) over the seeds both have; the statistic is the mean over those seeds
    of each seed's difference (sum over strata of the mean). Examples are resampled with
    replacement within their stratum, one draw for all seeds; two-sided
    p = (1 + #{|d* − d| ≥ |d|}) / (1 + resamples). Returns difference, p_value, examples, seeds
    (shared, sorted) and resamples. ValueError for pairs present in only one frame (naming how many)."""
    if int(resamples) < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    _check_scores(baseline, "baseline")
    _check_scores(variant, "variant")
    seeds = sorted(set(baseline["seed"]) & set(variant["seed"]), key=_seed_key)
    if not seeds:
        raise ValueError(f"the baseline (seeds {sorted(set(baseline['seed']), key=_seed_key)}) and the variant "
                         f"(seeds {sorted(set(variant['seed']), key=_seed_key)}) share no seed")
    differences = _example_differences(baseline[baseline["seed"].isin(seeds)], variant[variant["seed"].isin(seeds)])
    strata = differences.index.get_level_values(0)
    groups = [differences[strata == s].to_numpy() for s in strata.unique()]
    observed = float(sum(g.mean() for g in groups))
    draws = _bootstrap_statistics(groups, int(resamples), np.random.default_rng(seed))
    extreme = int((np.abs(draws - observed) >= abs(observed)).sum())
    return {"difference": observed, "p_value": (1 + extreme) / (1 + int(resamples)),
            "examples": len(differences), "seeds": seeds, "resamples": int(resamples)}


@dataclass(eq=False)
class Evaluation:
    """One (variant, seed, task) cell of the grid: its main metric and its per-example scores."""

    variant: str
    seed: int | str
    task: str
    metric: str
    value: float  # the metrics.json value of `metric`
    scores: pd.DataFrame  # example_scores of its predictions
    metrics_bytes: bytes = b""  # its metrics.json, to be copied to `copy_to`
    copy_to: str | None = None


def _in_order(values) -> list:
    return list(dict.fromkeys(values))


def _task_key(task):
    order = list(REGISTRY)
    return (order.index(task) if task in order else len(order), task)


def _seed_scores(cell: list) -> pd.DataFrame:
    return pd.concat([e.scores.assign(seed=e.seed) for e in cell], ignore_index=True)


def _row(variant: str, task: str, cell: list, baseline: list | None, resamples: int) -> dict:
    values = [e.value for e in cell]
    mean = statistics.fmean(values)
    row = {"variant": variant, "task": task, "metric": cell[0].metric, "mean": mean,
           "sd": statistics.stdev(values) if len(values) > 1 else None, "seeds": len(values),
           "difference": None, "p_value": None, "significant": None,
           "examples": int(cell[0].scores["example"].nunique())}
    if baseline:
        try:
            test = paired_bootstrap(_seed_scores(baseline), _seed_scores(cell), resamples)
        except ValueError as error:
            raise AblationError(f"{variant} against {baseline[0].variant} on {task}: {error}") from error
        row.update(difference=mean - statistics.fmean(e.value for e in baseline), p_value=test["p_value"],
                   significant="*" if test["p_value"] < ALPHA else None, examples=test["examples"])
    return row


def ablation_rows(evaluations: list, resamples: int = RESAMPLES) -> list[dict]:
    """One row per variant and task (TABLE_COLUMNS): variants in their order of first appearance,
    the first one the baseline; tasks in registry order. The other variants are tested against
    the baseline (no difference or test where the baseline has no run of the task)."""
    variants = _in_order(e.variant for e in evaluations)
    tasks = sorted(_in_order(e.task for e in evaluations), key=_task_key)
    cells = {}
    for e in evaluations:
        cells.setdefault((e.variant, e.task), []).append(e)
    rows = []
    for variant in variants:
        for task in tasks:
            if (variant, task) in cells:
                baseline = None if variant == variants[0] else cells.get((variants[0], task))
                rows.append(_row(variant, task, sorted(cells[variant, task], key=lambda e: _seed_key(e.seed)),
                                 baseline, resamples))
    return rows


def seed_rows(evaluations: list) -> list[dict]:
    """One row per evaluation (SEED_COLUMNS), in the table's order, seeds sorted."""
    variants = _in_order(e.variant for e in evaluations)
    ordered = sorted(evaluations, key=lambda e: (variants.index(e.variant), _task_key(e.task), _seed_key(e.seed)))
    return [{"variant": e.variant, "task": e.task, "seed": e.seed, "metric": e.metric, "value": e.value,
             "examples": int(e.scores["example"].nunique())} for e in ordered]


def _explanation(baseline: str, resamples: int) -> str:
    return (f"Each task's main metric (percent, as in metrics.json) per config variant: mean and sample "
            f"standard deviation over the seeds; difference: the mean minus the baseline's ({baseline}); "
            f"p_value: two-sided paired bootstrap of the difference ({resamples} resamples of the evaluated "
            f"examples, within strata, one draw for every seed the two share).")


def _marker_note() -> str:
    return f"`*` in significant: p < {ALPHA:g} against the baseline."


def ablation_markdown(rows: list[dict], seeds: list[dict], resamples: int) -> str:
    """The ablation document: the table, the marker's meaning, then the per-seed values."""
    return ("# CAVL ablation\n\n" + _explanation(rows[0]["variant"], resamples) + "\n\n"
            + to_markdown(rows, TABLE_COLUMNS) + "\n" + _marker_note() + "\n\n"
            + "## Per seed\n\n" + to_markdown(seeds, SEED_COLUMNS))


def ablation_html(rows: list[dict], seeds: list[dict], resamples: int) -> str:
    """A standalone page with the table and the per-seed values."""
    style = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;"
             "margin-bottom:1em}th,td{border:1px solid #bbb;padding:.25em .6em;text-align:left}"
             "th{background:#eef}td.n{text-align:right}")
    note = html.escape(_marker_note().replace("`", ""))
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>CAVL ablation</title>"
            f"<style>{style}</style></head><body>\n<h1>CAVL ablation</h1>\n"
            f"<p>{html.escape(_explanation(rows[0]['variant'], resamples))}</p>\n"
            + to_html_table(rows, TABLE_COLUMNS) + f"<p>{note}</p>\n<h2>Per seed</h2>\n"
            + to_html_table(seeds, SEED_COLUMNS) + "</body></html>\n")


def ablation_png(rows: list[dict], seeds: list[dict]) -> bytes:
    """PNG: one panel per task, per-seed values as points, mean ± s.d. as a bar, the baseline
    highlighted, p < ALPHA starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = _in_order(r["task"] for r in rows)
    baseline = rows[0]["variant"]
    width = max(3.2, 0.6 * max(sum(r["task"] == t for r in rows) for t in tasks) + 1.2)
    fig, axes = plt.subplots(1, len(tasks), figsize=(width * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        panel = [r for r in rows if r["task"] == task]
        for x, row in enumerate(panel):
            is_baseline = row["variant"] == baseline
            ax.bar(x, row["mean"], color="tab:orange" if is_baseline else "tab:blue", alpha=0.55,
                   edgecolor="black" if is_baseline else "none",
                   yerr=row["sd"] if row["sd"] is not None else None, capsize=4)
            values = [s["value"] for s in seeds if s["variant"] == row["variant"] and s["task"] == task]
            ax.scatter(x + np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [x], values,
                       color="black", s=12, zorder=3)
            if row["significant"]:
                top = max(values + [row["mean"] + (row["sd"] or 0.0)])
                ax.annotate("*", (x, top), ha="center", va="bottom", fontsize=14, color="tab:red")
        ax.set_xticks(range(len(panel)), [r["variant"] for r in panel], rotation=30, ha="right", fontsize=8)
        ax.set_title(task, fontsize=9)
        ax.set_ylabel(panel[0]["metric"], fontsize=8)
        ax.tick_params(labelsize=8)
        ax.margins(y=0.15)
    fig.suptitle(f"Main metric per variant: mean ± s.d. over seeds (points: the seeds)\n"
                 f"* p < {ALPHA:g} against {baseline}", fontsize=9)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()


def read_runs_file(path) -> list[dict]:
    """The entries of a RUNS.json, each checked for its keys."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise AblationError(f"{path}: cannot read the runs: {error}") from error
    if not isinstance(entries, list) or not entries:
        raise AblationError(f"{path}: expected a non-empty JSON list of runs")
    for number, entry in enumerate(entries):
        where = f"{path}: run {number}"
        if not isinstance(entry, dict):
            raise AblationError(f"{where}: expected an object, got {type(entry).__name__}")
        missing = [k for k in RUN_KEYS if k not in entry]
        if missing:
            raise AblationError(f"{where}: missing {', '.join(missing)}")
        if not isinstance(entry["variant"], str) or not entry["variant"]:
            raise AblationError(f"{where}: variant must be a non-empty string")
        if isinstance(entry["seed"], bool) or not isinstance(entry["seed"], (int, str)):
            raise AblationError(f"{where}: seed must be an integer or a string, got {entry['seed']!r}")
        paths = [k for k in ("metrics", "predictions", "copy_to", "examples", "features")
                 if k in entry and (not isinstance(entry[k], str) or not entry[k])]
        if paths:
            raise AblationError(f"{where}: {', '.join(paths)} must be paths (non-empty strings)")
        if entry["task"] not in REGISTRY:
            raise AblationError(f"{where}: unknown task {entry['task']!r}; registered: {', '.join(REGISTRY)}")
        if entry["task"] in NEEDS_EXAMPLES and "examples" not in entry:
            raise AblationError(f"{where}: {entry['task']} predictions do not hold the gold labels: give "
                                "\"examples\", the evaluated split's task table")
    _check_unique(path, entries, lambda e: (e["variant"], e["seed"], e["task"]), "(variant, seed, task)")
    _check_unique(path, entries, lambda e: e["copy_to"], "copy_to")
    return entries


def _check_unique(path, entries, key, what):
    seen = set()
    for entry in entries:
        if key(entry) in seen:
            raise AblationError(f"{path}: two runs with the same {what}: {key(entry)}")
        seen.add(key(entry))


def _read_parquet(path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises many kinds; every one means a file we cannot use
        raise AblationError(f"{path}: cannot read: {error}") from error


def _read_metrics(path, task: str) -> tuple[dict, bytes]:
    """(record, its bytes) of a metrics.json of `task`. Only the main metric must be a number: a
    metric may be null (vqa: an answer type the split lacks)."""
    try:
        raw = Path(path).read_bytes()
        record = json.loads(raw)
    except (OSError, ValueError) as error:
        raise AblationError(f"{path}: cannot read metrics: {error}") from error
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        raise AblationError(f"{path}: expected a metrics.json object with a 'metrics' object")
    if record.get("task") != task:
        raise AblationError(f"{path}: holds the metrics of task {record.get('task')!r}, the run is {task!r}")
    return record, raw


def _examples(entry: dict, record: dict, cache: dict) -> pd.DataFrame | None:
    """The entry's examples table, for the tasks whose scores need it (rpg with `features`: with
    its candidate boxes), read once per path."""
    if "examples" not in entry or entry["task"] not in NEEDS_EXAMPLES:
        return None
    features = entry.get("features") if entry["task"] in NEEDS_CANDIDATES else None
    data = (record.get("config") or {}).get("data") if features else None
    if features and not isinstance(data, dict):
        raise AblationError(f"{entry['metrics']}: no config.data (max_regions) to cut {features}'s regions with")
    key = ("examples", entry["examples"], features, json.dumps(data, sort_keys=True))
    if key not in cache:
        examples = _read_parquet(entry["examples"])
        if features:
            from cavl.tasks.base import DataSettings

            task = get_task(entry["task"])
            try:
                regions = task.region_source(features, DataSettings(**data))
                examples = task.with_features(examples, regions, entry["examples"])
            except (OSError, ValueError, TypeError) as error:
                raise AblationError(f"{features}: cannot read the candidate regions: {error}") from error
        cache[key] = examples
    return cache[key]


def read_run(entry: dict, cache: dict) -> Evaluation:
    """One entry's evaluation; its per-example scores must give its metrics.json value."""
    task = entry["task"]
    record, raw = _read_metrics(entry["metrics"], task)
    metric = main_metric(task)
    value = record["metrics"].get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AblationError(f"{entry['metrics']}: its {metric!r} is not a number: {value!r}")
    examples = _examples(entry, record, cache)
    key = ("scores", task, entry["predictions"], entry.get("examples"), entry.get("features"))
    if key not in cache:  # cells that share a job (zero-shot tasks over seeds) share its predictions
        predictions = _read_parquet(entry["predictions"])
        try:
            cache[key] = example_scores(task, predictions, examples)
        except ValueError as error:
            raise AblationError(f"{entry['predictions']}: {error}") from error
    scores = cache[key]
    recomputed = metric_from_scores(scores)
    if not math.isclose(recomputed, value, rel_tol=METRIC_TOLERANCE, abs_tol=METRIC_TOLERANCE):
        raise AblationError(f"{entry['predictions']}: its examples give {metric} {recomputed:.6g}, "
                            f"{entry['metrics']} has {value:.6g} (predictions of another run, or another split?)")
    return Evaluation(entry["variant"], entry["seed"], task, metric, float(value), scores, raw, entry["copy_to"])


def write_bytes_atomic(data: bytes, path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", required=True, help="JSON list of the grid's runs (module docstring)")
    p.add_argument("--md", required=True, help="Markdown table to write")
    p.add_argument("--csv", required=True, help="CSV table to write")
    p.add_argument("--html", required=True, help="HTML page with the table and the per-seed values to write")
    p.add_argument("--plot", required=True, help="PNG of the main metric per variant and task to write")
    p.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples (default %(default)s)")
    args = p.parse_args(argv)
    if args.resamples < 1:
        p.error("--resamples must be >= 1")
    try:
        cache = {}
        evaluations = [read_run(entry, cache) for entry in read_runs_file(args.runs)]
        rows, seeds = ablation_rows(evaluations, args.resamples), seed_rows(evaluations)
    except AblationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # everything rendered before the first write
    texts = {args.csv: to_csv(rows, TABLE_COLUMNS), args.md: ablation_markdown(rows, seeds, args.resamples),
             args.html: ablation_html(rows, seeds, args.resamples)}
    png = ablation_png(rows, seeds)
    for e in evaluations:
        write_bytes_atomic(e.metrics_bytes, e.copy_to)
    for path, text in texts.items():
        write_text_atomic(text, path)
    write_bytes_atomic(png, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
