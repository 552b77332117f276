"""One table of every task's results, a comparison of the finetuning methods, and a chance plot.

    python -m cavl.summary --metrics results/*/metrics.json --train-logs results/*/log.jsonl \
        --md results/summary.md --csv results/summary.csv --html results/summary.html \
        --methods results/methods.csv --plot results/summary.png

- summary (CSV, Markdown, HTML for the Snakemake report, which shows HTML inline): one row per
  task and metric of each `results/{task}/metrics.json` (percent). `p_value`: the exact one-sided
  p-value against the task's chance predictor (metrics.json `significance`), with 6 (CSV) or 2
  significant digits; one below the float range is written from its log10.
- methods (CSV): one row per task — trainable parameters, median throughput and step time from
  its `log.jsonl` (matched by folder), main metric, chance and gain over chance.
- plot (PNG): each task's main metric beside its chance level.

Every file is written atomically.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import statistics
import sys
from pathlib import Path

from cavl.io import atomic_path
from cavl.tasks import REGISTRY

SUMMARY_COLUMNS = ["task", "split", "method", "metric", "value", "chance", "p_value", "examples"]
METHOD_COLUMNS = ["task", "method", "trainable_params", "trainable_pct", "samples_per_s",
                  "step_s", "main_metric", "value", "chance", "gain"]
REQUIRED_KEYS = ("task", "split", "method", "metrics", "chance")
MARKDOWN_DECIMALS = {"step_s": 2}  # other floats: 1 decimal, as papers report percentages
P_VALUE_DIGITS = {"csv": 6, "text": 2}  # significant digits of p-values (CSV; Markdown and HTML)


class SummaryError(ValueError):
    """A metrics file or training log that cannot be summarised (the message names the file)."""


def load_metrics(path) -> dict:
    """A metrics.json, checked for the keys the summary needs."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SummaryError(f"{path}: cannot read metrics: {error}") from error
    if not isinstance(record, dict):
        raise SummaryError(f"{path}: expected a JSON object, got {type(record).__name__}")
    for key in REQUIRED_KEYS:
        if key not in record:
            raise SummaryError(f"{path}: missing key {key!r}")
    for key in ("metrics", "chance"):
        if not isinstance(record[key], dict):
            raise SummaryError(f"{path}: {key!r} must be an object of metric → number")
    if not record["metrics"]:
        raise SummaryError(f"{path}: 'metrics' is empty")
    for name, value in record["metrics"].items():
        if value is not None and not _is_number(value):  # null: not defined on this split (a VQA answer type it lacks)
            raise SummaryError(f"{path}: metrics[{name!r}] is not a number: {value!r}")
    return record


def load_train_log(path) -> list[dict]:
    """The records of a log.jsonl (one JSON object per logged step)."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise SummaryError(f"{path}: line {number} is not JSON: {error}") from error
    return records


def main_metric(task: str, metrics: dict) -> str:
    """The metric a task is judged by (the task's own; the first one for unregistered tasks)."""
    if task in REGISTRY:
        from cavl.tasks import get_task  # imports the model code: only when needed

        name = get_task(task).main_metric
        if name in metrics:
            return name
    return next(iter(metrics))


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per task and metric, tasks in registry order, metrics in their file's order."""
    rows = []
    for record in sorted(records, key=_task_order):
        significance = record.get("significance")
        significance = significance if isinstance(significance, dict) else {}
        for metric, value in record["metrics"].items():
            chance = record["chance"].get(metric)
            test = significance.get(metric)
            test = test if isinstance(test, dict) and _is_number(test.get("p_value")) else {}
            log10 = test.get("log10_p_value")
            rows.append({"task": record["task"], "split": record["split"], "method": record["method"],
                         "metric": metric, "value": value,
                         "chance": chance if _is_number(chance) else None,
                         "p_value": test.get("p_value"),
                         "log10_p_value": log10 if _is_number(log10) else None,  # formats a p below the float range
                         "examples": record.get("num_examples")})
    return rows


def method_rows(records: list[dict], logs: dict[str, list[dict]]) -> list[dict]:
    """One row per task: what its method trains, how fast it trained, and what it reached."""
    rows = []
    for record in sorted(records, key=_task_order):
        task = record["task"]
        metric = main_metric(task, record["metrics"])
        value, chance = record["metrics"][metric], record["chance"].get(metric)
        trainable, total = record.get("trainable_params"), record.get("total_params")
        speeds = [r["samples_per_s"] for r in logs.get(task, []) if _is_number(r.get("samples_per_s"))]
        speed = statistics.median(speeds) if speeds else None
        batch = ((record.get("config") or {}).get("train") or {}).get("batch_size")
        rows.append({
            "task": task, "method": record["method"], "trainable_params": trainable,
            "trainable_pct": 100 * trainable / total if trainable is not None and total else None,
            "samples_per_s": speed,
            "step_s": batch / speed if speed and _is_number(batch) else None,
            "main_metric": metric, "value": value,
            "chance": chance if _is_number(chance) else None,
            "gain": value - chance if _is_number(chance) else None,
        })
    return rows


def to_csv(rows: list[dict], columns: list[str]) -> str:
    """Rows as CSV text; None → empty cell, floats with 4 decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_p_value_cell(row, P_VALUE_DIGITS["csv"]) if c == "p_value" else _cell(row[c], 4)
                         for c in columns])
    return out.getvalue()


def to_markdown(rows: list[dict], columns: list[str]) -> str:
    """Rows as a Markdown table; None → "–", floats with 1 decimal."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_text_cell(row, c) or "–" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(summary: list[dict], methods: list[dict]) -> str:
    """The summary document: the results table, then the method comparison."""
    return (
        "# CAVL results\n\n"
        "All metrics in percent; `chance` is a random (or majority-answer) predictor on the same split.\n"
        "`p_value`: exact one-sided p-value of the metric against its task's chance predictor "
        "(metrics.json `significance`).\n\n"
        + to_markdown(summary, SUMMARY_COLUMNS)
        + "\n## Finetuning methods\n\n"
        "Trainable parameters, median training throughput (samples/s) and step time (s) from each "
        "task's log.jsonl, and the task's main metric against chance.\n\n"
        + to_markdown(methods, METHOD_COLUMNS)
    )


def to_html_table(rows: list[dict], columns: list[str]) -> str:
    """Rows as an HTML table (cells escaped, numbers as in the Markdown table)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_html_cell(row, c) for c in columns) + "</tr>\n" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


def summary_html(summary: list[dict], methods: list[dict]) -> str:
    """A standalone page with the results table and the method comparison."""
    style = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;"
             "margin-bottom:2em}th,td{border:1px solid #bbb;padding:.25em .6em;text-align:left}"
             "th{background:#eef}td.n{text-align:right}")
    return (
        f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>CAVL results</title>"
        f"<style>{style}</style></head><body>\n<h1>CAVL results</h1>\n"
        "<p>All metrics in percent; <em>chance</em> is a random (or majority-answer) predictor on the "
        "same split; <em>p_value</em>: exact one-sided p-value of the metric against its task's chance "
        "predictor (metrics.json <code>significance</code>).</p>\n" + to_html_table(summary, SUMMARY_COLUMNS)
        + "<h2>Finetuning methods</h2>\n<p>Trainable parameters, median training throughput "
        "(samples/s) and step time (s) from each task's log.jsonl, and the task's main metric "
        "against chance.</p>\n" + to_html_table(methods, METHOD_COLUMNS) + "</body></html>\n"
    )


def plot_main_metrics(methods: list[dict], path) -> None:
    """Each task's main metric beside its chance level (one panel per task: scales differ, rsum
    runs to 600), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(methods), figsize=(1.8 * len(methods) + 1, 3.2), squeeze=False)
    for ax, row in zip(axes[0], methods):
        values = [row["value"], row["chance"] or 0.0]
        bars = ax.bar(["CAVL", "chance"], values, color=["tab:blue", "tab:gray"])
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_title(f"{row['task']} ({row['method']})", fontsize=9)
        ax.set_ylabel(row["main_metric"], fontsize=8)
        ax.set_ylim(0, max(values + [1.0]) * 1.2)
        ax.tick_params(labelsize=8)
    fig.suptitle("Main metric per task against chance (percent)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_text_atomic(text: str, path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--metrics", nargs="+", required=True, help="results/{task}/metrics.json files")
    p.add_argument("--train-logs", nargs="*", default=[],
                   help="results/{task}/log.jsonl files (matched to metrics by folder)")
    p.add_argument("--md", required=True, help="Markdown summary to write")
    p.add_argument("--csv", required=True, help="CSV summary to write")
    p.add_argument("--html", help="HTML page with the summary and method tables to write")
    p.add_argument("--methods", help="CSV method comparison to write")
    p.add_argument("--plot", help="PNG of main metric vs chance to write")
    args = p.parse_args(argv)
    try:
        records = [load_metrics(path) for path in args.metrics]
        tasks = [record["task"] for record in records]
        if len(set(tasks)) != len(tasks):
            raise SummaryError(f"two metrics files for one task: {', '.join(args.metrics)}")
        by_folder = {Path(path).parent: record["task"] for path, record in zip(args.metrics, records)}
        logs = {}
        for path in args.train_logs:
            task = by_folder.get(Path(path).parent)
            if task is None:
                raise SummaryError(f"{path}: no metrics.json in the same folder")
            logs[task] = load_train_log(path)
    except SummaryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary, methods = summary_rows(records), method_rows(records, logs)
    write_text_atomic(to_csv(summary, SUMMARY_COLUMNS), args.csv)
    write_text_atomic(summary_markdown(summary, methods), args.md)
    if args.html:
        write_text_atomic(summary_html(summary, methods), args.html)
    if args.methods:
        write_text_atomic(to_csv(methods, METHOD_COLUMNS), args.methods)
    if args.plot:
        plot_main_metrics(methods, args.plot)
    return 0


def _task_order(record):
    order = list(REGISTRY)
    return (order.index(record["task"]) if record["task"] in order else len(order), record["task"])


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _html_cell(row, column) -> str:
    value = row[column]
    text = html.escape(_text_cell(row, column) or "–")
    return f'<td class="n">{text}</td>' if _is_number(value) else f"<td>{text}</td>"


def _text_cell(row, column) -> str:
    """A cell of the Markdown / HTML tables ("" for None)."""
    if column == "p_value":
        return _p_value_cell(row, P_VALUE_DIGITS["text"])
    return _cell(row[column], MARKDOWN_DECIMALS.get(column, 1))


def _p_value_cell(row, digits) -> str:
    """A p-value with `digits` significant digits ("0.011", "3.2e-45"); one below the float range
    (0.0) from its log10 ("3.2e-1235"); "" without one."""
    p, log10 = row.get("p_value"), row.get("log10_p_value")
    if p is None:
        return ""
    if p > 0 or log10 is None:
        return f"{p:.{digits}g}"
    exponent = math.floor(log10)
    mantissa = round(10 ** (log10 - exponent), digits - 1)
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:.{digits - 1}f}e{exponent}"


def _cell(value, decimals) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
