"""Tiny samples of every dataset in its officially released layout, for tests that run the
pipeline as a user would (``snakemake --configfile configs/paper.yaml`` in a folder holding
``data/``). Independent of the demo generator (cavl/demo): the files here mimic the releases.

    written = write_release_samples(workdir)            # all datasets under workdir/data/
    write_release_samples(workdir, ["coco", "vg"])      # only some
    paper_datasets_config()                              # the `datasets:` section for them

Every picture is a pure function of its path (size, coloured objects, pixels), so annotation
files can describe images they do not write (VQA's questions are about COCO's pictures).
"""

import json
import random
import re
import zlib
from collections import namedtuple
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DATASETS = ("coco", "vg", "vqa", "vcr", "nlvr2", "flickr30k")

COLOURS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200),
           "yellow": (230, 210, 40), "white": (245, 245, 245), "black": (20, 20, 20)}
Kind = namedtuple("Kind", "plural entity_type coco_id coco_name supercategory")
OBJECTS = {"man": Kind("men", "people", 1, "person", "person"),
           "woman": Kind("women", "people", 1, "person", "person"),
           "dog": Kind("dogs", "animals", 18, "dog", "animal"),
           "car": Kind("cars", "vehicles", 3, "car", "vehicle"),
           "bicycle": Kind("bicycles", "vehicles", 2, "bicycle", "vehicle"),
           "chair": Kind("chairs", "other", 62, "chair", "furniture")}
# caption templates in Flickr30k Entities markup; {a}, {b}: the first two objects, {s}: the scene
TEMPLATES = ("There is {a} next to {b} .", "Here {a} and {b} are in {s} .",
             "A photo of {b} near {a} .", "[/EN#0/notvisual Someone] sees {a} beside {b} in {s} .",
             "In {s} , {a} waits by {b} .")

COCO_IDS = {"train": [9, 25, 30, 34, 36, 49, 61, 64, 71, 72, 77, 78],
            "val": [42, 73, 74, 133, 136, 139, 143, 164]}
VG_IMAGES = {"VG_100K": [1, 2, 3, 4], "VG_100K_2": [2417890, 2417891, 2417892, 2417893]}
VCR_IMAGES = {"train": ["lsmdc_3001_21_JUMP_STREET/3001_21_JUMP_STREET_00.03.07.498-00.03.10.975@0",
                        "lsmdc_3001_21_JUMP_STREET/3001_21_JUMP_STREET_00.05.17.115-00.05.19.781@1",
                        "movieclips_A_Fistful_of_Dollars/Sv_GcxkmW4Y@29",
                        "movieclips_A_Fistful_of_Dollars/Sv_GcxkmW4Y@31"],
              "val": ["lsmdc_1010_TITANIC/1010_TITANIC_00.41.32.072-00.41.40.196@0",
                      "movieclips_Rushmore/zTa2bfZNnRw@3"]}
# NLVR2 pairs: split → [(pair id, train directory)]; two sentences per pair
NLVR2_PAIRS = {"train": [("train-10171-0", 47), ("train-10171-1", 47), ("train-862-3", 3)],
               "dev": [("dev-850-0", None), ("dev-851-2", None)],
               "test1": [("test1-0-1", None), ("test1-12-0", None)]}
FLICKR_IDS = {"train": ["1000092795", "10002456", "1000268201", "1000344755", "1000366164"],
              "val": ["1001545525", "1002674143"], "test": ["1007129816", "1009434119"]}

VQA_KINDS = (  # (question, question_type, answer_type); answers come from the picture
    ("Is there a {colour} {name} in the picture?", "is there a", "yes/no"),
    ("How many {plural} are there?", "how many", "number"),
    ("What color is the {name}?", "what color is the", "other"),
    ("What is the man wearing?", "what is the man", "other"),
)


def _layout(rel):
    """(width, height, objects) of the picture at `rel`; each object {box: [x, y, w, h],
    colour, name}. A pure function of the path."""
    rng = random.Random(zlib.crc32(rel.encode()))
    width, height = rng.randrange(64, 161), rng.randrange(48, 129)
    objects = []
    for _ in range(rng.randint(2, 4)):
        w, h = rng.randrange(width // 6, width // 2), rng.randrange(height // 6, height // 2)
        objects.append({"box": [rng.randrange(width - w), rng.randrange(height - h), w, h],
                        "colour": rng.choice(sorted(COLOURS)), "name": rng.choice(sorted(OBJECTS))})
    return width, height, objects


def _phrase(obj):
    return f"a {obj['colour']} {obj['name']}"


def _plain(marked):
    """Entities markup → plain caption tokens joined by spaces."""
    return re.sub(r"\[/EN#\d+(?:/[^/\s\[\]]+)+ ", "", marked).replace("]", "")


def _captions(objects, scene_entity):
    """Five captions of a picture in Flickr30k Entities markup."""
    a, b = (f"[/EN#{k}/{OBJECTS[o['name']].entity_type} {_phrase(o)}]"
            for k, o in enumerate(objects[:2], start=1))
    s = f"[/EN#{scene_entity}/scene the {('park', 'street')[scene_entity % 2]}]"
    return [t.format(a=a, b=b, s=s) for t in TEMPLATES]


def _raw(marked):
    """Markup → the raw caption as the Karpathy/COCO files write it ('There is a dog.')."""
    text = _plain(marked).replace(" .", ".").replace(" ,", ",")
    return text[0].upper() + text[1:]


class _Writer:
    """Writes files under `root`, recording their root-relative paths per dataset."""

    def __init__(self, root):
        self.root, self.files = Path(root), {}

    def path(self, dataset, rel):
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files.setdefault(dataset, []).append(rel)
        return path

    def json(self, dataset, rel, obj, lines=False):
        text = "".join(json.dumps(o) + "\n" for o in obj) if lines else json.dumps(obj, indent=1)
        self.path(dataset, rel).write_text(text, encoding="utf-8")

    def text(self, dataset, rel, text):
        self.path(dataset, rel).write_text(text, encoding="utf-8")

    def image(self, dataset, rel):
        """Draw the picture of `rel` (JPEG or PNG by extension) → its _layout."""
        width, height, objects = _layout(rel)
        rng = np.random.default_rng(zlib.crc32(rel.encode()))
        ramp = np.linspace(0, 1, width)[None, :, None] * rng.integers(0, 256, 3)
        pixels = ramp + np.linspace(0, 1, height)[:, None, None] * rng.integers(0, 128, 3)
        pixels += rng.normal(0, 12, (height, width, 3))
        im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for k, o in enumerate(objects):
            x, y, w, h = o["box"]
            shape = draw.ellipse if k % 2 else draw.rectangle
            shape([x, y, x + w - 1, y + h - 1], fill=COLOURS[o["colour"]])
        im.save(self.path(dataset, rel))
        return width, height, objects


def _coco(out):
    categories = sorted({k[2:] for k in OBJECTS.values()})
    head = {"info": {"description": "COCO 2014 Dataset (sample)", "version": "1.0", "year": 2014},
            "licenses": [{"id": 1, "name": "Attribution License",
                          "url": "http://creativecommons.org/licenses/by/2.0/"}]}
    caption_id = instance_id = 0
    for split, ids in COCO_IDS.items():
        images, captions, instances = [], [], []
        for image_id in ids:
            name = f"COCO_{split}2014_{image_id:012d}.jpg"
            width, height, objects = out.image("coco", f"data/coco/{split}2014/{name}")
            images.append({"license": 1, "file_name": name, "width": width, "height": height,
                           "id": image_id, "date_captured": "2013-11-14 16:28:13",
                           "coco_url": f"http://images.cocodataset.org/{split}2014/{name}"})
            for marked in _captions(objects, 3):
                caption_id += 1
                captions.append({"id": caption_id, "image_id": image_id, "caption": _raw(marked)})
            for o in objects:
                x, y, w, h = o["box"]
                instance_id += 1
                instances.append({"id": instance_id, "image_id": image_id, "iscrowd": 0,
                                  "category_id": OBJECTS[o["name"]].coco_id, "bbox": [x, y, w, h],
                                  "area": float(w * h),
                                  "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        out.json("coco", f"data/coco/annotations/captions_{split}2014.json",
                 {**head, "images": images, "annotations": captions})
        out.json("coco", f"data/coco/annotations/instances_{split}2014.json",
                 {**head, "images": images, "annotations": instances, "categories": [
                     {"id": c, "name": n, "supercategory": s} for c, n, s in categories]})


def _vqa(out):
    k = 0
    for split, ids in COCO_IDS.items():
        questions, annotations = [], []
        for image_id in ids:
            _, _, objects = _layout(f"data/coco/{split}2014/COCO_{split}2014_{image_id:012d}.jpg")
            for q in range(2):
                text, question_type, answer_type = VQA_KINDS[k % len(VQA_KINDS)]
                k += 1
                o = objects[q]
                answer, other = {"yes/no": ("yes", "no"), "other": (o["colour"], "gray"),
                                 "number": (str(sum(p["name"] == o["name"] for p in objects)), "5")
                                 }[answer_type]
                if question_type == "what is the man":
                    answer, other = "t-shirt", "shirt"
                question_id = image_id * 1000 + q
                questions.append({"image_id": image_id, "question_id": question_id,
                                  "question": text.format(**o, plural=OBJECTS[o["name"]].plural)})
                annotations.append({
                    "question_type": question_type, "multiple_choice_answer": answer,
                    "answers": [{"answer": other if j in (3, 7) else answer, "answer_id": j + 1,
                                 "answer_confidence": "maybe" if j == 7 else "yes"} for j in range(10)],
                    "image_id": image_id, "answer_type": answer_type, "question_id": question_id})
        head = {"info": {"description": "VQA v2 (sample)", "version": "2.0"}, "data_type": "mscoco",
                "data_subtype": f"{split}2014", "license": {
                    "name": "Creative Commons Attribution 4.0 International License",
                    "url": "http://creativecommons.org/licenses/by/4.0/"}}
        out.json("vqa", f"data/vqa/v2_OpenEnded_mscoco_{split}2014_questions.json",
                 {**head, "task_type": "Open-Ended", "questions": questions})
        out.json("vqa", f"data/vqa/v2_mscoco_{split}2014_annotations.json",
                 {**head, "annotations": annotations})


def _vg(out):
    # a few pictures are also in COCO (one a val2014 evaluation image) or Flickr30k (Karpathy test)
    also = {2: (COCO_IDS["val"][0], None), 3: (COCO_IDS["train"][0], None),
            2417891: (None, int(FLICKR_IDS["test"][0]))}
    image_data, regions, objects, attributes = [], [], [], []
    region_id = object_id = 1000
    for folder, ids in VG_IMAGES.items():
        for image_id in ids:
            width, height, objs = out.image("vg", f"data/vg/{folder}/{image_id}.jpg")
            url = f"https://cs.stanford.edu/people/rak248/{folder}/{image_id}.jpg"
            coco_id, flickr_id = also.get(image_id, (None, None))
            image_data.append({"width": width, "url": url, "height": height, "image_id": image_id,
                               "coco_id": coco_id, "flickr_id": flickr_id})
            phrases = [(o["box"], _phrase(o)) for o in objs] + [
                ([0, 0, width, height], f"{_phrase(objs[0])} next to {_phrase(objs[1])}")]
            image_regions, image_objects = [], []
            for (x, y, w, h), phrase in phrases:
                region_id += 1
                image_regions.append({"region_id": region_id, "width": w, "height": h,
                                      "image_id": image_id, "phrase": phrase, "y": y, "x": x})
            for o in objs:
                object_id += 1
                x, y, w, h = o["box"]
                image_objects.append({"synsets": [f"{o['name']}.n.01"], "h": h, "object_id": object_id,
                                      "merged_object_ids": [], "names": [o["name"]], "w": w, "y": y, "x": x})
            regions.append({"regions": image_regions, "id": image_id})
            objects.append({"image_id": image_id, "image_url": url, "objects": image_objects})
            attributes.append({"image_id": image_id, "attributes": [
                {**obj, "attributes": [o["colour"]]} if k % 2 == 0 else obj
                for k, (obj, o) in enumerate(zip(image_objects, objs))]})
    for name, data in (("image_data", image_data), ("region_descriptions", regions),
                       ("objects", objects), ("attributes", attributes)):
        out.json("vg", f"data/vg/{name}.json", data)


def _vcr(out):
    for split, images in VCR_IMAGES.items():
        lines = []
        for n, image in enumerate(images):
            width, height, objs = out.image("vcr", f"data/vcr/vcr1images/{image}.jpg")
            names = ["person"] + [OBJECTS[o["name"]].coco_name for o in objs[1:]]
            out.json("vcr", f"data/vcr/vcr1images/{image}.json", {
                "boxes": [[float(x), float(y), float(x + w), float(y + h), 0.99 - 0.1 * k]
                          for k, (x, y, w, h) in enumerate(o["box"] for o in objs)],
                "segms": [[[[x, y], [x + w, y], [x + w, y + h], [x, y + h]]]
                          for x, y, w, h in (o["box"] for o in objs)],
                "names": names, "width": width, "height": height})
            movie = image.split("/")[0].split("_", 1)[1]
            for q, question in enumerate((["What", "is", [0], "doing", "?"],
                                          ["Why", "is", [1], "here", "?"])):
                number = 2 * n + q
                lines.append({
                    "movie": movie, "objects": names, "interesting_scores": [0, 1],
                    "answer_likelihood": "likely", "img_fn": f"{image}.jpg", "metadata_fn": f"{image}.json",
                    "answer_orig": "x", "question_orig": "y", "rationale_orig": "z", "question": question,
                    "answer_choices": [[[0], "is", "looking", "at", [1], "."], ["They", "are", "asleep", "."],
                                       [[1], "is", "leaving", "."], ["Nothing", "happens", "."]],
                    "answer_label": number % 4, "answer_match_iter": [2, 0, 3, 1],
                    "answer_sources": [10, 0, 22, 31],
                    "rationale_choices": [[[0], "faces", [1], "."], ["It", "is", "dark", "."],
                                          ["Because", "of", "the", "rain", "."], ["No", "reason", "."]],
                    "rationale_label": (number + 1) % 4, "rationale_sources": [5, 6, 0, 7],
                    "rationale_match_iter": [1, 3, 0, 2], "img_id": f"{split}-{n}", "question_number": q,
                    "annot_id": f"{split}-{number}", "match_fold": f"{split}-0", "match_index": number})
        out.json("vcr", f"data/vcr/{split}.jsonl", lines, lines=True)


def _nlvr2(out):
    for split, pairs in NLVR2_PAIRS.items():
        folder = "data/nlvr2/images/train" if split == "train" else f"data/nlvr2/{split}"
        lines = []
        for pair, directory in pairs:
            sub = f"{folder}/{directory}" if directory is not None else folder
            left, right = (out.image("nlvr2", f"{sub}/{pair}-img{k}.png")[2] for k in (0, 1))
            statements = [(f"One image contains {_phrase(left[0])}.", "True"),
                          (f"Exactly {len(right) + 1} objects appear in the right image.", "False")]
            for k, (sentence, label) in enumerate(statements):
                line = {"validation": {"W0": label}, "sentence": sentence,
                        "left_url": f"https://example.org/{pair}-left.jpg", "writer": "103", "label": label,
                        "right_url": f"https://example.org/{pair}-right.jpg", "synset": "n02087122",
                        "query": f"{left[0]['name']}22", "identifier": f"{pair}-{k}",
                        "extra_validations": {} if split == "train" else {"W1": label, "W2": label}}
                lines.append({**line, "directory": directory} if split == "train" else line)
        out.json("nlvr2", f"data/nlvr2/data/{split}.json", lines, lines=True)


def _flickr30k(out):
    root, entities = "data/flickr30k", "data/flickr30k/flickr30k_entities"
    karpathy, sentid = [], 0
    for split, ids in FLICKR_IDS.items():
        for image_id in ids:
            width, height, objs = out.image("flickr30k", f"{root}/flickr30k-images/{image_id}.jpg")
            marked = _captions(objs, len(objs) + 1)
            out.text("flickr30k", f"{entities}/Sentences/{image_id}.txt", "\n".join(marked) + "\n")
            # PASCAL-VOC boxes in 1-based pixels; the last entity is the scene, without a box
            xml = [f"<annotation>\n<filename>{image_id}.jpg</filename>\n<size>\n<width>{width}</width>"
                   f"\n<height>{height}</height>\n<depth>3</depth>\n</size>"]
            xml += [f"<object>\n<name>{k}</name>\n<bndbox>\n<xmin>{x + 1}</xmin>\n<ymin>{y + 1}</ymin>"
                    f"\n<xmax>{x + w}</xmax>\n<ymax>{y + h}</ymax>\n</bndbox>\n</object>"
                    for k, (x, y, w, h) in enumerate((o["box"] for o in objs), start=1)]
            xml += [f"<object>\n<name>{len(objs) + 1}</name>\n<nobndbox>0</nobndbox>\n<scene>1</scene>"
                    "\n</object>\n</annotation>\n"]
            out.text("flickr30k", f"{entities}/Annotations/{image_id}.xml", "\n".join(xml))
            sentences = []
            for m in marked:
                sentences.append({"tokens": re.findall(r"[a-z0-9]+", _plain(m).lower()), "raw": _raw(m),
                                  "imgid": len(karpathy), "sentid": sentid})
                sentid += 1
            karpathy.append({"sentids": [s["sentid"] for s in sentences], "imgid": len(karpathy),
                             "sentences": sentences, "split": split, "filename": f"{image_id}.jpg"})
        out.text("flickr30k", f"{entities}/{split}.txt", "\n".join(ids) + "\n")
    out.json("flickr30k", f"{root}/dataset_flickr30k.json", {"images": karpathy, "dataset": "flickr30k"})


_WRITERS = {"coco": _coco, "vg": _vg, "vqa": _vqa, "vcr": _vcr, "nlvr2": _nlvr2, "flickr30k": _flickr30k}


def write_release_samples(root, datasets=None):
    """Write samples of `datasets` (default: all of DATASETS) under ``root/data/`` in the
    released layout that configs/paper.yaml points at → {dataset: [root-relative paths]}.

    VQA's files are about COCO's pictures: write "coco" too for its images.
    """
    datasets = list(DATASETS if datasets is None else datasets)
    unknown = set(datasets) - set(DATASETS)
    if unknown:
        raise ValueError(f"unknown dataset(s) {sorted(unknown)} (expected some of {DATASETS})")
    out = _Writer(root)
    for name in datasets:
        _WRITERS[name](out)
    return {name: sorted(files) for name, files in out.files.items()}


def paper_datasets_config(root=None):
    """The `datasets:` config section for the samples: configs/paper.yaml's paths plus COCO's
    instances files, VG's objects.json and NLVR2's released image folders (one per split).
    Paths are relative to the working directory, or under `root` when given."""
    def p(rel):
        return rel if root is None else str(Path(root) / rel)

    coco = {split: {"annotations": p(f"data/coco/annotations/captions_{split}2014.json"),
                    "images": p(f"data/coco/{split}2014"),
                    "instances": p(f"data/coco/annotations/instances_{split}2014.json")}
            for split in COCO_IDS}
    return {
        "coco": {"captions": coco},
        "vg": {"image_data": p("data/vg/image_data.json"), "objects": p("data/vg/objects.json"),
               "region_descriptions": p("data/vg/region_descriptions.json"),
               "attributes": p("data/vg/attributes.json"), "image_root": p("data/vg")},
        "vqa": {"splits": {split: {
            "questions": p(f"data/vqa/v2_OpenEnded_mscoco_{split}2014_questions.json"),
            "annotations": p(f"data/vqa/v2_mscoco_{split}2014_annotations.json")} for split in COCO_IDS}},
        "vcr": {"splits": {split: p(f"data/vcr/{split}.jsonl") for split in VCR_IMAGES},
                "image_root": p("data/vcr/vcr1images")},
        "nlvr2": {"splits": {split: p(f"data/nlvr2/data/{split}.json") for split in NLVR2_PAIRS},
                  "image_root": {"train": p("data/nlvr2/images/train"), "dev": p("data/nlvr2/dev"),
                                 "test1": p("data/nlvr2/test1")}},
        "flickr30k": {"image_root": p("data/flickr30k/flickr30k-images"),
                      "karpathy_split": p("data/flickr30k/dataset_flickr30k.json"),
                      "entities_root": p("data/flickr30k/flickr30k_entities")},
    }
