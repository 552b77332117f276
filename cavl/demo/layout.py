"""Where the demo generator writes each dataset: the `datasets` config the demo runs on.

The one place that knows the demo's file layout. With `demo.enabled`, the workflow takes its
`datasets` section from :func:`demo_datasets`; nothing here touches the file system.
"""

import posixpath


def demo_datasets(out_dir: str) -> dict:
    """The `datasets` config section of the demo data written under `out_dir`."""
    def p(*parts):
        return posixpath.join(out_dir, *parts)

    coco_split = {
        split: {"annotations": p("coco", "annotations", f"captions_{split}2014.json"),
                "images": p("coco", f"{split}2014"),
                "instances": p("coco", "annotations", f"instances_{split}2014.json")}
        for split in ("train", "val")
    }
    vqa_split = {
        split: {"questions": p("vqa", f"v2_OpenEnded_mscoco_{split}2014_questions.json"),
                "annotations": p("vqa", f"v2_mscoco_{split}2014_annotations.json")}
        for split in ("train", "val")
    }
    return {
        "coco": {"captions": coco_split},
        "vg": {"image_data": p("vg", "image_data.json"),
               "region_descriptions": p("vg", "region_descriptions.json"),
               "image_root": p("vg"),
               "objects": p("vg", "objects.json"),
               "attributes": p("vg", "attributes.json")},
        "vqa": {"splits": vqa_split},
        "vcr": {"splits": {split: p("vcr", f"{split}.jsonl") for split in ("train", "val")},
                "image_root": p("vcr", "vcr1images")},
        "nlvr2": {"splits": {split: p("nlvr2", f"{split}.json") for split in ("train", "dev", "test1")},
                  "image_root": p("nlvr2", "images")},
        "flickr30k": {"image_root": p("flickr30k", "flickr30k-images"),
                      "karpathy_split": p("flickr30k", "dataset_flickr30k.json"),
                      "entities_root": p("flickr30k", "flickr30k_entities")},
    }


def demo_vocabularies(out_dir: str) -> dict:
    """The detector vocabulary files the demo writes (kind → path): its stand-in for BUTD's."""
    return {kind: posixpath.join(out_dir, "vocab", f"{kind}_vocab.txt") for kind in ("objects", "attributes")}
