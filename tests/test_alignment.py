"""Word↔region alignment (cavl.alignment) and its figures (cavl.visualise), on a hand-built model
whose answers are known by hand and on the tiny synthetic fixtures of cavl.testing."""

import base64
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cavl.alignment import (align, attention_alignment, caption_words, cosine_alignment, last_layer_attention,
                            merge_wordpieces, phrase_hits, region_tensors, token_attention, tokenize_words)
from cavl.data.regions import ImageRegions, RegionSource
from cavl.formats.vocab import Vocabulary, write_vocab
from cavl.model import CavlConfig, CavlForPretraining, CavlModel
from cavl.testing import (FEATURE_DIM, HEIGHT, WIDTH, region_features, scene_objects, write_feature_shards,
                          write_manifest, write_synthetic_flickr30k, write_tiny_pretrained)

# ---------------------------------------------------------------------------------------------
# A hand-built model: one layer whose attention output and feed-forward output are switched off,
# so every final state is LayerNorm of the input embedding; zero-mean embeddings keep their
# direction through LayerNorm, so the cosines are those of the embeddings.
# ---------------------------------------------------------------------------------------------

HAND_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "blue", "##dish", "a"]
RED = [1.0, -1.0, 0.0, 0.0]
BLUE = [0.0, 0.0, 1.0, -1.0]
BOTH = [1.0, -1.0, 1.0, -1.0]  # red + blue


def hand_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(HAND_VOCAB)})


def hand_model(query_bias=None):
    """Words red → RED, blue and ##dish → BLUE; regions: the feature itself (identity projection,
    no box or type embedding). `query_bias`: the layer's query is this constant vector (weights 0)."""
    cfg = CavlConfig(vocab_size=len(HAND_VOCAB), hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=4, max_position_embeddings=16, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, pad_token_id=0, cls_token_id=2, sep_token_id=3,
                     mask_token_id=4, visual_dim=4)
    model = CavlModel(cfg)
    e, layer = model.embeddings, model.encoder.layers[0]
    with torch.no_grad():
        e.word_embeddings.weight.zero_()
        for word, vec in {"red": RED, "blue": BLUE, "##dish": BLUE, "a": [0.0, 1.0, 0.0, -1.0],
                          "[CLS]": [1.0, 1.0, -1.0, -1.0], "[SEP]": [1.0, -1.0, -1.0, 1.0]}.items():
            e.word_embeddings.weight[HAND_VOCAB.index(word)] = torch.tensor(vec)
        e.position_embeddings.weight.zero_()
        e.token_type_embeddings.weight.zero_()
        e.visual_projection.weight.copy_(torch.eye(4))
        e.visual_projection.bias.zero_()
        e.box_projection.weight.zero_()
        e.box_projection.bias.zero_()
        e.visual_token_type.zero_()
        for linear in (layer.attention.out, layer.ffn_out):
            linear.weight.zero_()
            linear.bias.zero_()
        if query_bias is not None:
            layer.attention.query.weight.zero_()
            layer.attention.query.bias.copy_(torch.tensor(query_bias))
            layer.attention.key.weight.copy_(torch.eye(4))
            layer.attention.key.bias.zero_()
    return model.eval()


def hand_regions(features=(RED, BLUE, BOTH)):
    feats = np.asarray(features, np.float32)
    boxes = np.tile(np.array([[0.1, 0.1, 0.5, 0.5, 0.16]], np.float32), (len(feats), 1))
    return ImageRegions(feats, boxes, 0)


S = 1 / math.sqrt(2)


def test_cosine_alignment_of_a_hand_built_example():
    """2 words × 3 regions: red·RED = 1, red·BLUE = 0, red·(RED+BLUE) = 1/√2; blue likewise."""
    words, matrix = cosine_alignment(hand_model(), hand_tokenizer(), ["red", "blue"], hand_regions(), 16)
    assert words == ["red", "blue"]
    np.testing.assert_allclose(matrix, [[1, 0, S], [0, 1, S]], atol=1e-5)


def test_cosine_alignment_takes_the_pretraining_model_too():
    """A CavlForPretraining scores as its backbone (PwCL has no projection head to apply)."""
    backbone = hand_model()
    model = CavlForPretraining(backbone.config)
    model.bert.load_state_dict(backbone.state_dict())
    _, matrix = cosine_alignment(model, hand_tokenizer(), ["red", "blue"], hand_regions(), 16)
    np.testing.assert_allclose(matrix, [[1, 0, S], [0, 1, S]], atol=1e-5)
    assert model.training  # the caller's mode is restored


def test_wordpieces_of_a_word_are_merged():
    """'reddish' = red + ##dish (a BLUE embedding): its row is the mean of the two pieces' rows."""
    tok = hand_tokenizer()
    ids, _, word_ids = tokenize_words(tok, [["reddish", "blue"]], 16)
    assert tok.convert_ids_to_tokens(ids[0].tolist()) == ["[CLS]", "red", "##dish", "blue", "[SEP]"]
    assert word_ids[0] == [None, 0, 0, 1, None]
    words, matrix = cosine_alignment(hand_model(), tok, "reddish blue", hand_regions(), 16)
    assert words == ["reddish", "blue"]
    np.testing.assert_allclose(matrix, [[0.5, 0.5, S], [0, 1, S]], atol=1e-5)


def test_merge_wordpieces_and_truncation():
    m = np.arange(12, dtype=float).reshape(6, 2)  # [CLS] w0 w0 w1 w2 [SEP]
    rows, kept = merge_wordpieces(m, [None, 0, 0, 1, 2, None])
    assert kept == [0, 1, 2]
    np.testing.assert_allclose(rows, [[3, 4], [6, 7], [8, 9]])
    # max_text_len 4 keeps [CLS] red ##dish [SEP]: the cut word has no row and is not returned
    words, matrix = cosine_alignment(hand_model(), hand_tokenizer(), "reddish blue", hand_regions(), 4)
    assert words == ["reddish"] and matrix.shape == (1, 3)


def test_words_of_a_string_caption_and_its_ids_are_the_pretraining_ones():
    """A string is split at whitespace and punctuation (BERT's pre-tokenizer); tokenised as
    words, its ids equal pretraining's tokenisation of the raw string (PretrainBatches.tokenize)."""
    from cavl.testing import word_tokenizer

    tok = word_tokenizer()
    caption = "A red circle, and a blue square."
    words = caption_words(tok, caption)
    assert words == ["A", "red", "circle", ",", "and", "a", "blue", "square", "."]
    ids, _, _ = tokenize_words(tok, [words], 40)
    raw = tok([caption], max_length=40, truncation=True, padding="longest", return_tensors="np")["input_ids"]
    assert ids.numpy().tolist() == raw.tolist()


def test_attention_of_a_hand_built_example():
    """Queries off (zero weights, zero bias): every query attends uniformly to the 7 positions
    [CLS] red blue [SEP] r0 r1 r2 → 1/7 everywhere; a masked region gets nothing."""
    model, tok = hand_model(query_bias=[0.0] * 4), hand_tokenizer()
    words, matrix = attention_alignment(model, tok, ["red", "blue"], hand_regions(), 16)
    assert words == ["red", "blue"]
    np.testing.assert_allclose(matrix, np.full((2, 3), 1 / 7), atol=1e-6)
    ids, mask, _ = tokenize_words(tok, [["red", "blue"]], 16)
    feats, boxes, _ = region_tensors(hand_regions((RED, BLUE, BOTH, RED)))
    att = token_attention(model, ids, mask, feats, boxes, torch.tensor([[1, 1, 1, 0]]))
    np.testing.assert_allclose(att[0, 1:3].numpy(), [[1 / 7] * 3 + [0]] * 2, atol=1e-6)


def test_attention_is_averaged_over_heads():
    """Query bias (a, -a | 0, 0), keys = the layer input (LayerNorm'd embeddings, √2·RED for red):
    head 1's logit is 2a on red and r0 (RED), √2·a on r2 and [SEP], 0 elsewhere, so with a large a
    every query puts 1/2 on red and 1/2 on r0; head 2 (query 0) is uniform, 1/7. Mean over heads:
    r0 (1/2 + 1/7)/2 = 9/28, r1 and r2 (0 + 1/7)/2 = 1/14, for both words."""
    a = 30.0
    model = hand_model(query_bias=[a, -a, 0.0, 0.0])
    _, matrix = attention_alignment(model, hand_tokenizer(), ["red", "blue"], hand_regions(), 16)
    np.testing.assert_allclose(matrix, [[9 / 28, 1 / 14, 1 / 14]] * 2, atol=1e-6)


def test_recomputed_attention_equals_the_layers_output(tmp_path):
    """softmax(QKᵀ/√d + mask) @ V through the output projection, recomputed from the hooked input,
    is the layer's real (scaled_dot_product_attention) output — with padded text and regions."""
    model = CavlModel.from_pretrained(write_tiny_pretrained(tmp_path / "m")).eval()
    torch.manual_seed(0)
    ids = torch.tensor([[2, 7, 28, 29, 15, 3], [2, 27, 30, 3, 0, 0]])
    mask = (ids != 0).long()
    feats = torch.randn(2, 5, FEATURE_DIM)
    boxes = torch.rand(2, 5, 5)
    vmask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    att = last_layer_attention(model, ids, mask, feats, boxes, vmask)
    assert att.weights.shape == (2, 2, 11, 11) and att.text_len == 6
    torch.testing.assert_close(att.recomputed, att.actual, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(att.weights.sum(-1), torch.ones(2, 2, 11))
    assert float(att.weights[1, :, :, 4:6].abs().max()) == 0.0  # padded text keys
    assert float(att.weights[1, :, :, 9:].abs().max()) == 0.0  # padded region keys
    # and the layer's output is what the model's final states are made of
    out = model(ids, mask, feats, boxes, vmask, output_hidden_states=True)
    layer = model.encoder.layers[-1]
    x = out.hidden_states[-2]
    h = layer.attention_norm(x + att.recomputed)
    final = layer.ffn_norm(h + layer.ffn_out(layer.ffn_act(layer.ffn_in(h))))
    torch.testing.assert_close(final, out.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_batched_captions_align_as_single_ones(tmp_path):
    model = CavlModel.from_pretrained(write_tiny_pretrained(tmp_path / "m"))
    from cavl.testing import word_tokenizer

    tok, rng = word_tokenizer(), np.random.default_rng(0)
    f, b = region_features(rng, scene_objects(rng, 2))
    regions = ImageRegions(f, np.concatenate([b / 200, np.full((len(b), 1), 0.1, np.float32)], 1), 0)
    captions = ["a red circle and a blue square .", "the image has a star"]
    batch = align(model, tok, captions, regions, 24)
    for caption, a in zip(captions, batch):
        words, cos = cosine_alignment(model, tok, caption, regions, 24)
        _, att = attention_alignment(model, tok, caption, regions, 24)
        assert a.words == words
        np.testing.assert_allclose(a.scores["cosine"], cos, atol=1e-5)
        np.testing.assert_allclose(a.scores["attention"], att, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# phrase_hits on a hand-built image
# ---------------------------------------------------------------------------------------------

BOX_A, BOX_B, BOX_C = [10, 10, 60, 60], [120, 10, 180, 60], [10, 90, 70, 150]
BOX_D = [130, 100, 190, 150]  # no detection there; the shard's given (gt) box


def hand_phrases(tmp_path):
    """Image 1: a given box at D with a BLUE feature (must not be a candidate), then detections
    r0 RED at A, r1 BLUE at B, r2 RED+BLUE at C. Sentence "red blue"; phrases: red (gt A),
    blue (gt D: no detection reaches it), "red blue" (gt C and B), one without a box, and one of
    an image without features."""
    feats = np.asarray([BLUE, RED, BLUE, BOTH], np.float32)
    boxes = np.asarray([BOX_D, BOX_A, BOX_B, BOX_C], np.float32)
    index = write_feature_shards(tmp_path / "features", "flickr30k", {"1": (feats, boxes, 200, 160, 1)}, dim=4)
    rows = [("1", "red", 0, [BOX_A]), ("1", "blue", 1, [BOX_D]), ("1", "red blue", 0, [BOX_C, BOX_B]),
            ("1", "red", 0, []), ("2", "red", 0, [BOX_A])]
    phrases = pd.DataFrame([{"image_id": i, "sentence_index": 0, "sentence": "red blue", "phrase": p,
                             "phrase_types": ["other"], "entity_id": str(k), "first_word_index": w,
                             "gt_boxes": [list(map(float, b)) for b in g]}
                            for k, (i, p, w, g) in enumerate(rows)])
    return phrases, RegionSource(index, max_regions=36, skip_given=True)


def test_phrase_hits_of_a_hand_built_case(tmp_path):
    """cosine: red → r0 (A: hit), blue → r1 (B, not D: miss), red blue → mean row
    (1/2, 1/2, 1/√2) → r2 (C: hit): 2 of 3. attention (head 1 on red and r0, head 2 uniform):
    every phrase → r0: 1 of 3. Random: 1/3, 0, 2/3 (A alone; none; B and C of 3 regions), so
    P(S ≥ 2) = 1/3 · 2/3 = 2/9 and P(S ≥ 1) = 1 − 2/3 · 1 · 1/3 = 7/9."""
    phrases, source = hand_phrases(tmp_path)
    summary, per = phrase_hits(hand_model(query_bias=[30.0, -30.0, 0.0, 0.0]), hand_tokenizer(), phrases, source, 16)
    assert (summary["phrases"], summary["excluded_no_box"], summary["missing_features"]) == (3, 1, 1)
    assert per["phrase"].tolist() == ["red", "red blue", "blue"]  # by sentence, then first word
    per = per.set_index("phrase").loc[["red", "blue", "red blue"]]
    assert per["num_candidates"].tolist() == [3, 3, 3]  # the given box is no candidate
    assert per["random_rate"].tolist() == pytest.approx([1 / 3, 0.0, 2 / 3])
    assert per["cosine_region"].tolist() == [0, 1, 2] and per["cosine_hit"].tolist() == [True, False, True]
    assert per["attention_region"].tolist() == [0, 0, 0] and per["attention_hit"].tolist() == [True, False, False]
    cos, att = summary["scores"]["cosine"], summary["scores"]["attention"]
    assert (cos["hits"], cos["phrases"], att["hits"]) == (2, 3, 1)
    assert cos["hit_rate"] == pytest.approx(200 / 3) and att["hit_rate"] == pytest.approx(100 / 3)
    assert cos["baseline_rate"] == pytest.approx(100 / 3) and cos["expected_hits"] == pytest.approx(1.0)
    assert cos["p_value"] == pytest.approx(2 / 9, rel=1e-9)
    assert att["p_value"] == pytest.approx(7 / 9, rel=1e-9)
    assert summary["upper_bound"] == pytest.approx(200 / 3)


def test_phrase_hits_wants_detected_regions_only(tmp_path):
    phrases, source = hand_phrases(tmp_path)
    with pytest.raises(TypeError, match="skip_given"):
        phrase_hits(hand_model(), hand_tokenizer(), phrases, RegionSource(source.index_path, 36), 16)


# ---------------------------------------------------------------------------------------------
# The CLI, end to end on the synthetic fixtures
# ---------------------------------------------------------------------------------------------


def synthetic_setup(root):
    """Tiny pretrained model, Flickr30k (tir/rpg tables, shards with given boxes first) and COCO
    (shards, a pretrain-style val table), manifests with images (one missing), vocabularies."""
    write_synthetic_flickr30k(root, sizes={"train": 1, "val": 3, "test": 1})
    rng = np.random.default_rng(1)
    coco, captions = {}, []
    for k in range(3):
        image_id = str(500 + k)
        objects = scene_objects(rng, 2)
        f, b = region_features(rng, objects)
        coco[image_id] = (f, b, WIDTH, HEIGHT, 0)
        for c in range(2):
            captions.append({"example_id": f"coco-{k}{c}", "dataset": "coco", "image_id": image_id,
                             "caption": f"a {objects[c][0]} {objects[c][1]} ."})
    captions.append({"example_id": "vg-1", "dataset": "vg", "image_id": "1", "caption": "a red star ."})
    write_feature_shards(root / "features", "coco", coco)
    pd.DataFrame(captions).to_parquet(root / "coco_val.parquet")
    (root / "images").mkdir()
    manifests = {}
    for dataset, ids in (("coco", sorted(coco)), ("flickr30k", pd.read_parquet(root / "tasks/tir/val.parquet")
                                                  ["image_id"].unique().tolist())):
        rows = []
        for n, image_id in enumerate(ids):
            path = f"images/{dataset}_{image_id}.png"
            if n != 1:  # the second image's file is missing: drawn on a grey canvas
                Image.new("RGB", (WIDTH, HEIGHT), (30 * n, 120, 200)).save(root / path)
            rows.append({"image_id": image_id, "path": path, "width": WIDTH, "height": HEIGHT})
        manifests[dataset] = write_manifest(root / f"{dataset}.parquet", rows)
    write_vocab(Vocabulary(["shape"]), root / "objects_vocab.txt")
    write_tiny_pretrained(root / "model")
    return manifests


def cli_args(root, out):
    return ["--backbone", str(root / "model"),
            "--settings", '{"images": 2, "threads": 1}', "--max-regions", "6", "--max-text-len", "24",
            "--coco-manifest", str(root / "coco.parquet"), "--coco-features", str(root / "features/coco/index.parquet"),
            "--coco-captions", str(root / "coco_val.parquet"),
            "--flickr-manifest", str(root / "flickr30k.parquet"),
            "--flickr-features", str(root / "features/flickr30k/index.parquet"),
            "--flickr-captions", str(root / "tasks/tir/val.parquet"), "--phrases", str(root / "tasks/rpg/val.parquet"),
            "--objects-vocab", str(root / "objects_vocab.txt"), "--image-root", str(root), "--out", str(out)]


def test_cli_end_to_end(tmp_path):
    from cavl.visualise import main

    synthetic_setup(tmp_path)
    out = tmp_path / "results" / "visualisation"
    assert main([*cli_args(tmp_path, out), "--page", str(tmp_path / "results" / "visualisation.html")]) == 0
    page = (out / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 2 * 3 + 2 * 4  # coco: regions, words, heat map; flickr30k: + the phrase
    assert all((out / s).is_file() and (out / s).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for s in sources)
    # the self-contained page embeds the same pictures, in the same order
    embedded = re.findall(r'<img src="data:image/png;base64,([^"]+)"', (tmp_path / "results/visualisation.html").read_text())
    assert [base64.b64decode(e) for e in embedded] == [(out / s).read_bytes() for s in sources]
    assert not any(p.name.startswith(".") for p in tmp_path.joinpath("results").iterdir())  # no temp left
    record = json.loads((out / "alignment.json").read_text())
    assert [im["image_id"] for im in record["datasets"]["coco"]["images"]] == ["500", "501"]
    first = record["datasets"]["coco"]["images"][0]
    assert first["caption"] == pd.read_parquet(tmp_path / "coco_val.parquet")["caption"][0]
    assert first["words"] == first["caption"].split() and first["image_found"] is True
    assert record["datasets"]["coco"]["images"][1]["image_found"] is False
    assert first["regions"][0]["label"] == "shape"  # the vocabulary names class 0
    assert len(first["scores"]["cosine"]["matrix"]) == len(first["words"])
    flickr = record["datasets"]["flickr30k"]["images"]
    ids = sorted(pd.read_parquet(tmp_path / "tasks/tir/val.parquet")["image_id"].unique(), key=int)[:2]
    assert [im["image_id"] for im in flickr] == ids and all("phrase" in im for im in flickr)
    # every val phrase with a box is scored (synthetic: "the image" has none); detected regions only
    rpg = pd.read_parquet(tmp_path / "tasks/rpg/val.parquet")
    hits = record["phrase_hits"]
    assert hits["phrases"] == int((rpg["gt_boxes"].map(len) > 0).sum())
    assert hits["excluded_no_box"] == int((rpg["gt_boxes"].map(len) == 0).sum())
    from cavl.data.regions import RegionReader

    reader = RegionReader(tmp_path / "features/flickr30k/index.parquet")
    for im in flickr:  # the detected regions only (the shards hold the gt boxes first), at most max_regions
        i = im["image_id"]
        assert reader.num_given(i) > 0
        assert len(im["regions"]) == min(6, reader[i][2] - reader.num_given(i))
    for name in ("cosine", "attention"):
        s = hits["scores"][name]
        assert 0 <= s["hits"] <= s["phrases"] and 0 <= s["p_value"] <= 1
        assert f"<td>{name}</td>" in page
    # deterministic: a second run writes the same bytes
    again = tmp_path / "again"
    assert main(cli_args(tmp_path, again)) == 0
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert [str(f) for f in files if (out / f).read_bytes() != (again / f).read_bytes()] == []


def test_cli_skips_a_dataset_without_paths_and_refuses_half_given_ones(tmp_path, capsys):
    from cavl.visualise import main

    synthetic_setup(tmp_path)
    args = cli_args(tmp_path, tmp_path / "out")
    only_coco = args[:14] + args[-2:]  # backbone, settings, sizes, the coco paths, --out
    assert main(only_coco) == 0
    record = json.loads((tmp_path / "out" / "alignment.json").read_text())
    assert list(record["datasets"]) == ["coco"] and record["phrase_hits"] is None
    assert main(args[:12] + args[-2:]) == 2  # coco without its captions
    assert "--coco-captions" in capsys.readouterr().err
