"""Embedded demo data: seeded synthetic scenes (coloured shapes on a plain background)
written in the official formats of all seven datasets the pipeline reads.

``python -m cavl.demo --out data/demo --seed 0 --image-size 224 --count coco=120 …``
(see ``cli.py``); ``--variant 2`` writes a second synthetic world (another palette, object
counts and VQA templates, see ``variants.py``) to check settings tuned on the first.
Besides the datasets it writes ``{out}/scenes.json``:
``{dataset: {image_id: {file, width, height, background, objects: [{shape, color, size,
bbox}]}}}`` — the ground truth every caption, answer, label and phrase is true of.
"""

from .cli import generate, main

__all__ = ["generate", "main"]
