"""The configuration schema: defaults validate, bad keys are rejected by name, paper overrides fit."""

import copy
import os
import subprocess
import sys

import pytest
import yaml

from cavl.config import ConfigError, deep_update, load_schema, resolve_config, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    with open(os.path.join(ROOT, name)) as f:
        return yaml.safe_load(f)


def test_default_config_runs_the_demo_on_its_own_layout():
    resolved = resolve_config(load("config.yaml"))
    assert resolved["demo"]["enabled"] is True
    assert set(resolved["datasets"]) == {"coco", "vg", "vqa", "vcr", "nlvr2", "flickr30k"}
    assert resolved["datasets"]["vg"]["image_data"] == "data/demo/vg/image_data.json"
    assert resolved["pretrain"]["data"]["sources"] == ["coco", "vg"]


def test_empty_config_is_filled_from_schema_defaults():
    resolved = validate_config({})
    assert resolved["demo"]["images"]["coco"] == 120
    assert resolved["datasets"] == {}


def test_dataset_paths_have_no_defaults():
    """No dataset path defaults to the demo's files: real runs never inherit them."""
    schema_text = open(os.path.join(ROOT, "workflow", "schemas", "config.schema.yaml")).read()
    assert "data/demo/" not in schema_text
    assert "data/demo" not in yaml.safe_dump(load("config.yaml")["datasets"])


def test_demo_rejects_a_path_outside_its_folder_naming_the_key():
    config = load("config.yaml")
    config["datasets"] = {"vqa": {"splits": {"train": {"questions": "mydata/vqa/q.json",
                                                       "annotations": "data/demo/vqa/a.json"}}}}
    with pytest.raises(ConfigError, match=r"'datasets\.vqa\.splits\.train\.questions': 'mydata/vqa/q\.json'") as e:
        resolve_config(config)
    assert "annotations" not in str(e.value)  # inside demo.out_dir: allowed


def test_paper_config_has_no_demo_path_and_optional_inputs_unset():
    merged = deep_update(load("config.yaml"), load("configs/paper.yaml"))
    resolved = resolve_config(merged)
    assert "data/demo" not in yaml.safe_dump(resolved["datasets"])
    merged["datasets"]["coco"]["captions"]["train"]["instances"] = None  # optional: null = none
    merged["datasets"]["vg"]["objects"] = None
    resolve_config(merged)


def test_partial_datasets_resolve_sources_and_exclusions():
    paper = deep_update(load("config.yaml"), load("configs/paper.yaml"))
    coco_only = copy.deepcopy(paper)
    coco_only["datasets"] = {"coco": paper["datasets"]["coco"]}
    assert resolve_config(coco_only)["pretrain"]["data"]["sources"] == ["coco"]
    vg_only = copy.deepcopy(paper)
    vg_only["datasets"] = {"vg": paper["datasets"]["vg"]}
    resolved = resolve_config(vg_only)
    assert resolved["pretrain"]["data"]["sources"] == ["vg"]
    assert resolved["datasets"]["vg"]["exclude_eval_images"] == []  # neither coco nor flickr30k given
    vg_only["pretrain"]["data"]["sources"] = ["coco", "vg"]
    with pytest.raises(ConfigError, match=r"'pretrain\.data\.sources' names coco, but datasets\.coco"):
        resolve_config(vg_only)


def test_unknown_key_is_rejected_with_its_dotted_name():
    config = load("config.yaml")
    config["demo"]["images"]["cocoo"] = 3
    with pytest.raises(ConfigError, match=r"unknown config key 'demo\.images\.cocoo'"):
        validate_config(config)


def test_unknown_top_level_key_is_rejected():
    with pytest.raises(ConfigError, match=r"unknown config key 'pretrian'"):
        validate_config({"pretrian": {}})


def test_wrong_type_is_rejected_with_the_key_named():
    config = load("config.yaml")
    config["demo"]["seed"] = "zero"
    with pytest.raises(ConfigError, match=r"config key 'demo\.seed': 'zero' is not of type 'integer'"):
        validate_config(config)


def test_missing_required_split_file_is_rejected():
    config = deep_update(load("config.yaml"), load("configs/paper.yaml"))
    del config["datasets"]["vqa"]["splits"]["train"]["annotations"]
    with pytest.raises(ConfigError, match=r"datasets\.vqa\.splits\.train"):
        validate_config(config)


def _all_property_schemas(schema, path=""):
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}{name}", sub
        yield from _all_property_schemas(sub, f"{path}{name}.")


def test_every_schema_key_has_description_and_default():
    """Dataset entries and their paths have no default: a dataset is given, or not used."""
    schema = load_schema()
    keys = list(_all_property_schemas(schema))
    assert len(keys) > 20
    datasets = schema["properties"]["datasets"]["properties"]
    no_default = {f"datasets.{name}" for name in datasets} | {
        f"datasets.{name}.{key}" for name, entry in datasets.items() for key in entry.get("required", [])}
    missing = [key for key, sub in keys
               if "description" not in sub or ("default" not in sub and key not in no_default)]
    assert not missing, f"schema keys without description or default: {missing}"


def test_every_object_rejects_unknown_keys():
    def objects(schema, path="<top>"):
        types = schema.get("type")
        if "object" in (types if isinstance(types, list) else [types]) and "properties" in schema:
            yield path, schema
        for name, sub in schema.get("properties", {}).items():
            yield from objects(sub, f"{path}.{name}")

    schema = load_schema()
    loose = [p for p, s in objects(schema) if s.get("additionalProperties") is not False]
    assert not loose, f"objects accepting unknown keys: {loose}"


def test_paper_config_overrides_validate():
    merged = deep_update(load("config.yaml"), load("configs/paper.yaml"))
    resolved = validate_config(merged)
    assert resolved["demo"]["enabled"] is False


def test_cli_reports_bad_key_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("demo:\n  sed: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "cavl.config", os.path.join(ROOT, "config.yaml"), str(bad)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 1
    assert "'demo.sed'" in result.stderr


def test_conda_env_pins_match_requirements():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        required = {ln.strip() for ln in f if ln.strip() and not ln.startswith("#")}
    env = load("envs/cavl.yaml")
    pip_pins = set(next(d for d in env["dependencies"] if isinstance(d, dict))["pip"])
    assert required <= pip_pins, f"missing from envs/cavl.yaml: {required - pip_pins}"
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= pip_pins


def test_attribute_head_or_trained_detector_needs_vocabularies_naming_the_keys():
    config = load("config.yaml")
    config["demo"]["enabled"] = False
    config["datasets"] = {"images": {"mine": {"root": "photos"}}}  # no VG to build them from
    config["extract"]["detector"].update(attributes=False, weights=None,
                                         vocab={"objects": None, "attributes": None})
    for detector, key in (({"attributes": True}, "'extract.detector.attributes' is true"),
                          ({"weights": "trained"}, "'extract.detector.weights' is trained")):
        bad = copy.deepcopy(config)
        bad["extract"]["detector"].update(detector)
        with pytest.raises(ConfigError, match=key + ", but extract.detector.vocab.objects and "
                           "extract.detector.vocab.attributes is null"):
            resolve_config(bad)
    published = copy.deepcopy(config)
    published["extract"]["detector"].update(
        attributes=True, vocab={"objects": "extract/vocabularies/butd_vg/objects_vocab.txt",
                                "attributes": "extract/vocabularies/butd_vg/attributes_vocab.txt"})
    assert resolve_config(published)["extract"]["detector"]["vocab"]["num_objects"] == 1600
