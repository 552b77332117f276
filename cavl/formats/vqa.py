"""VQA v2 (``v2_OpenEnded_mscoco_*_questions.json`` + ``v2_mscoco_*_annotations.json``).

Official structure:
- questions: ``{"info", "task_type", "data_type", "data_subtype", "license",
  "questions": [{"image_id", "question", "question_id"}]}``
- annotations: ``{"info", "license", "data_type", "data_subtype", "annotations":
  [{"question_id", "image_id", "question_type", "answer_type", "multiple_choice_answer",
  "answers": [{"answer", "answer_confidence", "answer_id"}] × 10}]}``
"""

from ._common import check_type, get, load_json, spec_get
from .errors import FormatError, SpecError


def read_questions(path):
    data = check_type(load_json(path), dict, path, None, "top level")
    out, seen = [], set()
    for i, q in enumerate(get(data, "questions", list, path, None)):
        rec = f"questions[{i}]"
        qid = get(q, "question_id", int, path, rec)
        if qid in seen:
            raise FormatError(path, rec, f"duplicate question_id {qid}")
        seen.add(qid)
        out.append({"question_id": qid, "image_id": get(q, "image_id", int, path, rec),
                    "question": get(q, "question", str, path, rec)})
    return out


def read_annotations(path):
    """→ {question_id: {image_id, answers[list of str], multiple_choice_answer,
    answer_type, question_type}}"""
    data = check_type(load_json(path), dict, path, None, "top level")
    out = {}
    for i, a in enumerate(get(data, "annotations", list, path, None)):
        rec = f"annotations[{i}]"
        qid = get(a, "question_id", int, path, rec)
        if qid in out:
            raise FormatError(path, rec, f"duplicate question_id {qid}")
        answers = [get(ans, "answer", str, path, f"{rec}.answers[{j}]")
                   for j, ans in enumerate(get(a, "answers", list, path, rec))]
        out[qid] = {
            "index": i,
            "image_id": get(a, "image_id", int, path, rec),
            "answers": answers,
            "multiple_choice_answer": get(a, "multiple_choice_answer", str, path, rec),
            "answer_type": get(a, "answer_type", str, path, rec),
            "question_type": get(a, "question_type", str, path, rec),
        }
    return out


def task_rows(questions_path, annotations_path=None):
    """One row per question, joined with its annotation on question_id.

    Without an annotations file (test splits) the answer columns are empty/null.
    Every question must have an annotation with the same image_id.
    """
    questions = read_questions(questions_path)
    annotations = read_annotations(annotations_path) if annotations_path else None
    rows = []
    for i, q in enumerate(questions):
        row = {"question_id": q["question_id"], "image_id": str(q["image_id"]),
               "question": q["question"], "answers": [], "multiple_choice_answer": None,
               "answer_type": None, "question_type": None}
        if annotations is not None:
            ann = annotations.get(q["question_id"])
            if ann is None:
                raise FormatError(annotations_path, f"question_id {q['question_id']}",
                                  "no annotation for this question "
                                  f"(questions[{i}] of {questions_path})")
            if ann["image_id"] != q["image_id"]:
                raise FormatError(annotations_path, f"annotations[{ann['index']}]",
                                  f"image_id {ann['image_id']} differs from the question's "
                                  f"image_id {q['image_id']}")
            row.update(answers=ann["answers"],
                       multiple_choice_answer=ann["multiple_choice_answer"],
                       answer_type=ann["answer_type"], question_type=ann["question_type"])
        rows.append(row)
    return rows


def task_tables(spec, splits, where="datasets.vqa"):
    """{split: task_rows} of the vqa task's tables, from config `datasets.vqa` (`spec`): each split's
    `questions` file and, where given, its `annotations` (cavl.tasks.REGISTRY's reader)."""
    out = {}
    for split in splits:
        entry = spec["splits"][split]
        w = f"{where}.splits.{split}"
        questions = spec_get(entry, "questions", w, str)
        annotations = entry.get("annotations") if isinstance(entry, dict) else None
        if annotations is not None and not isinstance(annotations, str):
            raise SpecError(f"{w}.annotations: must be a file path")
        out[split] = task_rows(questions, annotations)
    return out
