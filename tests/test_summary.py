"""cavl.summary: the results table, the method comparison and their error messages."""

import csv
import json
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
                        config={"train": {"batch_size": 16}})
    zs = write_metrics(results / "zs_tir", "zs_tir", "zero-shot",
                       {"i2t_r@1": 10.0, "rsum": 134.0}, {"i2t_r@1": 5.0, "rsum": 150.0},
                       trainable_params=0, total_params=1000)
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
        ("vqa", "accuracy"), ("vqa", "yes/no"), ("zs_tir", "i2t_r@1"), ("zs_tir", "rsum")]
    assert rows[0] == {"task": "vqa", "split": "val", "method": "adapter2", "metric": "accuracy",
                       "value": "43.5000", "chance": "21.7500", "examples": "10"}

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
    assert "| vqa | val | adapter2 | accuracy | 43.5 | 21.8 | 10 |" in md
    assert "| zs_tir | zero-shot | 0 | 0.0 | – | – | rsum | 134.0 | 150.0 | -16.0 |" in md
    page = (out / "summary.html").read_text()
    assert ('<tr><td>vqa</td><td>val</td><td>adapter2</td><td>accuracy</td><td class="n">43.5</td>'
            '<td class="n">21.8</td>') in page
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


def test_html_cells_are_escaped():
    table = summary.to_html_table([{"task": "<b>x</b>", "value": 1.25}], ["task", "value"])
    assert '<td>&lt;b&gt;x&lt;/b&gt;</td><td class="n">1.2</td>' in table
