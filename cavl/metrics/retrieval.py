"""Image↔text retrieval Recall@K (Flickr30k TIR and zero-shot TIR), in percent.

The standard Flickr30k protocol (Karpathy test split: 1,000 images × 5,000 captions, as in
VSE++ / SCAN / UNITER), over one score per (image, caption) pair, higher = more similar:
``i2t_r@K``: an image is right when *any* of its captions is among the K best-scored captions;
``t2i_r@K``: a caption is right when its image is among the K best-scored images; ``rsum``: the
sum of the six recalls (0–600).

Ties are **pessimistic**: the 0-based rank of a query's answer is the number of wrong candidates
scored ≥ its best right candidate, so constant scores get no credit beyond what the number of
candidates forces. NaN scores are rejected. The matrix is read in blocks of rows/columns, so
the work space is ~ chunk × 5k booleans.
"""

import numpy as np

KS = (1, 5, 10)


def _check(scores, caption_to_image):
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [num_images, num_captions], got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating) and not np.issubdtype(scores.dtype, np.integer):
        raise ValueError(f"scores must be numeric, got {scores.dtype}")
    num_images, num_captions = scores.shape
    cap2img = np.asarray(caption_to_image)
    if cap2img.shape != (num_captions,):
        raise ValueError(f"caption_to_image must have one entry per caption ({num_captions}), "
                         f"got shape {cap2img.shape}")
    if num_captions and not np.issubdtype(cap2img.dtype, np.integer):
        raise ValueError(f"caption_to_image must hold integer image indices, got {cap2img.dtype}")
    cap2img = cap2img.astype(np.int64)
    if num_captions and (cap2img.min() < 0 or cap2img.max() >= num_images):
        raise ValueError(f"caption_to_image has indices outside 0..{num_images - 1}")
    if num_images == 0 or num_captions == 0:
        raise ValueError("no images or no captions to evaluate")
    counts = np.bincount(cap2img, minlength=num_images)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        raise ValueError(f"images without any caption cannot be queried (e.g. indices {missing})")
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores, cap2img


def i2t_ranks(scores, caption_to_image, chunk_size: int = 256) -> np.ndarray:
    """0-based rank of each image's best own caption among all captions (pessimistic ties)."""
    scores, cap2img = _check(scores, caption_to_image)
    num_images = scores.shape[0]
    ranks = np.empty(num_images, dtype=np.int64)
    for start in range(0, num_images, chunk_size):
        rows = np.arange(start, min(start + chunk_size, num_images))
        block = scores[rows]                                        # (B, C)
        own = cap2img[None, :] == rows[:, None]                     # (B, C) right captions
        best_own = np.where(own, block, -np.inf).max(axis=1)        # (B,)
        at_least = block >= best_own[:, None]                       # (B, C)
        ranks[rows] = (at_least & ~own).sum(axis=1)                 # wrong captions ranked above
    return ranks


def t2i_ranks(scores, caption_to_image, chunk_size: int = 1024) -> np.ndarray:
    """0-based rank of each caption's image among all images (pessimistic ties)."""
    scores, cap2img = _check(scores, caption_to_image)
    num_captions = scores.shape[1]
    ranks = np.empty(num_captions, dtype=np.int64)
    for start in range(0, num_captions, chunk_size):
        cols = np.arange(start, min(start + chunk_size, num_captions))
        block = scores[:, cols]                                     # (I, B)
        own_score = block[cap2img[cols], np.arange(len(cols))]      # (B,)
        # every image scored >= the right one, minus the right image itself
        ranks[cols] = (block >= own_score[None, :]).sum(axis=0) - 1
    return ranks


def recall_at_k(ranks, ks=KS) -> dict[int, float]:
    """Percent of queries whose 0-based rank is < K, for each K."""
    ranks = np.asarray(ranks)
    return {k: 100.0 * float((ranks < k).mean()) for k in ks}


def retrieval_recall(scores, caption_to_image, ks=KS) -> dict:
    """``i2t_r@K``, ``t2i_r@K`` and ``rsum``, in percent, of a [num_images, num_captions] score
    matrix (any float or int dtype); `caption_to_image`: each caption's image (row) index."""
    i2t = recall_at_k(i2t_ranks(scores, caption_to_image), ks)
    t2i = recall_at_k(t2i_ranks(scores, caption_to_image), ks)
    out = {f"i2t_r@{k}": v for k, v in i2t.items()}
    out.update({f"t2i_r@{k}": v for k, v in t2i.items()})
    out["rsum"] = sum(i2t.values()) + sum(t2i.values())
    return out
