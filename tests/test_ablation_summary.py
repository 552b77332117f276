"""cavl.ablation_summary: per-example scores that add up to each task's main metric, the paired
bootstrap against known answers, and the CLI end to end on files."""

import csv
import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from cavl import ablation_summary as ab
from cavl.metrics.retrieval import i2t_ranks, retrieval_recall, t2i_ranks
from cavl.tasks import get_task
from cavl.tasks.base import DataSettings
from cavl.tasks.tir import retrieval_set
from cavl.testing import synthetic_flickr30k, write_feature_shards, write_synthetic_tasks


# ---------------------------------------------------------------------------------------------
# Per-example scores: the identity with each task's own metric
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """vqa, vcr and nlvr2 task tables of cavl.testing (train, eval)."""
    root = write_synthetic_tasks(tmp_path_factory.mktemp("tasks"), sizes={"vqa": (24, 30), "vcr": (4, 40),
                                                                          "nlvr2": (4, 40)})
    read = lambda task, split: pd.read_parquet(root / "tasks" / task / f"{split}.parquet")  # noqa: E731
    return {"vqa": (read("vqa", "train"), read("vqa", "val")), "vcr": (None, read("vcr", "val")),
            "nlvr2": (None, read("nlvr2", "dev"))}


@pytest.fixture(scope="module")
def rpg_eval(tmp_path_factory):
    """(rpg test table, its feature index, the evaluated examples with their candidate boxes)."""
    root = tmp_path_factory.mktemp("flickr30k")
    task_tables, images = synthetic_flickr30k({"train": 1, "val": 1, "test": 15}, seed=3)
    index = write_feature_shards(root / "features", "flickr30k", images)
    table = task_tables["rpg"]["test"]
    task = get_task("rpg")
    examples = task.with_features(table, task.region_source(index, DataSettings(32, 6)), "test")
    return table, index, examples


def task_predictions(task_name, examples, outputs, state=None):
    task = get_task(task_name)
    return task.predictions(examples, task.items(examples), outputs, state or {})


def assert_identity(task_name, predictions, examples, state=None):
    """The main metric from the scores is the task's own; returns the scores."""
    expected = get_task(task_name).metrics(predictions, examples, state or {})[ab.main_metric(task_name)]
    scores = ab.example_scores(task_name, predictions, examples)
    assert list(scores.columns) == ab.SCORE_COLUMNS and len(scores) == len(predictions)
    assert ab.metric_from_scores(scores) == pytest.approx(expected, abs=1e-9)
    return scores


def test_vqa_scores_are_the_per_question_vqa_scores(tables):
    train, examples = tables["vqa"]
    task = get_task("vqa")
    state = task.prepare(train, {"answer_vocab_size": 12})
    rng = np.random.default_rng(0)
    outputs = {"answer_index": rng.integers(0, len(state["answers"]), len(examples)),
               "score": rng.random(len(examples)).astype(np.float32)}
    predictions = task_predictions("vqa", examples, outputs, state)
    scores = assert_identity("vqa", predictions, examples, state)
    assert set(scores["score"]) <= {0.0, 30.0, 60.0, 90.0, 100.0}
    assert ((scores["score"] > 0) & (scores["score"] < 100)).any()  # soft scores, not only right/wrong
    assert scores["example"].tolist() == predictions["question_id"].astype(str).tolist()


def test_vcr_scores_are_q2ar(tables):
    _, examples = tables["vcr"]
    rng = np.random.default_rng(1)
    predictions = task_predictions("vcr", examples, {"scores": rng.random((2 * len(examples), 4))})
    scores = assert_identity("vcr", predictions, examples)
    assert 0 < scores["score"].mean() < 100 and scores["stratum"].unique().tolist() == [ab.ONE_STRATUM]


def test_nlvr2_scores_are_accuracy(tables):
    _, examples = tables["nlvr2"]
    rng = np.random.default_rng(2)
    predictions = task_predictions("nlvr2", examples, {"prob_true": rng.random(len(examples)).astype(np.float32)})
    scores = assert_identity("nlvr2", predictions, examples)
    assert 0 < scores["score"].mean() < 100


def rpg_predictions(examples, rng, tied: bool):
    """Scores of each phrase's candidates: small integers (many ties) or distinct floats."""
    scores = np.empty(len(get_task("rpg").items(examples)), dtype=object)
    counts = [len(examples["candidate_boxes"][i]) for i in get_task("rpg").items(examples)["example"]]
    scores[:] = [(rng.integers(0, 2, n) if tied else rng.permutation(n)).astype(np.float32) for n in counts]
    return task_predictions("rpg", examples, {"scores": scores})


def test_rpg_scores_are_r_at_1_with_the_metrics_pessimistic_ties(rpg_eval):
    _, _, examples = rpg_eval
    rng = np.random.default_rng(3)
    tied = rpg_predictions(examples, rng, tied=True)
    scores = assert_identity("rpg", tied, examples)
    assert len(scores) < len(examples)  # phrases without a box are no queries
    # without the candidates, a tie whose first best candidate is a hit cannot be decided
    with pytest.raises(ValueError, match="tied best scores"):
        ab.example_scores("rpg", tied, examples.drop(columns="candidate_boxes"))
    # distinct scores: the best box alone decides
    distinct = rpg_predictions(examples, rng, tied=False)
    expected = get_task("rpg").metrics(distinct, examples, {})["r@1"]
    scores = ab.example_scores("rpg", distinct, examples.drop(columns="candidate_boxes"))
    assert ab.metric_from_scores(scores) == pytest.approx(expected, abs=1e-9) and 0 < expected < 100


@pytest.mark.parametrize("task_name", ["tir", "zs_tir"])
def test_retrieval_scores_sum_to_rsum_over_the_two_directions(task_name):
    examples = pd.DataFrame({"image_id": [f"img{i // 3}" for i in range(45)], "sentence_id": range(45),
                             "caption": ["x"] * 45})
    images, cap2img = retrieval_set(examples)
    similarity = np.random.default_rng(4).integers(0, 6, (len(images), len(cap2img))).astype(np.float32)
    image_ids = np.asarray(images, dtype=object)
    predictions = pd.concat([  # as TirTask.predict_split writes them
        pd.DataFrame({"direction": "i2t", "query": image_ids, "image_id": image_ids,
                      "rank": i2t_ranks(similarity, cap2img)}),
        pd.DataFrame({"direction": "t2i", "query": examples["sentence_id"].astype(str), "image_id": image_ids[cap2img],
                      "rank": t2i_ranks(similarity, cap2img)}),
    ], ignore_index=True)
    scores = assert_identity(task_name, predictions, examples)
    assert ab.metric_from_scores(scores) == pytest.approx(retrieval_recall(similarity, cap2img)["rsum"])
    assert sorted(scores["stratum"].unique()) == ["i2t", "t2i"]
    assert scores["example"].is_unique and set(scores["score"]) <= {0.0, 100.0, 200.0, 300.0}


def test_scores_need_the_gold_labels_and_the_columns(tables):
    _, examples = tables["nlvr2"]
    predictions = pd.DataFrame({"identifier": examples["identifier"], "prediction": True, "prob_true": 1.0})
    with pytest.raises(ValueError, match="gold labels"):
        ab.example_scores("nlvr2", predictions)
    with pytest.raises(ValueError, match="1 predictions have no row"):
        ab.example_scores("nlvr2", predictions.assign(identifier=["x-0-0-0", *examples["identifier"][1:]]), examples)
    with pytest.raises(ValueError, match="lack the columns rank"):
        ab.example_scores("tir", pd.DataFrame({"direction": ["i2t"], "query": ["a"]}))
    with pytest.raises(ValueError, match="unknown task|no per-example scores"):
        ab.example_scores("gqa", predictions)


# ---------------------------------------------------------------------------------------------
# The paired bootstrap
# ---------------------------------------------------------------------------------------------


def frame(scores, seed=0, strata=None):
    return pd.DataFrame({"seed": seed, "example": [f"e{i}" for i in range(len(scores))],
                         "stratum": ab.ONE_STRATUM if strata is None else strata,
                         "score": np.asarray(scores, np.float64)})


def seeds_frame(rows):
    return pd.concat([frame(scores, seed) for seed, scores in rows], ignore_index=True)


def discordant(n, wins, losses, rng):
    """(baseline, variant) 0/100 scores of n examples: the variant alone right on `wins`, the
    baseline alone on `losses`, both the same elsewhere."""
    base = (rng.random(n) < 0.5) * 100.0
    order = rng.permutation(n)
    variant = base.copy()
    base[order[:wins]], variant[order[:wins]] = 0.0, 100.0
    base[order[wins : wins + losses]], variant[order[wins : wins + losses]] = 100.0, 0.0
    return base, variant


def exact_bootstrap_p(n, wins, losses):
    """The bootstrap p-value as resamples → ∞ for one stratum of n examples whose differences are
    +1 (wins), −1 (losses) or 0: net = W − L of a Multinomial(n; wins/n, losses/n) draw, observed
    net wins − losses = t, p = P(|net − t| ≥ |t|)."""
    t = wins - losses
    w = np.arange(n + 1)
    p_w = binom.pmf(w, n, wins / n)
    loss_rate = losses / (n - wins)
    low = binom.sf(w - t + abs(t) - 1, n - w, loss_rate)  # net ≤ t − |t|: L ≥ w − t + |t|
    high = binom.cdf(w - t - abs(t), n - w, loss_rate)  # net ≥ t + |t|: L ≤ w − t − |t|
    return float((p_w * (low + high)).sum()) if t else 1.0


def test_identical_variants_give_p_1_exactly():
    rng = np.random.default_rng(0)
    base = seeds_frame([(s, (rng.random(300) < 0.6) * 100.0) for s in range(3)])
    result = ab.paired_bootstrap(base, base.copy(), resamples=2000)
    assert result["p_value"] == 1.0 and result["difference"] == 0.0
    assert (result["examples"], result["seeds"], result["resamples"]) == (300, [0, 1, 2], 2000)


def test_right_on_every_baseline_miss_is_significant():
    rng = np.random.default_rng(1)
    base = seeds_frame([(s, (rng.random(300) < 0.7) * 100.0) for s in range(3)])
    better = base.assign(score=100.0)
    result = ab.paired_bootstrap(base, better)
    assert result["difference"] == pytest.approx(100.0 - base["score"].mean())
    assert result["p_value"] < 0.01


@pytest.mark.parametrize("wins, losses", [(30, 15), (11, 10)])
def test_p_value_is_the_exact_bootstrap_tail(wins, losses):
    """30 against 15 discordant examples of 400: p ≈ 0.03; 11 against 10 (no real difference): p ≈ 1."""
    base, variant = discordant(400, wins, losses, np.random.default_rng(2))
    result = ab.paired_bootstrap(frame(base), frame(variant), resamples=10_000, seed=5)
    assert result["difference"] == pytest.approx(100.0 * (wins - losses) / 400)
    expected = exact_bootstrap_p(400, wins, losses)
    assert result["p_value"] == pytest.approx(expected, abs=0.01)  # 10,000 resamples: s.e. ≤ 0.005
    if losses * 2 > wins:
        assert result["p_value"] > 0.5
    else:
        assert 0.01 < result["p_value"] < 0.06


def test_a_relabelling_with_no_difference_gives_p_1():
    """The variant's scores are the baseline's, examples swapped in pairs of one right and one
    wrong: the same metric, the difference 0, so every resample is at least as extreme."""
    rng = np.random.default_rng(3)
    base = (rng.random(200) < 0.5) * 100.0
    right, wrong = np.flatnonzero(base == 100.0), np.flatnonzero(base == 0.0)
    k = min(len(right), len(wrong)) // 2
    variant = base.copy()
    variant[right[:k]], variant[wrong[:k]] = 0.0, 100.0
    result = ab.paired_bootstrap(frame(base), frame(variant), resamples=1000)
    assert result["difference"] == 0.0 and result["p_value"] == 1.0


def test_examples_are_drawn_within_strata():
    """Stratum a: the variant +100 on all 10 examples; stratum b: no change on 1,000. Drawing
    within strata, every resample has the observed difference: none is as extreme as 0 away from it
    by |d|, so p is the smallest possible."""
    strata = np.array(["a"] * 10 + ["b"] * 1000)
    base = frame(np.where(strata == "a", 0.0, 50.0), strata=strata)
    variant = base.assign(score=np.where(strata == "a", 100.0, 50.0))
    result = ab.paired_bootstrap(base, variant, resamples=500)
    assert result["difference"] == pytest.approx(100.0) and result["p_value"] == 1 / 501


def test_the_draw_is_shared_by_the_seeds():
    """Three seeds with the same scores test exactly as one: one draw of examples for all seeds
    (independent draws per seed would shrink the spread, and the p-value)."""
    base, variant = discordant(300, 20, 9, np.random.default_rng(4))
    one = ab.paired_bootstrap(frame(base), frame(variant), resamples=3000, seed=7)
    three = ab.paired_bootstrap(seeds_frame([(s, base) for s in range(3)]),
                                seeds_frame([(s, variant) for s in range(3)]), resamples=3000, seed=7)
    assert three["p_value"] == one["p_value"] and three["difference"] == pytest.approx(one["difference"])
    assert 0.01 < one["p_value"] < 0.5


def test_seed_pairing_uses_the_shared_seeds_and_rejects_unpaired_examples():
    rng = np.random.default_rng(5)
    scores = {s: discordant(200, 15, 5, rng) for s in range(4)}
    base = seeds_frame([(s, scores[s][0]) for s in (0, 1, 2)])
    variant = seeds_frame([(s, scores[s][1]) for s in (1, 2, 3)])
    result = ab.paired_bootstrap(base, variant, resamples=1000)
    shared = ab.paired_bootstrap(base[base["seed"] > 0], variant[variant["seed"] < 3], resamples=1000)
    assert result["seeds"] == [1, 2] and result == shared
    assert result["difference"] == pytest.approx(100.0 * 10 / 200)
    unpaired = r"2 \(seed, example\) pairs are in only one .*0 only in the baseline, 2 only in the variant"
    with pytest.raises(ValueError, match=unpaired):
        ab.paired_bootstrap(base[base["example"] != "e7"], variant, resamples=10)
    with pytest.raises(ValueError, match="share no seed"):
        ab.paired_bootstrap(base[base["seed"] == 0], variant, resamples=10)
    with pytest.raises(ValueError, match="missing from some seeds"):
        ab.paired_bootstrap(base[(base["seed"] != 1) | (base["example"] != "e3")],
                            variant[(variant["seed"] != 1) | (variant["example"] != "e3")], resamples=10)


def test_deterministic_for_a_seed_and_fast():
    rng = np.random.default_rng(6)
    base = seeds_frame([(s, (rng.random(3000) < 0.6) * 100.0) for s in range(3)])
    variant = base.assign(score=np.where(rng.random(len(base)) < 0.02, 100.0, base["score"]))
    start = time.perf_counter()
    first = ab.paired_bootstrap(base, variant, resamples=10_000, seed=1)
    elapsed = time.perf_counter() - start
    assert ab.paired_bootstrap(base, variant, resamples=10_000, seed=1) == first
    assert elapsed < 10, f"10,000 resamples × 3,000 examples × 3 seeds took {elapsed:.1f} s"


# ---------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------


def write_run(folder, task, predictions, examples, **extra):
    """metrics.json (the task's own metric) and predictions.parquet of one evaluation."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = get_task(task).metrics(predictions, examples, {})
    record = {"task": task, "split": "dev", "method": "adapter2", "metrics": metrics, "chance": {},
              "num_examples": len(predictions), **extra}
    (folder / "metrics.json").write_text(json.dumps(record, indent=2))
    predictions.to_parquet(folder / "predictions.parquet")
    return {"metrics": str(folder / "metrics.json"), "predictions": str(folder / "predictions.parquet")}


@pytest.fixture
def grid(tmp_path):
    """RUNS.json of baseline, better (right on every nlvr2 miss) and same (the baseline's
    predictions) × seeds 0, 1 × nlvr2 and tir; (runs path, entries)."""
    rng = np.random.default_rng(7)
    n = 300
    examples = pd.DataFrame({"identifier": [f"dev-{k}-{k % 2}-0" for k in range(n)], "label": rng.random(n) < 0.5})
    examples_path = tmp_path / "dev.parquet"
    examples.to_parquet(examples_path)
    tir_examples = pd.DataFrame({"image_id": [f"i{k // 2}" for k in range(40)], "sentence_id": range(40)})
    entries = []
    for seed in (0, 1):
        guess = np.where(rng.random(n) < 0.6, examples["label"], ~examples["label"])
        nlvr2 = {"baseline": guess, "better": examples["label"].to_numpy(), "same": guess}
        ranks = rng.integers(0, 15, 60)
        tir = pd.DataFrame({"direction": ["i2t"] * 20 + ["t2i"] * 40,
                            "query": [f"i{k}" for k in range(20)] + [str(k) for k in range(40)],
                            "image_id": [f"i{k}" for k in range(20)] + list(tir_examples["image_id"]), "rank": ranks})
        for variant in ("baseline", "better", "same"):
            folder = tmp_path / "results" / variant / f"seed{seed}"
            predictions = pd.DataFrame({"identifier": examples["identifier"], "prediction": nlvr2[variant],
                                        "prob_true": nlvr2[variant].astype(np.float32)})
            entries.append({"variant": variant, "seed": seed, "task": "nlvr2", "examples": str(examples_path),
                            "copy_to": str(tmp_path / "ablations" / variant / f"seed{seed}" / "nlvr2" / "metrics.json"),
                            **write_run(folder / "nlvr2", "nlvr2", predictions, examples)})
            entries.append({"variant": variant, "seed": seed, "task": "tir",
                            "copy_to": str(tmp_path / "ablations" / variant / f"seed{seed}" / "tir" / "metrics.json"),
                            **write_run(folder / "tir", "tir", tir, tir_examples)})
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps(entries))
    return runs, entries


def outputs(folder):
    return {k: folder / f"out.{k}" for k in ("md", "csv", "html", "png")}


def run_cli(runs, out, *extra):
    return ab.main(["--runs", str(runs), "--md", str(out["md"]), "--csv", str(out["csv"]),
                    "--html", str(out["html"]), "--plot", str(out["png"]), "--resamples", "2000", *extra])


def test_cli_writes_the_table_copies_and_plot(grid, tmp_path):
    runs, entries = grid
    out = outputs(tmp_path / "summary")
    assert run_cli(runs, out) == 0
    for entry in entries:
        with open(entry["copy_to"], "rb") as copy, open(entry["metrics"], "rb") as source:
            assert copy.read() == source.read()
    rows = list(csv.DictReader(out["csv"].open()))
    assert [(r["variant"], r["task"]) for r in rows] == [
        ("baseline", "nlvr2"), ("baseline", "tir"), ("better", "nlvr2"), ("better", "tir"),
        ("same", "nlvr2"), ("same", "tir")]
    by = {(r["variant"], r["task"]): r for r in rows}
    values = {(e["variant"], e["task"], e["seed"]): json.loads(open(e["metrics"]).read())["metrics"]
              for e in entries}
    base = [values["baseline", "nlvr2", s]["accuracy"] for s in (0, 1)]
    assert float(by["baseline", "nlvr2"]["mean"]) == pytest.approx(np.mean(base), abs=1e-4)
    assert float(by["baseline", "nlvr2"]["sd"]) == pytest.approx(np.std(base, ddof=1), abs=1e-4)
    assert by["baseline", "nlvr2"]["p_value"] == by["baseline", "nlvr2"]["difference"] == ""
    assert by["better", "nlvr2"]["metric"] == "accuracy" and by["better", "tir"]["metric"] == "rsum"
    assert float(by["better", "nlvr2"]["mean"]) == 100.0 and by["better", "nlvr2"]["significant"] == "*"
    assert float(by["better", "nlvr2"]["p_value"]) < 0.01
    assert float(by["better", "nlvr2"]["difference"]) == pytest.approx(100 - np.mean(base), abs=1e-4)
    for key in (("same", "nlvr2"), ("same", "tir"), ("better", "tir")):
        assert (float(by[key]["p_value"]), by[key]["significant"], by[key]["difference"]) == (1.0, "", "0.0000")
    assert (by["better", "nlvr2"]["seeds"], by["better", "nlvr2"]["examples"], by["better", "tir"]["examples"]) == (
        "2", "300", "60")
    md = out["md"].read_text()
    table = md.split("## Per seed")[0]
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in table.splitlines()
             if line.startswith("| ")}
    assert lines["better", "nlvr2"].strip("|").split("|")[8].strip() == "*" and "*" not in lines["same", "nlvr2"]
    assert "`*` in significant: p < 0.05" in md and "## Per seed" in md
    assert "<table>" in out["html"].read_text() and out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def outputs_written(out):
    return [p for p in out.values() if p.exists()]


@pytest.mark.parametrize("breakage, named", [
    (lambda e: e[3].update(predictions=e[3]["predictions"] + ".gone"), "predictions.parquet.gone"),
    (lambda e: e[2].update(metrics=e[1]["metrics"]), "metrics.json: holds the metrics of task 'tir'"),
    (lambda e: e[1].update(task="gqa"), "unknown task 'gqa'"),
    (lambda e: e[0].pop("examples"), "give \"examples\""),
    (lambda e: e[2].update(predictions=e[0]["predictions"]), "its examples give accuracy"),  # another run's
    (lambda e: e[11].update(seed=0), "two runs with the same"),
])
def test_cli_bad_input_exits_2_naming_it_and_writes_nothing(grid, tmp_path, capsys, breakage, named):
    runs, entries = grid
    breakage(entries)
    runs.write_text(json.dumps(entries))
    out = outputs(tmp_path / "summary")
    assert run_cli(runs, out) == 2
    assert named in capsys.readouterr().err
    assert outputs_written(out) == [] and not (tmp_path / "ablations").exists()


def test_cli_exit_code_on_a_missing_file(tmp_path):
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps([{"variant": "baseline", "seed": 0, "task": "tir", "metrics": str(tmp_path / "no.json"),
                                 "predictions": str(tmp_path / "no.parquet"), "copy_to": str(tmp_path / "c.json")}]))
    out = outputs(tmp_path)
    result = subprocess.run([sys.executable, "-m", "cavl.ablation_summary", "--runs", str(runs), "--md", str(out["md"]),
                             "--csv", str(out["csv"]), "--html", str(out["html"]), "--plot", str(out["png"])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no.json" in result.stderr and outputs_written(out) == []


def test_cli_scores_rpg_ties_from_the_features(rpg_eval, tmp_path):
    """rpg predictions with tied best scores: exact with the run's feature index, an error without."""
    table, index, examples = rpg_eval
    table_path = tmp_path / "test.parquet"
    table.to_parquet(table_path)
    predictions = rpg_predictions(examples, np.random.default_rng(8), tied=True)
    entries = [{"variant": "baseline", "seed": 0, "task": "rpg", "examples": str(table_path), "features": str(index),
                "copy_to": str(tmp_path / "copy" / "metrics.json"),
                **write_run(tmp_path / "rpg", "rpg", predictions, examples,
                            config={"data": {"max_text_len": 32, "max_regions": 6}})}]
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps(entries))
    assert run_cli(runs, outputs(tmp_path / "with")) == 0
    del entries[0]["features"]
    runs.write_text(json.dumps(entries))
    assert run_cli(runs, outputs(tmp_path / "without")) == 2
