"""The demo's finetuned and zero-shot models beat chance (issues #5 and #6).

One complete default demo run (the session fixture `demo_metrics`: task → metrics.json) is
checked against each task's own `chance` figures: VQA and NLVR2 with the configured method
(adapter2) against the majority answer / label, TIR and ZS-TIR Recall@1 in both directions
against random ranking, RPG Recall@1 against picking a random candidate region.

Margins are in *items*, not points, so they mean the same whatever the demo's size: a model
must get several more items right than chance expects, a number random guessing reaches only
rarely (the probability is noted at each margin for the demo's current sizes).
"""

import pytest


def _excess(metrics, task, key):
    """(metric, chance, number of scored items, items right beyond chance) of one task."""
    m = metrics[task]
    value, chance = m["metrics"][key], m["chance"][key]
    n = m["num_examples"]
    if key.startswith("i2t_"):
        n = m["num_images"]  # one image query per image
    elif key.startswith("t2i_"):
        n = m["num_captions"]  # one caption query per caption
    return value, chance, n, (value - chance) / 100.0 * n


def _check(metrics, task, key, min_items, min_ratio=1.0):
    value, chance, n, excess = _excess(metrics, task, key)
    summary = f"{task} {key} = {value:.2f} vs chance {chance:.2f} over {n} items ({excess:+.1f} items)"
    print(summary)
    assert excess >= min_items - 1e-6, f"{summary}: needs at least {min_items} items beyond chance"
    assert value >= min_ratio * chance, f"{summary}: needs at least {min_ratio}× chance"


def test_demo_has_every_task(demo_metrics):
    assert {"vqa", "vcr", "nlvr2", "tir", "zs_tir", "rpg"} <= set(demo_metrics)


def test_vqa_beats_majority_answer(demo_metrics):
    assert demo_metrics["vqa"]["method"] == "adapter2"
    # 83 val questions: 8 questions (~10 points) beyond the majority answer
    _check(demo_metrics, "vqa", "accuracy", min_items=8)


def test_vqa_on_demo_variant_2_beats_the_question_type_prior(variant2_vqa_metrics):
    """Defaults not fitted to one demo: on variant 2 (another palette, object counts and question
    kinds), with every setting at its default, VQA beats answering each question with its question
    type's train majority answer, by an exact one-sided sign test over the val questions."""
    m = variant2_vqa_metrics
    prior = m["baselines"]["question_type_prior"]
    test = prior["sign_test"]
    summary = (f"variant 2 VQA {m['metrics']['accuracy']:.1f} vs question-type prior {prior['accuracy']:.1f} "
               f"over {m['num_examples']} questions: {test}")
    print(summary)
    assert test["p_value"] < 0.01, summary


# Open (issue #5): the demo's NLVR2 statements are about object colour, shape and count, and its
# images have no given boxes; the random detector's boxes almost never cover an object, so the
# region features carry little of that (image-level linear probes: shapes at chance, colours ~10
# points over the majority), and 48 training statements cannot teach the compositional wording.
# The same model and settings reach 81 % on the same images when the label is a property the
# features do carry (left background white). strict: once NLVR2 passes, this marker must go.
@pytest.mark.xfail(strict=True, reason="demo NLVR2 at chance: features without object regions, 48 train statements")
def test_nlvr2_beats_majority_label(demo_metrics):
    assert demo_metrics["nlvr2"]["method"] == "adapter2"
    # 16 dev statements at 50 % chance: 3 more right (≥ 11/16) happens by guessing with p ≈ 0.1
    _check(demo_metrics, "nlvr2", "accuracy", min_items=3)


@pytest.mark.parametrize("task", ["tir", "zs_tir"])
def test_retrieval_recall_at_1_beats_random_ranking(demo_metrics, task):
    if task == "zs_tir":
        assert demo_metrics[task]["method"] == "zero-shot" and demo_metrics[task]["trainable_params"] == 0
    # 20 images × 100 captions, chance 5 %: i2t ≥ 3 images right (random: p ≈ 0.08),
    # t2i ≥ 9 captions right (random: p ≈ 0.06). The demo's backbones find 2–5 images per gallery
    # of 32 zero-shot, so this i2t margin holds for about half of them (docs/pretraining.md, "How
    # firm zero-shot retrieval is"): a change upstream can flip it without the model being worse.
    _check(demo_metrics, task, "i2t_r@1", min_items=2, min_ratio=2.0)
    _check(demo_metrics, task, "t2i_r@1", min_items=4, min_ratio=1.5)


# Open (issue #15, the detector trained in the DAG): of the demo's 157 scored phrases only 23 have
# a candidate box at IoU >= 0.5, because the random detector's boxes miss the objects; RPG R@1 sat
# at 2-4 phrases (chance ~1) for every backbone measured, never p < 0.01. strict: once a trained
# detector lets grounding beat chance beyond doubt, this marker must go.
@pytest.mark.xfail(strict=True, reason="demo RPG at chance: random-detector boxes cover 23 of 157 phrases")
def test_rpg_recall_at_1_beats_a_random_candidate(demo_metrics):
    from cavl.metrics.significance import binomial_p_value

    m = demo_metrics["rpg"]
    assert m["num_excluded"] >= 0 and m["metrics"]["upper_bound"] >= m["metrics"]["r@1"]
    n = m["num_examples"]
    right = round(m["metrics"]["r@1"] / 100 * n)
    # a random candidate is right with the mean chance per phrase; a binomial with that mean has
    # the heavier upper tail than the per-phrase (Poisson-binomial) truth, so p is conservative
    p = binomial_p_value(right, n, m["chance"]["r@1"] / 100)
    print(f"rpg r@1: {right} of {n} phrases, chance {m['chance']['r@1']:.2f} %, p = {p:.3g}")
    assert p < 0.01
