"""Retrieval Recall@K against a brute-force sort-based reference, with ties, both directions."""

import time

import numpy as np
import pytest

from cavl.metrics.retrieval import i2t_ranks, retrieval_recall, t2i_ranks


def brute_force_rank(scores_row, right):
    """Sort candidates by score (desc), wrong before right at equal score (pessimistic);
    return the position of the first right candidate."""
    order = np.lexsort((right.astype(int), -scores_row.astype(np.float64)))
    return int(np.flatnonzero(right[order])[0])


def brute_force_recall(scores, cap2img, ks=(1, 5, 10)):
    num_images, num_captions = scores.shape
    i2t = [brute_force_rank(scores[i], cap2img == i) for i in range(num_images)]
    t2i = [brute_force_rank(scores[:, c], np.arange(num_images) == cap2img[c])
           for c in range(num_captions)]
    out = {f"i2t_r@{k}": 100 * np.mean(np.array(i2t) < k) for k in ks}
    out.update({f"t2i_r@{k}": 100 * np.mean(np.array(t2i) < k) for k in ks})
    out["rsum"] = sum(out.values())
    return out, np.array(i2t), np.array(t2i)


def random_case(rng, num_images, per_image, levels):
    """Shuffled caption order; integer scores with few levels → many ties."""
    if np.isscalar(per_image):
        per_image = np.full(num_images, per_image)
    cap2img = rng.permutation(np.repeat(np.arange(num_images), per_image))
    scores = rng.integers(0, levels, size=(num_images, len(cap2img))).astype(np.float32)
    return scores, cap2img


@pytest.mark.parametrize("seed, num_images, per_image, levels", [
    (0, 30, 5, 3),        # heavy ties, 5 captions per image
    (1, 30, 5, 1000),     # few ties
    (2, 12, 5, 1),        # every score equal
    (3, 25, None, 4),     # 1..7 captions per image
])
def test_matches_brute_force(seed, num_images, per_image, levels):
    rng = np.random.default_rng(seed)
    if per_image is None:
        per_image = rng.integers(1, 8, size=num_images)
    scores, cap2img = random_case(rng, num_images, per_image, levels)
    expected, i2t_ref, t2i_ref = brute_force_recall(scores, cap2img)
    np.testing.assert_array_equal(i2t_ranks(scores, cap2img, chunk_size=7), i2t_ref)
    np.testing.assert_array_equal(t2i_ranks(scores, cap2img, chunk_size=11), t2i_ref)
    got = retrieval_recall(scores, cap2img)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key]), key


def test_tie_rule_is_pessimistic():
    # image 0 owns captions 0, 1; image 1 owns caption 2. All scores tie.
    scores = np.zeros((2, 3))
    cap2img = np.array([0, 0, 1])
    assert i2t_ranks(scores, cap2img).tolist() == [1, 2]    # wrong captions rank first
    assert t2i_ranks(scores, cap2img).tolist() == [1, 1, 1]
    # one tied wrong caption above the best right one: image 0 is a miss at K=1
    scores = np.array([[0.5, 0.9, 0.9], [0.0, 0.0, 1.0]])
    assert i2t_ranks(scores, cap2img).tolist() == [1, 0]


def test_perfect_and_reversed_scores():
    cap2img = np.repeat(np.arange(20), 5)
    perfect = (cap2img[None, :] == np.arange(20)[:, None]).astype(np.float32)
    m = retrieval_recall(perfect, cap2img)
    assert all(m[k] == 100.0 for k in m if k != "rsum") and m["rsum"] == 600.0
    m = retrieval_recall(-perfect, cap2img)
    assert m["i2t_r@10"] == 0.0 and m["t2i_r@10"] == 0.0


def test_directions_are_not_swapped():
    # image 0 scores its caption best, but caption 1 prefers the wrong image
    scores = np.array([[1.0, 0.2], [0.0, 0.9]])
    cap2img = np.array([0, 1])
    scores[0, 1] = 0.95         # caption 1: image 0 (0.95) above image 1 (0.9)
    assert i2t_ranks(scores, cap2img).tolist() == [0, 0]
    assert t2i_ranks(scores, cap2img).tolist() == [0, 1]


def test_invalid_inputs():
    with pytest.raises(ValueError):
        retrieval_recall(np.zeros((2, 2)), np.array([0, 0]))        # image 1 has no caption
    with pytest.raises(ValueError):
        retrieval_recall(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError):
        retrieval_recall(np.full((2, 2), np.nan), np.array([0, 1]))
    with pytest.raises(ValueError):
        retrieval_recall(np.zeros((2, 3)), np.array([0, 1]))


def test_flickr_sized_input_is_quick_and_float16_ok():
    """Flickr30k's test split (1k images x 5k captions) in float16: well under 2 s of CPU time
    (measured: ~0.1 s; a loop over the 5M pairs in Python takes seconds), and the recalls of the
    same scores in float64 (float16 ties and all)."""
    rng = np.random.default_rng(5)
    cap2img = np.repeat(np.arange(1000), 5)
    scores = rng.standard_normal((1000, 5000)).astype(np.float16)
    scores[cap2img, np.arange(5000)] += 3
    started = time.process_time()  # this process's CPU time: not stretched by other processes' load
    m = retrieval_recall(scores, cap2img)
    assert time.process_time() - started < 2.0
    assert m == retrieval_recall(scores.astype(np.float64), cap2img)
    assert 0 <= m["t2i_r@1"] <= m["t2i_r@5"] <= m["t2i_r@10"] <= 100
    assert m["i2t_r@10"] > 50
