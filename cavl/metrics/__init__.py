"""Evaluation metrics of the six downstream tasks and their chance baselines: one module per
benchmark (vqa, vcr, nlvr2, retrieval for tir / zs_tir, grounding for rpg) plus chance and
significance, each pure functions over numpy arrays / lists returning percentages (0–100) under
the metric keys of ``metrics.json`` (see DESIGN.md).
"""
