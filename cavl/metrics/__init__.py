"""Evaluation metrics of the six downstream tasks, and their chance baselines.

One small module per benchmark, each a set of pure functions over numpy arrays / lists that
return percentages (0–100) under the metric keys of ``metrics.json`` (see DESIGN.md):

- :mod:`cavl.metrics.vqa`        — VQA v2 accuracy (official answer normalisation), soft targets
- :mod:`cavl.metrics.vcr`        — Q→A, QA→R, Q→AR
- :mod:`cavl.metrics.nlvr2`      — accuracy and consistency
- :mod:`cavl.metrics.retrieval`  — Flickr30k image↔text Recall@K and rsum (tir, zs_tir)
- :mod:`cavl.metrics.grounding`  — box IoU and Flickr30k Entities phrase grounding recall (rpg)
- :mod:`cavl.metrics.chance`     — the same keys for a random or majority-answer predictor
"""
