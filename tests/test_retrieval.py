"""Two-stage retrieval (cavl.retrieval): shortlists, the combined ranking, equality with the
exhaustive reference when the shortlist holds every candidate, and the model-backed scorer."""

import numpy as np
import pytest
import torch

from cavl import retrieval
from cavl.metrics.retrieval import i2t_ranks, retrieval_recall


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CountingScorer:
    """ITM scores from a fixed matrix; records every pair it was asked for."""

    def __init__(self, matrix):
        self.matrix, self.asked = matrix, []

    def __call__(self, pairs):
        self.asked.append(pairs.copy())
        return self.matrix[pairs[:, 0], pairs[:, 1]]


def case(seed, num_images=12, per_image=5, levels=4):
    rng = np.random.default_rng(seed)
    cap2img = rng.permutation(np.repeat(np.arange(num_images), per_image))
    itm = rng.integers(0, levels, (num_images, len(cap2img))).astype(np.float32)  # few levels: many ties
    sim = rng.uniform(-1, 1, itm.shape).astype(np.float32)
    return sim, itm, cap2img


def test_top_k_best_first_ties_by_index():
    s = np.array([[0.1, 0.9, 0.5, 0.9, 0.0]])
    assert retrieval.top_k(s, 3).tolist() == [[1, 3, 2]]
    assert retrieval.top_k(s, 9).tolist() == [[1, 3, 2, 0, 4]]  # k past N: everything, ordered
    assert retrieval.top_k(s, 0).shape == (1, 0)


def test_combine_ranks_the_shortlist_first_then_by_similarity():
    sim = np.array([[0.9, 0.8, 0.1, 0.2, 0.7]])
    short = np.array([[2, 3]])  # re-ranked: candidate 3 (itm 5) above 2 (itm 1)
    scores = retrieval.combine(sim, short, np.array([[1.0, 5.0]]))
    order = np.argsort(-scores[0], kind="stable")
    assert order.tolist() == [3, 2, 0, 1, 4]
    # ties stay ties: equal ITM scores in the shortlist, equal similarities outside it
    tied = retrieval.combine(np.array([[0.5, 0.5, 0.0]]), np.array([[2, 0]]), np.array([[3.0, 3.0]]))
    assert tied[0, 0] == tied[0, 2] > tied[0, 1]


@pytest.mark.parametrize("seed,sim_weight", [(0, 0.0), (1, 0.0), (2, 0.0), (0, 1.0), (1, 0.3)])
def test_two_stage_with_every_candidate_shortlisted_is_exhaustive(seed, sim_weight):
    sim, itm, cap2img = case(seed)
    I, C = itm.shape
    full = retrieval.exhaustive(I, CountingScorer(itm), cap2img, sim, sim_weight)
    fused = itm + sim_weight * sim  # the re-ranking score
    assert np.array_equal(full.i2t_ranks, i2t_ranks(fused, cap2img))
    assert full.metrics() == retrieval_recall(fused, cap2img)
    scorer = CountingScorer(itm)
    two = retrieval.two_stage(sim, scorer, C, cap2img, sim_weight)  # k = number of candidates (C ≥ I)
    assert np.array_equal(two.i2t_ranks, full.i2t_ranks) and np.array_equal(two.t2i_ranks, full.t2i_ranks)
    assert two.metrics() == full.metrics()
    assert two.pairs_scored == I * C
    np.testing.assert_array_equal(scorer.asked[0], retrieval.exhaustive_pairs(I, C))  # same pairs, same order


def test_shortlist_of_zero_is_the_dual_encoder():
    sim, itm, cap2img = case(3)
    scorer = CountingScorer(itm)
    res = retrieval.two_stage(sim, scorer, 0, cap2img)
    assert res.pairs_scored == 0 and res.metrics() == retrieval_recall(sim, cap2img)


def test_two_stage_ranks_follow_the_documented_rule():
    # 2 images × 4 captions; captions 0, 1 belong to image 0, captions 2, 3 to image 1
    cap2img = np.array([0, 0, 1, 1])
    sim = np.array([[0.9, 0.1, 0.8, 0.7],
                    [0.2, 0.3, 0.6, 0.5]], np.float32)
    itm = np.array([[-1.0, 9.0, 2.0, 9.0],
                    [0.0, 0.0, 3.0, 1.0]], np.float32)
    scorer = CountingScorer(itm)
    res = retrieval.two_stage(sim, scorer, 2, cap2img)
    # image 0: shortlist {0, 2} by sim; ITM puts 2 (wrong, 2.0) above 0 (right, -1.0) → rank 1.
    # Its other own caption (1) is outside the shortlist: ITM 9.0 is never looked at.
    assert res.i2t_ranks[0] == 1
    # image 1: shortlist {2, 3}: caption 2 (right, ITM 3) first → rank 0
    assert res.i2t_ranks[1] == 0
    # caption 1 (image 0): both images shortlisted (k=2 of 2), ITM ties 0.0 vs 9.0 → rank 0
    assert res.t2i_ranks[1] == 0
    # caption 3 (image 1): ITM 9.0 on image 0 beats 1.0 → rank 1
    assert res.t2i_ranks[3] == 1
    # each pair fused once, only shortlisted ones
    asked = np.concatenate(scorer.asked)
    assert len(asked) == len({tuple(p) for p in asked}) == res.pairs_scored <= 2 * (2 + 4)
    assert {tuple(p) for p in asked} >= {(0, 0), (0, 2), (1, 2), (1, 3)}
    assert res.i2t_in_shortlist.tolist() == [True, True]


def test_a_right_answer_outside_the_shortlist_ranks_below_all_of_it():
    cap2img = np.arange(5)  # one caption per image
    sim = -np.eye(5, dtype=np.float32)  # the similarity puts every right answer last
    itm = np.eye(5, dtype=np.float32) * 10  # the cross-encoder would get them all right
    res = retrieval.two_stage(sim, CountingScorer(itm), 2, cap2img)
    assert (res.i2t_ranks >= 2).all() and (res.t2i_ranks >= 2).all()
    assert not res.i2t_in_shortlist.any()
    assert retrieval.two_stage(sim, CountingScorer(itm), 5, cap2img).metrics()["rsum"] == 600.0


def test_similarity_added_to_the_itm_score_reorders_the_shortlist():
    cap2img = np.array([0, 1])
    sim = np.array([[0.2, 0.9], [0.1, 0.5]], np.float32)
    itm = np.array([[1.0, 1.2], [0.0, 0.0]], np.float32)
    alone = retrieval.two_stage(sim, CountingScorer(itm), 2, cap2img, 0.0)
    fused = retrieval.two_stage(sim, CountingScorer(itm), 2, cap2img, 1.0)
    assert alone.i2t_ranks[0] == 1 and fused.i2t_ranks[0] == 1  # 1.2 > 1.0 and 2.1 > 1.2
    assert alone.i2t_ranks[1] == 1 and fused.i2t_ranks[1] == 0  # ITM tie (pessimistic) broken by S


def test_pessimistic_ties_inside_the_shortlist():
    cap2img = np.array([0, 1, 2])
    sim = np.zeros((3, 3), np.float32)
    itm = np.ones((3, 3), np.float32)  # every pair tied
    res = retrieval.two_stage(sim, CountingScorer(itm), 3, cap2img)
    assert res.i2t_ranks.tolist() == [2, 2, 2] and res.t2i_ranks.tolist() == [2, 2, 2]


# ---------------------------------------------------------------------------------------------
# The model-backed scorer
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from cavl.adapters import AdapterSettings
    from cavl.testing import write_synthetic_flickr30k, write_tiny_pretrained
    from cavl.finetune_model import FinetuneModel, load_tokenizer
    from cavl.model import CavlModel
    from cavl.tasks import get_task
    from cavl.tasks.base import DataSettings

    root = write_synthetic_flickr30k(tmp_path_factory.mktemp("ret"), sizes={"train": 2, "val": 1, "test": 5})
    write_tiny_pretrained(root / "backbone")
    task = get_task("tir")
    data = DataSettings(max_text_len=16, max_regions=6)
    torch.manual_seed(0)
    model = FinetuneModel(CavlModel.from_pretrained(root / "backbone"), task, task.prepare(None, {}), "adapter1+2",
                          AdapterSettings(bottleneck=4, shortcut_layers=1, shortcut_width=16, shortcut_heads=2))
    with torch.no_grad():  # adapters and head away from their identity / zero init
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    regions = task.region_source(root / "features/flickr30k/index.parquet", data)
    examples = task.with_features(task.read(root / "tasks/tir/test.parquet"), regions, "test")
    return model.eval(), load_tokenizer(root / "backbone"), regions, data, examples, task


def test_model_two_stage_with_every_candidate_equals_exhaustive(tiny):
    from cavl.tasks.tir import retrieval_set

    model, tok, regions, data, examples, _ = tiny
    images, cap2img = retrieval_set(examples)
    captions = examples["caption"].tolist()
    scorer = retrieval.ModelScorer(model, tok, regions, data, batch_size=7)
    for w in (0.0, 1.0):
        full = retrieval.retrieve(scorer, images, captions, cap2img, "exhaustive", sim_weight=w)
        two = retrieval.retrieve(scorer, images, captions, cap2img, "two_stage", k=len(captions), sim_weight=w)
        assert np.array_equal(two.i2t_ranks, full.i2t_ranks) and np.array_equal(two.t2i_ranks, full.t2i_ranks)
        assert two.metrics() == full.metrics() and full.sim_weight == two.sim_weight == w
    short = retrieval.retrieve(scorer, images, captions, cap2img, "two_stage", k=2)
    assert short.pairs_scored <= 2 * (len(images) + len(captions)) < full.pairs_scored
    with pytest.raises(ValueError, match="retrieval mode"):
        retrieval.retrieve(scorer, images, captions, cap2img, "approximate")


def test_scorer_sees_what_training_sees(tiny):
    """ITM score and embeddings of a pair from the retrieval scorer = from the task's training batch."""
    from cavl.tasks.base import TaskBatches

    model, tok, regions, data, examples, task = tiny
    batch = TaskBatches(task, examples, model.state, regions, tok, data, 4, shuffle=False)[0]
    with torch.no_grad():
        train_scores = retrieval.itm_score(model.head(model.encode(batch))).numpy()
        e, f = retrieval.text_embedding(model, batch).numpy(), retrieval.image_embedding(model, batch).numpy()
    images = examples["image_id"].astype(str).tolist()[:4]
    scorer = retrieval.ModelScorer(model, tok, regions, data, batch_size=3)
    scorer.set_items(images, examples["caption"].tolist()[:4])
    pairs = np.stack([np.arange(4), np.arange(4)], 1)
    np.testing.assert_allclose(scorer.pair_scores(pairs), train_scores, atol=1e-5)
    np.testing.assert_allclose(scorer.text_embeddings(), e, atol=1e-5)
    np.testing.assert_allclose(scorer.image_embeddings(), f, atol=1e-5)
