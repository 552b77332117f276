"""VQA v2 on the COCO demo images (``vqa/v2_OpenEnded_mscoco_{split}2014_questions.json`` and
``vqa/v2_mscoco_{split}2014_annotations.json``)."""

import os

from .files import write_json_atomic
from .language import human_answers, vqa_questions

INFO = {"description": "CAVL embedded demo: synthetic questions in the VQA v2 format",
        "url": "https://example.invalid/cavl-demo", "version": "2.0", "year": 2017,
        "contributor": "cavl.demo", "date_created": "2017-04-26 17:00:44"}
LICENSE = {"url": "http://creativecommons.org/licenses/by/4.0/",
           "name": "Creative Commons Attribution 4.0 International License"}


def write(out_dir, rng, coco_images, variant):
    """coco_images: {split: [(image_id, scene)]} from coco.write; questions from the
    variant's template set. → summary line."""
    total = 0
    for split, images in coco_images.items():
        subtype = f"{split}2014"
        questions, annotations = [], []
        for image_id, scene in images:
            for k, (q, answer, answer_type, question_type) in enumerate(
                    vqa_questions(scene, rng, variant.vqa_candidates, variant.colors)):
                qid = image_id * 1000 + k
                questions.append({"image_id": image_id, "question": q, "question_id": qid})
                answers = human_answers(answer, answer_type, rng, variant.colors)
                annotations.append({
                    "question_type": question_type, "multiple_choice_answer": answer,
                    "answers": [{"answer": a, "answer_confidence": c, "answer_id": j + 1}
                                for j, (a, c) in enumerate(answers)],
                    "image_id": image_id, "answer_type": answer_type, "question_id": qid})
        total += len(questions)
        write_json_atomic({"info": INFO, "task_type": "Open-Ended", "data_type": "mscoco",
                           "license": LICENSE, "data_subtype": subtype, "questions": questions},
                          os.path.join(out_dir, "vqa",
                                       f"v2_OpenEnded_mscoco_{subtype}_questions.json"))
        write_json_atomic({"info": INFO, "license": LICENSE, "data_subtype": subtype,
                           "annotations": annotations, "data_type": "mscoco"},
                          os.path.join(out_dir, "vqa", f"v2_mscoco_{subtype}_annotations.json"))
    n_img = sum(len(v) for v in coco_images.values())
    return f"vqa: {total} questions on {n_img} coco images → {os.path.join(out_dir, 'vqa')}"
