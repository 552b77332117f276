"""The readers' error branches that the official-format fixtures (tests/test_formats.py) do not
reach: duplicate ids, an unknown split or image id, a VCR label out of range, bytes that are not
UTF-8, Flickr30k Entities XML without <size> or <name>, and a top level of the wrong JSON type.

Each bad input is a few bytes written to tmp_path; each error must name the file, the record and
the problem, and be a FormatError (what the manifest and task_data CLIs turn into one line)."""

import json

import pytest

from cavl.formats import coco, flickr30k, nlvr2, vcr, vg, vqa
from cavl.formats.errors import FormatError


def write_json(path, value):
    path.write_text(json.dumps(value))
    return path


def write_lines(path, values):
    path.write_text("".join(json.dumps(v) + "\n" for v in values))
    return path


def raises(message, call, *args):
    """`call(*args)` raises a FormatError whose text is exactly `message` (a format string
    given the path as {path})."""
    with pytest.raises(FormatError) as exc:
        call(*args)
    assert str(exc.value) == message.format(path=args[0]), str(exc.value)
    return exc.value


# ---------------------------------------------------------------- small valid records
def captions(images=((9, "a.jpg"),), annotations=((1, 9),)):
    return {"images": [{"id": i, "file_name": f, "width": 4, "height": 3} for i, f in images],
            "annotations": [{"id": a, "image_id": i, "caption": "a cat"} for a, i in annotations]}


def question(qid, image_id=9):
    return {"question_id": qid, "image_id": image_id, "question": "what?"}


def annotation(qid, image_id=9):
    return {"question_id": qid, "image_id": image_id, "question_type": "what", "answer_type": "other",
            "multiple_choice_answer": "cat", "answers": [{"answer": "cat", "answer_id": 1}]}


def vcr_line(annot_id="train-0", **changes):
    record = {"annot_id": annot_id, "img_fn": "m/a@0.jpg", "metadata_fn": "m/a@0.json",
              "objects": ["person", "car"], "question": ["Why", "is", [0], "here", "?"],
              "answer_choices": [["a"], ["b"], ["c"], ["d"]],
              "rationale_choices": [["w"], ["x"], ["y"], [[1], "z"]],
              "answer_label": 0, "rationale_label": 3}
    record.update(changes)
    return record


def karpathy_image(filename, split="train"):
    return {"filename": filename, "split": split, "sentences": [{"sentid": 1, "raw": " A dog. "}]}


# ---------------------------------------------------------------- duplicate ids
def test_duplicate_question_ids_are_rejected(tmp_path):
    p = write_json(tmp_path / "questions.json", {"questions": [question(5), question(6), question(5)]})
    raises("{path}: questions[2]: duplicate question_id 5", vqa.read_questions, p)
    a = write_json(tmp_path / "annotations.json", {"annotations": [annotation(5), annotation(5)]})
    raises("{path}: annotations[1]: duplicate question_id 5", vqa.read_annotations, a)


def test_duplicate_karpathy_image_is_rejected(tmp_path):
    p = write_json(tmp_path / "dataset_flickr30k.json", {"images": [
        karpathy_image("1.jpg"), karpathy_image("2.jpg", "test"), karpathy_image("1.jpg", "val")]})
    raises("{path}: images[2]: duplicate image 1.jpg", flickr30k.read_karpathy, p)


def test_duplicate_vg_image_id_is_rejected(tmp_path):
    (tmp_path / "VG_100K").mkdir()
    (tmp_path / "VG_100K" / "7.jpg").write_bytes(b"")  # only its presence is checked here
    entry = {"image_id": 7, "url": "https://x/VG_100K/7.jpg", "width": 5, "height": 6}
    p = write_json(tmp_path / "image_data.json", [entry, entry])
    with pytest.raises(FormatError) as exc:
        vg.manifest_rows(p, tmp_path)
    assert str(exc.value) == f"{p}: [1]: duplicate image_id 7"


# ---------------------------------------------------------------- unknown split or image id
def test_duplicate_coco_image_id_is_rejected(tmp_path):
    p = write_json(tmp_path / "captions.json", captions(images=((9, "a.jpg"), (10, "b.jpg"), (9, "c.jpg"))))
    raises("{path}: images[2]: duplicate image id 9", coco.read_captions, p)


def test_duplicate_vcr_annot_id_is_rejected(tmp_path):
    p = write_lines(tmp_path / "val.jsonl", [vcr_line("val-0"), vcr_line("val-1"), vcr_line("val-0")])
    raises("{path}: line 3 (val-0): duplicate annot_id val-0", vcr.read_split, p)


def test_duplicate_nlvr2_identifier_is_rejected(tmp_path):
    line = {"identifier": "dev-1-0-0", "sentence": "x", "label": "True"}
    p = write_lines(tmp_path / "dev.json", [line, {**line, "identifier": "dev-1-0-1"}, line])
    raises("{path}: line 3 (dev-1-0-0): duplicate identifier dev-1-0-0", nlvr2.read_split, p)


def test_unknown_karpathy_split_is_rejected_and_restval_is_train(tmp_path):
    p = write_json(tmp_path / "dataset_flickr30k.json", {"images": [karpathy_image("1.jpg", "dev")]})
    raises("{path}: images[0]: unknown split 'dev'", flickr30k.read_karpathy, p)
    ok = write_json(tmp_path / "restval.json", {"images": [karpathy_image("1.jpg", "restval")]})
    assert flickr30k.read_karpathy(ok) == [{"image_id": "1", "filename": "1.jpg", "split": "train",
                                           "sentences": [(1, "A dog.")]}]


def test_caption_of_an_unknown_image_is_rejected(tmp_path):
    p = write_json(tmp_path / "captions_train2014.json", captions(annotations=((1, 9), (2, 99))))
    raises("{path}: annotations[1]: image_id 99 is not in 'images'", coco.read_captions, p)


def test_instance_of_an_unknown_image_is_rejected(tmp_path):
    p = write_json(tmp_path / "instances_train2014.json", {
        "images": [{"id": 9}], "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"image_id": 9, "category_id": 1, "bbox": [0, 0, 2, 2]},
                        {"image_id": 10, "category_id": 1, "bbox": [0, 0, 2, 2]}]})
    raises("{path}: annotations[1]: image_id 10 is not in 'images'", coco.read_instances, p)


def test_vqa_annotation_of_another_image_is_rejected(tmp_path):
    q = write_json(tmp_path / "questions.json", {"questions": [question(5, image_id=9)]})
    a = write_json(tmp_path / "annotations.json", {"annotations": [annotation(6), annotation(5, image_id=8)]})
    with pytest.raises(FormatError) as exc:
        vqa.task_rows(q, a)
    assert str(exc.value) == f"{a}: annotations[1]: image_id 8 differs from the question's image_id 9"


# ---------------------------------------------------------------- VCR labels
@pytest.mark.parametrize("key, value, choices", [("answer_label", 4, 4), ("answer_label", -1, 4),
                                                 ("rationale_label", 7, 4)])
def test_vcr_label_out_of_range_is_rejected(tmp_path, key, value, choices):
    p = write_lines(tmp_path / "train.jsonl", [vcr_line("train-0"), vcr_line("train-1", **{key: value})])
    raises(f"{{path}}: line 2 (train-1): {key} {value} is out of range for {choices} choices", vcr.read_split, p)


def test_vcr_label_of_the_wrong_type_is_rejected_and_null_means_unlabelled(tmp_path):
    p = write_lines(tmp_path / "val.jsonl", [vcr_line(answer_label="0")])
    raises("{path}: line 1 (train-0): key 'answer_label' must be integer or null, got string", vcr.read_split, p)
    p = write_lines(tmp_path / "test.jsonl", [vcr_line(answer_label=None, rationale_label=None)])
    record, = vcr.read_split(p)
    assert (record["answer_label"], record["rationale_label"]) == (-1, -1)


# ---------------------------------------------------------------- not UTF-8
NOT_UTF8 = "caf\u00e9".encode("latin-1")  # é as one Latin-1 byte: not valid UTF-8


def test_json_file_not_utf8_names_the_byte(tmp_path):
    p = tmp_path / "captions_train2014.json"
    before = b'{"images": [], "annotations": [], "info": "'
    p.write_bytes(before + NOT_UTF8 + b'"}')
    raises(f"{{path}}: byte {len(before) + 3}: not UTF-8 text", coco.read_captions, p)


@pytest.mark.parametrize("reader, record", [(vcr.read_split, vcr_line()),
                                            (nlvr2.read_split, {"identifier": "dev-1-0-0", "sentence": "x",
                                                                "label": "True"})])
def test_json_lines_not_utf8_name_the_line(tmp_path, reader, record):
    p = tmp_path / "split.jsonl"
    good = json.dumps(record).encode() + b"\n"
    p.write_bytes(good + b"\n" + good[:-3] + b' "' + NOT_UTF8 + b'"}\n' + good)
    raises("{path}: line 3: not UTF-8 text", reader, p)


def test_text_files_not_utf8_name_the_byte(tmp_path):
    sentences = tmp_path / "1.txt"
    before = b"[/EN#1/people A man] sits .\nA "
    sentences.write_bytes(before + NOT_UTF8 + b" .\n")
    raises(f"{{path}}: byte {len(before) + 3}: not UTF-8 text", flickr30k.read_sentences, sentences)
    split_list = tmp_path / "train.txt"
    split_list.write_bytes(b"1001\n" + NOT_UTF8 + b"\n")
    raises("{path}: byte 8: not UTF-8 text", flickr30k.read_split_list, split_list)


# ---------------------------------------------------------------- Flickr30k Entities XML
SIZE = "<size><width>40</width><height>30</height><depth>3</depth></size>"
BOX = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>6</ymax></bndbox>"


@pytest.mark.parametrize("body, message", [
    (f"<filename>1.jpg</filename><object><name>1</name>{BOX}</object>", "missing <size>"),
    ("<size><height>30</height></size>", "<size>: missing <width>"),
    ("<size><width>40</width></size>", "<size>: missing <height>"),
    ("<size><width>forty</width><height>30</height></size>", "<size>: <width> must be a number, got 'forty'"),
    (f"{SIZE}<object><name>1</name>{BOX}</object><object>{BOX}</object>", "object 1: missing <name> (entity id)"),
    (f"{SIZE}<object><name>1</name><name> </name>{BOX}</object>", "object 0: missing <name> (entity id)"),
    (f"{SIZE}<object><name>1</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox></object>",
     "object 0: missing <ymax>"),
])
def test_entities_xml_without_size_or_name_is_rejected(tmp_path, body, message):
    p = tmp_path / "1001.xml"
    p.write_text(f"<annotation>{body}</annotation>")
    raises("{path}: " + message, flickr30k.read_annotation, p)


def test_entities_xml_missing_file_is_a_format_error(tmp_path):
    raises("{path}: file not found", flickr30k.read_annotation, tmp_path / "nope.xml")


# ---------------------------------------------------------------- top level of the wrong type
@pytest.mark.parametrize("reader, value, message", [
    (coco.read_captions, [], "top level must be a JSON object"),
    (coco.read_instances, "images", "top level must be a JSON object"),
    (vqa.read_questions, [], "top level must be object, got list"),
    (vqa.read_annotations, 3, "top level must be object, got integer"),
    (vcr.read_metadata, [[0, 0, 1, 1, 0.9]], "top level must be object, got list"),
    (flickr30k.read_karpathy, None, "top level must be object, got null"),
    (vg.read_image_data, {"images": []}, "top level must be list, got object"),
    (vg.read_region_descriptions, {}, "top level must be list, got object"),
    (vg.read_objects, {}, "top level must be list, got object"),
    (vg.read_attributes, "x", "top level must be list, got string"),
])
def test_top_level_of_the_wrong_type_is_rejected(tmp_path, reader, value, message):
    p = write_json(tmp_path / "file.json", value)
    raises("{path}: " + message, reader, p)


@pytest.mark.parametrize("reader", [vcr.read_split, nlvr2.read_split])
def test_json_line_that_is_not_an_object_is_rejected(tmp_path, reader):
    p = tmp_path / "split.jsonl"
    p.write_text('\n["train-0"]\n')
    raises("{path}: line 2: must be a JSON object, got list", reader, p)


@pytest.mark.parametrize("reader, value, message", [
    (coco.read_captions, {"images": [["id", 9]], "annotations": []}, "images[0]: must be an object, got list"),
    (vqa.read_questions, {"questions": ["what?"]}, "questions[0]: must be an object, got string"),
    (vg.read_image_data, [7], "[0]: must be an object, got integer"),
    (vqa.read_annotations, {"annotations": {"5": {}}}, "key 'annotations' must be list, got object"),
])
def test_records_of_the_wrong_type_are_rejected(tmp_path, reader, value, message):
    p = write_json(tmp_path / "file.json", value)
    raises("{path}: " + message, reader, p)
