"""cavl.summary: the results table, the method comparison and their error messages."""

import csv
import json
import math
import re

import pytest

from cavl import summary


def write_metrics(folder, task, method, metrics, chance, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"task": task, "split": "val", "method": method, "metrics": metrics, "chance": chance,
              "num_examples": 10, **extra}
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder / "metrics.json"


def write_log(folder, speeds):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": i, "loss": 1.0, "samples_per_s": s}) for i, s in enumerate(speeds, 1)]
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "log.jsonl"


@pytest.fixture
def run(tmp_path):
    """Two tasks as a run leaves them: vqa trained with a log, zs_tir evaluated only."""
    results = tmp_path / "results"
    vqa = write_metrics(results / "vqa", "vqa", "adapter2",
                        {"accuracy": 43.5, "yes/no": 60.0}, {"accuracy": 21.75, "yes/no": 60.0},
                        trainable_params=250, total_params=1000,
                        config={"train": {"batch_size": 16}},
                        significance={"accuracy": {"p_value": 11 / 1024, "log10_p_value": math.log10(11 / 1024)}})
    # i2t: a p-value below the float range (0.0 in the file), written from its log10
    zs = write_metrics(results / "zs_tir", "zs_tir", "zero-shot",
                       {"i2t_r@1": 10.0, "t2i_r@1": 12.0, "rsum": 134.0},
                       {"i2t_r@1": 5.0, "t2i_r@1": 5.0, "rsum": 150.0},
                       trainable_params=0, total_params=1000,
                       significance={"i2t_r@1": {"p_value": 0.0, "log10_p_value": -1234.5},
                                     "t2i_r@1": {"p_value": 3.25e-7, "log10_p_value": math.log10(3.25e-7)}})
    log = write_log(results / "vqa", [8.0, 4.0, 2.0])  # median 4 samples/s → 16 / 4 = 4 s a step
    return tmp_path, [zs, vqa], [log]


def test_summary_files(run):
    root, metrics, logs = run
    out = root / "out"
    args = ["--metrics", *map(str, metrics), "--train-logs", *map(str, logs),
            "--md", str(out / "summary.md"), "--csv", str(out / "summary.csv"),
            "--html", str(out / "summary.html"), "--methods", str(out / "methods.csv"), "--plot", str(out / "summary.png")]
    assert summary.main(args) == 0

    rows = list(csv.DictReader((out / "summary.csv").open()))
    # Registry order (vqa before zs_tir) whatever the argument order; one row per metric.
    assert [(r["task"], r["metric"]) for r in rows] == [
        ("vqa", "accuracy"), ("vqa", "yes/no"), ("zs_tir", "i2t_r@1"), ("zs_tir", "t2i_r@1"), ("zs_tir", "rsum")]
    assert rows[0] == {"task": "vqa", "split": "val", "method": "adapter2", "metric": "accuracy",
                       "value": "43.5000", "chance": "21.7500", "p_value": "0.0107422", "examples": "10"}
    # p-values of the tested metrics only; 10^-1234.5 = 3.16228e-1235
    assert [r["p_value"] for r in rows] == ["0.0107422", "", "3.16228e-1235", "3.25e-07", ""]

    methods = {r["task"]: r for r in csv.DictReader((out / "methods.csv").open())}
    assert methods["vqa"]["trainable_pct"] == "25.0000"
    assert methods["vqa"]["samples_per_s"] == "4.0000"
    assert methods["vqa"]["step_s"] == "4.0000"
    assert (methods["vqa"]["main_metric"], methods["vqa"]["gain"]) == ("accuracy", "21.7500")
    # zs_tir: its task's main metric (rsum, not the first key), no log → no speed.
    assert methods["zs_tir"]["main_metric"] == "rsum"
    assert methods["zs_tir"]["samples_per_s"] == methods["zs_tir"]["step_s"] == ""
    assert methods["zs_tir"]["gain"] == "-16.0000"

    md = (out / "summary.md").read_text()
    assert "| vqa | val | adapter2 | accuracy | 43.5 | 21.8 | 0.011 | 10 |" in md
    assert "| vqa | val | adapter2 | yes/no | 60.0 | 60.0 | – | 10 |" in md
    assert "| zs_tir | val | zero-shot | i2t_r@1 | 10.0 | 5.0 | 3.2e-1235 | 10 |" in md
    assert "| zs_tir | val | zero-shot | t2i_r@1 | 12.0 | 5.0 | 3.3e-07 | 10 |" in md
    assert "| task | split | method | metric | value | chance | p_value | examples |" in md
    assert "| zs_tir | zero-shot | 0 | 0.0 | – | – | rsum | 134.0 | 150.0 | -16.0 |" in md
    page = (out / "summary.html").read_text()
    assert ('<tr><td>vqa</td><td>val</td><td>adapter2</td><td>accuracy</td><td class="n">43.5</td>'
            '<td class="n">21.8</td><td class="n">0.011</td><td class="n">10</td></tr>') in page
    assert '<td>yes/no</td><td class="n">60.0</td><td class="n">60.0</td><td>–</td>' in page
    assert '<td>i2t_r@1</td><td class="n">10.0</td><td class="n">5.0</td><td class="n">3.2e-1235</td>' in page
    assert "<th>p_value</th>" in page
    assert '<td>zs_tir</td><td>zero-shot</td><td class="n">0</td><td class="n">0.0</td><td>–</td><td>–</td>' in page
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_missing_key_names_file_and_key(run, capsys):
    root, metrics, _ = run
    record = json.loads(metrics[1].read_text())
    del record["chance"]
    metrics[1].write_text(json.dumps(record))
    out = root / "out"
    code = summary.main(["--metrics", *map(str, metrics), "--md", str(out / "s.md"), "--csv", str(out / "s.csv")])
    assert code == 2
    err = capsys.readouterr().err
    assert str(metrics[1]) in err and "'chance'" in err
    assert not out.exists()  # nothing written on bad input


@pytest.mark.parametrize("text, message", [
    ("{not json", "cannot read metrics"),
    ('{"task": "vqa", "split": "val", "method": "full", "metrics": {"accuracy": "high"}, "chance": {}}',
     "metrics['accuracy'] is not a number"),
    ('{"task": "vqa", "split": "val", "method": "full", "metrics": {}, "chance": {}}', "'metrics' is empty"),
])
def test_bad_metrics_file(tmp_path, text, message):
    path = tmp_path / "vqa" / "metrics.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(summary.SummaryError, match=re.escape(message)) as error:
        summary.load_metrics(path)
    assert str(path) in str(error.value)


def test_a_metric_a_split_does_not_define_is_an_empty_cell(tmp_path):
    # VQA writes null for an answer type its eval split has no question of
    path = write_metrics(tmp_path / "vqa", "vqa", "adapter2", {"accuracy": 50.0, "number": None},
                         {"accuracy": 20.0, "number": None})
    out = tmp_path / "out"
    assert summary.main(["--metrics", str(path), "--md", str(out / "s.md"), "--csv", str(out / "s.csv")]) == 0
    rows = {r["metric"]: r for r in csv.DictReader((out / "s.csv").open())}
    assert rows["accuracy"]["value"] == "50.0000" and rows["number"]["value"] == rows["number"]["chance"] == ""


def test_log_without_metrics_and_bad_log_line(run, capsys):
    root, metrics, logs = run
    stray = write_log(root / "elsewhere", [1.0])
    base = ["--md", str(root / "s.md"), "--csv", str(root / "s.csv")]
    assert summary.main(["--metrics", *map(str, metrics), "--train-logs", str(stray), *base]) == 2
    assert f"{stray}: no metrics.json in the same folder" in capsys.readouterr().err
    logs[0].write_text('{"step": 1}\nbroken\n')
    assert summary.main(["--metrics", *map(str, metrics), "--train-logs", str(logs[0]), *base]) == 2
    assert f"{logs[0]}: line 2 is not JSON" in capsys.readouterr().err


def test_two_files_for_one_task(run, capsys):
    root, metrics, _ = run
    copy = write_metrics(root / "again", "vqa", "full", {"accuracy": 1.0}, {"accuracy": 0.5})
    code = summary.main(["--metrics", *map(str, metrics), str(copy),
                         "--md", str(root / "s.md"), "--csv", str(root / "s.csv")])
    assert code == 2
    assert "two metrics files for one task" in capsys.readouterr().err


def test_p_values_come_from_the_task_records(tmp_path):
    """A metrics.json as the tasks write it (cavl.metrics.significance records): the summary's
    p_value is the record's, per metric row."""
    from cavl.metrics.significance import binomial_test, poisson_binomial_test

    records = {"i2t_r@1": poisson_binomial_test(3, [0.1, 0.2, 0.1, 0.3], "random ranking"),
               "t2i_r@1": binomial_test(9, 10, 0.5, "random ranking")}
    path = write_metrics(tmp_path / "tir", "tir", "adapter2", {"i2t_r@1": 75.0, "t2i_r@1": 90.0, "rsum": 300.0},
                         {"i2t_r@1": 17.5, "t2i_r@1": 50.0, "rsum": 100.0}, significance=records)
    rows = {r["metric"]: r for r in summary.summary_rows([summary.load_metrics(path)])}
    assert rows["t2i_r@1"]["p_value"] == pytest.approx(11 / 1024)
    assert rows["i2t_r@1"]["p_value"] == records["i2t_r@1"]["p_value"] > 0
    assert rows["rsum"]["p_value"] is None
    text = summary.to_csv(list(rows.values()), summary.SUMMARY_COLUMNS)
    parsed = {r["metric"]: r["p_value"] for r in csv.DictReader(text.splitlines())}
    assert float(parsed["t2i_r@1"]) == pytest.approx(11 / 1024, rel=1e-5) and parsed["rsum"] == ""
    # an old metrics.json without the block still summarises: no p-values
    old = write_metrics(tmp_path / "old", "tir", "adapter2", {"i2t_r@1": 75.0}, {"i2t_r@1": 17.5})
    assert summary.summary_rows([summary.load_metrics(old)])[0]["p_value"] is None


def test_html_cells_are_escaped():
    table = summary.to_html_table([{"task": "<b>x</b>", "value": 1.25}], ["task", "value"])
    assert '<td>&lt;b&gt;x&lt;/b&gt;</td><td class="n">1.2</td>' in table
