"""Word↔region alignment figures of a pretrained model (the paper's §5.3) and the phrase hit rates.

    python -m cavl.visualise --backbone results/pretrain/model --settings '{"images": 4, "threads": 2}' \
        --coco-manifest resources/manifests/coco.parquet --coco-features resources/features/coco/index.parquet \
        --coco-captions resources/tasks/pretrain/val.parquet --phrases resources/tasks/rpg/val.parquet \
        --flickr-manifest resources/manifests/flickr30k.parquet --flickr-captions resources/tasks/tir/val.parquet \
        --flickr-features resources/features/flickr30k/index.parquet --out results/visualisation \
        --objects-vocab resources/detector/objects_vocab.txt --attributes-vocab resources/detector/attributes_vocab.txt

For the first `images` val images (by image id) of COCO and Flickr30k that have features, with
the first of their captions (order: the table's `sentence_id` / `sentence_index`, else its rows;
COCO: pretraining's val table, dataset coco; Flickr30k: tir's val table), under the two scores of
cavl.alignment (cosine of PwCL's separate passes, last-layer word→region attention of the fused pass):

- `{dataset}/{image_id}_regions.png`: the detected regions the model sees (the first `max_regions`,
  given boxes left out), labelled `r{i} attribute class` — names from the vocabulary files when
  given (checked against the sha256 the index records), else ids;
- `{dataset}/{image_id}_words.png`: per word, a line to its best region (cosine and attention panels);
- `{dataset}/{image_id}_heatmap.png`: the word × region matrices of both scores (row maxima ringed);
- Flickr30k, `{dataset}/{image_id}_phrase.png`: the image's first Entities phrase with a box — its
  gt box(es) beside the region each score chooses;
- `alignment.json`: settings, the backbone, every matrix and choice, and `phrase_hits`: the hit
  rates over ALL phrases of `--phrases` (cavl.alignment.phrase_hits) against a random detected
  region, with exact Poisson-binomial p-values;
- `index.html`: the hit-rate table and every figure; `--page PATH`: the same page with the figures
  embedded (the Snakemake report's).

A dataset is skipped when none of its paths is given (some but not all is an error); `--phrases`
needs the Flickr30k features. Relative manifest image paths start at `--image-root`; an unreadable
image is drawn as a grey canvas of its size. `--settings`: the config's `visualise:` section
(outputs are byte-identical for a fixed thread count). `--max-regions` / `--max-text-len` default
to the pretraining's (the model folder's resolved_config.yaml). Everything is written into a hidden
sibling of `--out`, renamed to `--out` at the end (cavl.io.atomic_dir).
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from cavl.alignment import SCORES, image_order_key, align, phrase_hits
from cavl.data.regions import OldShardError, RegionSource
from cavl.formats.vocab import read_vocab
from cavl.io import atomic_dir, atomic_path, file_sha256
from cavl.metrics.grounding import as_boxes
from cavl.model import CONFIG_NAME, WEIGHTS_NAME, CavlModel
from cavl.settings import VisualiseSection, load_section
from cavl.summary import to_html_table

log = logging.getLogger("cavl.visualise")

DATASETS = {"coco": "COCO", "flickr30k": "Flickr30k"}
SCORE_TITLES = {"cosine": "cosine (PwCL space, separate passes)", "attention": "last-layer attention (fused pass)"}
SCORE_COLOURS = {"cosine": "tab:orange", "attention": "tab:purple"}
HIT_COLUMNS = ["score", "hits", "phrases", "hit_rate", "baseline_rate", "expected_hits", "p_value"]


def pretraining_data(backbone) -> dict:
    """The pretraining's `pretrain.data` settings recorded in the model folder (empty: none)."""
    path = Path(backbone) / "resolved_config.yaml"
    if not path.exists():
        return {}
    resolved = yaml.safe_load(path.read_text()) or {}
    return ((resolved.get("pretrain") or {}).get("data")) or {}


def run_settings(args) -> dict:
    """images and threads: the `visualise:` section of --settings (validated by the config schema,
    its defaults filled in); max_regions and max_text_len: --max-regions / --max-text-len, else the
    pretraining's (the model folder's resolved_config.yaml)."""
    section = load_section(VisualiseSection, {"visualise": json.loads(args.settings)}, "visualise")
    settings = {"images": section.images, "threads": section.threads}
    data = pretraining_data(args.backbone)
    for key, low in (("max_regions", 1), ("max_text_len", 3)):
        value = getattr(args, key)
        if value is None:
            value = data.get(key)
            if value is None:
                raise ValueError(f"--{key.replace('_', '-')} is not given and {Path(args.backbone) / 'resolved_config.yaml'} "
                                 f"records no pretrain.data.{key}")
        if int(value) < low:
            raise ValueError(f"{key} must be >= {low}, got {value}")
        settings[key] = int(value)
    return settings


def read_captions(path, dataset: str | None = None) -> pd.DataFrame:
    """image_id, caption_index, caption: every caption of a table (pretrain: `caption`, rows of
    `dataset` only; tir: `caption` ordered by `sentence_id`; rpg: `sentence` by `sentence_index`),
    in caption order within each image."""
    df = pd.read_parquet(path)
    if "dataset" in df.columns and dataset is not None:
        df = df[df["dataset"] == dataset]
    text = "caption" if "caption" in df.columns else "sentence" if "sentence" in df.columns else None
    if text is None or "image_id" not in df.columns:
        raise ValueError(f"{path}: a caption table needs image_id and caption (or sentence) columns")
    order = next((c for c in ("sentence_id", "sentence_index") if c in df.columns), None)
    df = df.reset_index(drop=True).reset_index(names="row")
    if order is not None:
        df = df.drop_duplicates(["image_id", order])
    df = df.sort_values([order, "row"] if order else ["row"], kind="stable")
    return pd.DataFrame({"image_id": df["image_id"].astype(str).to_numpy(), "caption": df[text].astype(str).to_numpy(),
                         "caption_index": (df[order] if order else df["row"]).to_numpy()})


@dataclass
class DatasetInputs:
    name: str  # coco | flickr30k
    manifest: str
    features: str
    captions: str


def dataset_inputs(args) -> list:
    """The datasets whose paths are given (all three, or none: skipped)."""
    out = []
    for name, prefix in (("coco", "coco"), ("flickr30k", "flickr")):
        paths = {k: getattr(args, f"{prefix}_{k}") for k in ("manifest", "features", "captions")}
        missing = [f"--{prefix}-{k}" for k, v in paths.items() if not v]
        if 0 < len(missing) < 3:
            raise ValueError(f"{DATASETS[name]}: give {', '.join(missing)} too (or none of its paths to skip it)")
        if not missing:
            out.append(DatasetInputs(name, **paths))
    return out


class Labels:
    """Region labels `attribute class` from the shard's class/attribute ids and the vocabularies."""

    def __init__(self, reader, objects_vocab=None, attributes_vocab=None):
        recorded = reader.vocabularies or {}
        self.names = {}
        for kind, path in (("objects", objects_vocab), ("attributes", attributes_vocab)):
            if not path:
                continue
            vocab = read_vocab(path)
            entry = recorded.get(kind)
            if entry and entry.get("sha256") and entry["sha256"] != vocab.sha256:
                raise ValueError(f"{path} is not the {kind} vocabulary of {reader.index_path} "
                                 f"(sha256 {vocab.sha256[:12]}…, the shards record {entry['sha256'][:12]}…)")
            if not entry:
                log.warning("%s records no %s vocabulary: naming its ids with %s unchecked", reader.index_path,
                            kind, path)
            self.names[kind] = vocab.names
        self.reader = reader

    def _name(self, kind, i):
        names = self.names.get(kind)
        if names is not None and 0 <= i < len(names):
            return names[i]
        return f"{'class' if kind == 'objects' else 'attr'} {i}"

    def of(self, image_id, skip: int, n: int) -> list:
        """Labels of the image's boxes skip … skip+n-1 (the regions a source with skip_given returns);
        empty for a shard written before shards had class/attribute columns."""
        try:
            r = self.reader.regions(image_id)
        except OldShardError as e:
            log.warning("no region labels: %s", e)
            return [""] * n
        out = []
        for i in range(skip, skip + n):
            parts = [] if r.attributes is None else [self._name("attributes", int(r.attributes[i]))]
            out.append(" ".join(parts + [self._name("objects", int(r.classes[i]))]))
        return out


def load_image(path, root, size):
    """The image as an (H, W, 3) array (EXIF-oriented), or a grey canvas of `size` (W, H)."""
    from PIL import Image, ImageOps

    if path:
        full = Path(path) if os.path.isabs(path) else Path(root) / path
        try:
            with Image.open(full) as im:
                return np.asarray(ImageOps.exif_transpose(im).convert("RGB")), True
        except (OSError, ValueError) as e:
            log.warning("cannot read %s (%s): a grey canvas instead", full, e)
    w, h = max(1, int(size[0])), max(1, int(size[1]))
    return np.full((h, w, 3), 200, np.uint8), False


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, image, size):
    W, H = size
    ax.imshow(image, extent=(0, W, H, 0), interpolation="bilinear")
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def _box(ax, box, colour, lw=1.5, ls="-", label=None, fontsize=7):
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=lw, linestyle=ls))
    if label:
        ax.text(x1 + 1, y1 + 1, label, fontsize=fontsize, va="top", ha="left", color="white",
                bbox={"facecolor": colour, "alpha": 0.75, "pad": 1, "edgecolor": "none"})


def _save(fig, path):
    fig.savefig(path, format="png", dpi=100)
    _pyplot().close(fig)


def plot_regions(path, image, size, boxes, labels, title):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5 * size[1] / max(size[0], 1) + 0.4))
    _show(ax, image, size)
    colours = plt.get_cmap("tab20")
    for i, (box, label) in enumerate(zip(boxes, labels)):
        _box(ax, box, colours(i % 20), label=f"r{i} {label}".strip())
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_words(path, image, size, boxes, alignment, caption):
    """Per score a panel: the words on the left, each with a line to the box of its best region."""
    plt = _pyplot()
    W, H = size
    fig, axes = plt.subplots(1, len(alignment.scores), figsize=(6.2 * len(alignment.scores), 4.6), squeeze=False)
    colours = plt.get_cmap("tab20")
    n = len(alignment.words)
    fontsize = 8 if n <= 16 else 6
    for ax, (name, matrix) in zip(axes[0], alignment.scores.items()):
        _show(ax, image, size)
        ax.set_xlim(-0.85 * W, W)
        for k, word in enumerate(alignment.words):
            y = (k + 0.5) * H / max(n, 1)
            c = colours(k % 20)
            if matrix.shape[1] == 0:
                ax.text(-0.82 * W, y, word, color=c, fontsize=fontsize, va="center")
                continue
            r = int(np.argmax(matrix[k]))
            ax.text(-0.82 * W, y, f"{word} → r{r} ({matrix[k, r]:.2f})", color=c, fontsize=fontsize, va="center")
            x1, y1, x2, y2 = (float(v) for v in boxes[r])
            ax.plot([-0.08 * W, (x1 + x2) / 2], [y, (y1 + y2) / 2], color=c, linewidth=1, alpha=0.8)
            _box(ax, boxes[r], c, lw=1.5)
        ax.set_title(SCORE_TITLES.get(name, name), fontsize=9)
    fig.suptitle(_wrap(caption), fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_heatmaps(path, alignment, region_labels):
    plt = _pyplot()
    n_words, n_regions = len(alignment.words), len(region_labels)
    fig, axes = plt.subplots(1, len(alignment.scores), squeeze=False,
                             figsize=(max(4.0, 0.45 * n_regions + 2.5) * len(alignment.scores),
                                      max(3.0, 0.28 * n_words + 2.2)))
    for ax, (name, matrix) in zip(axes[0], alignment.scores.items()):
        im = ax.imshow(matrix if matrix.size else np.zeros((max(n_words, 1), 1)), aspect="auto", cmap="viridis",
                       interpolation="nearest")
        ax.set_yticks(range(n_words), alignment.words, fontsize=7)
        ax.set_xticks(range(n_regions), [f"r{i} {lab}" for i, lab in enumerate(region_labels)], fontsize=7,
                      rotation=90)
        if matrix.size:
            best = matrix.argmax(1)
            ax.scatter(best, range(n_words), s=40, facecolors="none", edgecolors="red", linewidths=1.2)
        ax.set_title(SCORE_TITLES.get(name, name), fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    _save(fig, path)


def plot_phrase(path, image, size, boxes, phrase: dict):
    """Per score a panel: the phrase's gt box(es) (green, dashed) and the region the score chose."""
    plt = _pyplot()
    names = [s for s in SCORES if s in phrase["scores"]]
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.9), squeeze=False)
    for ax, name in zip(axes[0], names):
        _show(ax, image, size)
        for g in phrase["gt_boxes"]:
            _box(ax, g, "limegreen", lw=2.5, ls="--")
        choice = phrase["scores"][name]
        r = choice["region"]
        if r >= 0:
            _box(ax, boxes[r], SCORE_COLOURS[name], lw=2, label=f"r{r}")
        verdict = "hit" if choice["hit"] else "miss"
        ax.set_title(f"{name}: r{r}, IoU {choice['iou']:.2f} ({verdict})", fontsize=9)
    fig.suptitle(_wrap(f"\"{phrase['phrase']}\" in: {phrase['sentence']}"), fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _wrap(text, width=90):
    return "\n".join(textwrap.wrap(text, width)) or " "


def hit_rows(summary: dict) -> list:
    return [{"score": name, **{k: s[k] for k in HIT_COLUMNS[1:]}} for name, s in summary["scores"].items()]


EMBED_BUDGET = 1_500_000  # characters of data URIs in the self-contained page (Chromium: 2 MB per URL)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def index_html(record: dict, inline_from: Path | None = None) -> str:
    """The page of the pictures and the hit-rate table; `inline_from`: the folder the pictures are
    in, to embed them as data URIs (a self-contained page, as the Snakemake report needs). The
    report shows a page as one data URL, which Chromium caps at 2 MB: each dataset embeds its
    images, whole, up to an equal share of EMBED_BUDGET and names the folder for the rest."""
    style = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;"
             "margin-bottom:2em}th,td{border:1px solid #bbb;padding:.25em .6em;text-align:left}"
             "th{background:#eef}td.n{text-align:right}img{max-width:100%;margin:.3em 0}")
    s = record["settings"]
    parts = [
        f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>CAVL word-region alignment</title>"
        f"<style>{style}</style></head><body>\n<h1>Word–region alignment</h1>\n",
        "<p>Which detected region each word of a caption goes with, under the pretrained backbone "
        f"<code>{html.escape(record['backbone']['path'])}</code> (PwCL encoding "
        f"<code>{html.escape(str(record['pwcl_encoding']))}</code>): <em>cosine</em> between the word's state in a "
        "text-only pass and the region's state in an image-only pass (PwCL's space: no projection), and "
        "<em>attention</em>, the last layer's attention of the word's tokens on the region, averaged over heads, in "
        f"the fused pass. A word's row is the mean of its wordpieces'. Regions: the first {s['max_regions']} "
        f"detected boxes of each image; captions cut at {s['max_text_len']} wordpieces.</p>\n",
    ]
    hits = record.get("phrase_hits")
    if hits:
        parts.append(
            "<h2>Flickr30k Entities phrases</h2>\n<p>Each phrase (with a gt box) scores every detected region by "
            "the mean over its words of the word→region score, with its whole sentence as the caption; the best "
            "region is a hit at IoU ≥ 0.5 with a gt box. <em>baseline_rate</em>: a uniformly random detected region "
            "(hit with probability m/n per phrase); <em>p_value</em>: exact one-sided Poisson-binomial. Rates in "
            f"percent; {hits['phrases']} phrases scored, {hits['excluded_no_box']} without a box left out; "
            f"upper bound (some region reaches IoU 0.5) {_percent(hits['upper_bound'])}.</p>\n")
        parts.append(to_html_table(hit_rows(hits), HIT_COLUMNS))
    share = EMBED_BUDGET // max(1, len(record["datasets"]))
    for name, entry in record["datasets"].items():
        parts.append(f"<h2>{html.escape(DATASETS.get(name, name))}</h2>\n")
        if not entry["images"]:
            parts.append("<p>No val image with features.</p>\n")
        embedded = 0
        for number, im in enumerate(entry["images"]):
            figures = [(key, im["figures"][key]) for key in ("regions", "words", "heatmap", "phrase")
                       if key in im["figures"]]
            if inline_from is not None:
                figures = [(key, _data_uri(inline_from / src)) for key, src in figures]
                embedded += sum(len(src) for _, src in figures)
                if embedded > share and number > 0:
                    parts.append(f"<p>{len(entry['images']) - number} more images: results/visualisation/"
                                 "index.html (this page stays under the report's size limit).</p>\n")
                    break
            parts.append(f"<h3>{html.escape(im['image_id'])}</h3>\n<p>{html.escape(im['caption'])}</p>\n")
            for key, src in figures:
                alt = html.escape(f"{key} of {im['image_id']}", quote=True)
                parts.append(f"<img src=\"{html.escape(src, quote=True)}\" alt=\"{alt}\"><br>\n")
    parts.append("</body></html>\n")
    return "".join(parts)


def _percent(v):
    return "–" if v is None else f"{v:.1f}%"


def visualise_dataset(ds: DatasetInputs, model, tokenizer, settings, args, tmp: Path, phrase_info=None) -> dict:
    source = RegionSource(ds.features, settings["max_regions"], skip_given=True)
    labels = Labels(source.reader, args.objects_vocab, args.attributes_vocab)
    manifest = pd.read_parquet(ds.manifest, columns=["image_id", "path"])
    paths = dict(zip(manifest["image_id"].astype(str), manifest["path"].astype(str)))
    captions = read_captions(ds.captions, ds.name)
    ids = sorted({i for i in captions["image_id"].unique() if i in source}, key=image_order_key)[: settings["images"]]
    first = captions.drop_duplicates("image_id").set_index("image_id")
    (tmp / ds.name).mkdir(exist_ok=True)
    images = []
    for image_id in ids:
        caption = str(first.loc[image_id, "caption"])
        regions = source.get(image_id)
        boxes = source.pixel_boxes(image_id)
        n = len(boxes)
        names = labels.of(image_id, source.reader.num_given(image_id), n)
        size = source.reader.size(image_id)
        picture, found = load_image(paths.get(image_id), args.image_root, size)
        alignment = align(model, tokenizer, [caption], regions, settings["max_text_len"])[0]
        stem = f"{ds.name}/{_safe(image_id)}"
        figures = {"regions": f"{stem}_regions.png", "words": f"{stem}_words.png", "heatmap": f"{stem}_heatmap.png"}
        plot_regions(tmp / figures["regions"], picture, size, boxes, names,
                     f"{DATASETS[ds.name]} {image_id}: the {n} detected regions the model sees")
        plot_words(tmp / figures["words"], picture, size, boxes, alignment, caption)
        plot_heatmaps(tmp / figures["heatmap"], alignment, names)
        entry = {"image_id": image_id, "caption_index": _plain(first.loc[image_id, "caption_index"]),
                 "caption": caption, "image_found": found, "words": alignment.words,
                 "regions": [{"index": i, "box": [float(v) for v in boxes[i]], "label": names[i]} for i in range(n)],
                 "scores": {name: {"best_region": m.argmax(1).tolist() if m.size else [], "matrix": m.tolist()}
                            for name, m in alignment.scores.items()},
                 "figures": figures}
        if phrase_info is not None:
            phrase = phrase_info(image_id)
            if phrase is not None:
                figures["phrase"] = f"{stem}_phrase.png"
                plot_phrase(tmp / figures["phrase"], picture, size, boxes, phrase)
                entry["phrase"] = phrase
        images.append(entry)
        log.info("%s %s: %d words × %d regions", ds.name, image_id, len(alignment.words), n)
    return {"manifest": ds.manifest, "features": ds.features, "captions": ds.captions, "images": images}


def phrase_lookup(phrases: pd.DataFrame, per_phrase: pd.DataFrame):
    """image_id → the record of its first scored phrase (by sentence, then word), or None."""
    table = phrases.assign(image_id=phrases["image_id"].astype(str))
    keyed = {(r.image_id, int(r.sentence_index), int(r.first_word_index)): r for r in table.itertuples(index=False)}

    def lookup(image_id):
        rows = per_phrase[per_phrase["image_id"] == image_id]
        if rows.empty:
            return None
        p = rows.iloc[0]
        src = keyed[(image_id, int(p["sentence_index"]), int(p["first_word_index"]))]
        return {"phrase": str(p["phrase"]), "sentence": str(src.sentence), "sentence_index": int(p["sentence_index"]),
                "first_word_index": int(p["first_word_index"]),
                "gt_boxes": as_boxes("gt_boxes", src.gt_boxes).tolist(),
                "scores": {name: {"region": int(p[f"{name}_region"]), "iou": float(p[f"{name}_iou"]),
                                  "hit": bool(p[f"{name}_hit"])} for name in SCORES if f"{name}_hit" in p}}

    return lookup


def run(args) -> dict:
    from transformers import AutoTokenizer

    started = time.monotonic()
    settings = run_settings(args)
    torch.set_num_threads(settings["threads"])
    datasets = dataset_inputs(args)
    if args.phrases and not args.flickr_features:
        raise ValueError("--phrases needs --flickr-features (the regions the phrases are grounded in)")
    backbone = Path(args.backbone)
    model = CavlModel.from_pretrained(backbone).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    config = json.loads((backbone / CONFIG_NAME).read_text())
    encoding = (config.get("objective") or {}).get("pwcl_encoding")
    if encoding not in (None, "separate"):
        log.warning("the model was pretrained with PwCL encoding %r: its PwCL space is the fused pass's states; "
                    "the cosine here is of its separate passes", encoding)
    record = {"settings": settings,
              "backbone": {"path": str(args.backbone), "sha256": file_sha256(backbone / WEIGHTS_NAME)},
              "pwcl_encoding": encoding, "scores": {k: SCORE_TITLES[k] for k in SCORES},
              "phrase_hits": None, "datasets": {}}
    phrase_info = None
    if args.phrases:
        phrases = pd.read_parquet(args.phrases)
        source = RegionSource(args.flickr_features, settings["max_regions"], skip_given=True)
        summary, per_phrase = phrase_hits(model, tokenizer, phrases, source, settings["max_text_len"])
        record["phrase_hits"] = {"phrases_table": args.phrases, **summary}
        phrase_info = phrase_lookup(phrases, per_phrase)
        for name, s in summary["scores"].items():
            log.info("phrases, %s: %d of %d hit (%.1f%%), random %.1f%%, p = %.3g", name, s["hits"], s["phrases"],
                     s["hit_rate"], s["baseline_rate"], s["p_value"])
    with atomic_dir(args.out) as tmp:
        for ds in datasets:
            record["datasets"][ds.name] = visualise_dataset(ds, model, tokenizer, settings, args, tmp,
                                                            phrase_info if ds.name == "flickr30k" else None)
        (tmp / "alignment.json").write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "index.html").write_text(index_html(record))
        page = index_html(record, inline_from=tmp) if args.page else None
    if page is not None:
        with atomic_path(args.page) as tmp_page:
            Path(tmp_page).write_text(page)
    log.info("wrote %s in %.1f s", args.out, time.monotonic() - started)
    return record


def _safe(image_id: str) -> str:
    """A file name for an image id (VCR-like ids hold '/' and '@')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(image_id))


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m cavl.visualise", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--backbone", required=True, help="pretrained model folder (results/pretrain/model)")
    p.add_argument("--settings", default="{}",
                   help='the config\'s `visualise:` section as JSON, e.g. {"images": 4, "threads": 2}')
    p.add_argument("--max-regions", type=int, help="detected regions per image (default: the pretraining's)")
    p.add_argument("--max-text-len", type=int, help="wordpieces per caption (default: the pretraining's)")
    p.add_argument("--coco-manifest", help="resources/manifests/coco.parquet")
    p.add_argument("--coco-features", help="resources/features/coco/index.parquet")
    p.add_argument("--coco-captions", help="COCO val captions: resources/tasks/pretrain/val.parquet")
    p.add_argument("--flickr-manifest", help="resources/manifests/flickr30k.parquet")
    p.add_argument("--flickr-features", help="resources/features/flickr30k/index.parquet")
    p.add_argument("--flickr-captions", help="Flickr30k val captions: resources/tasks/tir/val.parquet")
    p.add_argument("--phrases", help="Flickr30k Entities val phrases: resources/tasks/rpg/val.parquet")
    p.add_argument("--objects-vocab", help="the detector's object vocabulary (resources/detector/objects_vocab.txt)")
    p.add_argument("--attributes-vocab",
                   help="the detector's attribute vocabulary (resources/detector/attributes_vocab.txt)")
    p.add_argument("--image-root", default=".", help="folder relative manifest image paths start from (default: .)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--page", help="also write index.html with the pictures embedded here (one self-contained file)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
