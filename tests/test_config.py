"""The configuration schema: defaults validate, bad keys are rejected by name, paper overrides fit."""

import copy
import os
import subprocess
import sys

import pytest
import yaml

from cavl.config import ConfigError, load_schema, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    with open(os.path.join(ROOT, name)) as f:
        return yaml.safe_load(f)


def test_default_config_validates_and_gets_defaults():
    resolved = validate_config(load("config.yaml"))
    assert resolved["demo"]["enabled"] is True
    assert set(resolved["datasets"]) == {"coco", "vg", "vqa", "vcr", "nlvr2", "flickr30k"}


def test_empty_config_is_filled_from_schema_defaults():
    resolved = validate_config({})
    assert resolved["demo"]["images"]["coco"] == 120
    assert resolved["datasets"]["vg"]["image_data"] == "data/demo/vg/image_data.json"


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
    config = load("config.yaml")
    del config["datasets"]["vqa"]["splits"]["train"]["annotations"]
    with pytest.raises(ConfigError, match=r"datasets\.vqa\.splits\.train"):
        validate_config(config)


def _all_property_schemas(schema, path=""):
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}{name}", sub
        yield from _all_property_schemas(sub, f"{path}{name}.")


def test_every_schema_key_has_description_and_default():
    schema = load_schema()
    keys = list(_all_property_schemas(schema))
    assert len(keys) > 20
    missing = [key for key, sub in keys if "description" not in sub or "default" not in sub]
    assert not missing, f"schema keys without description or default: {missing}"


def test_every_object_rejects_unknown_keys():
    def objects(schema, path="<top>"):
        if schema.get("type") == "object" and "properties" in schema:
            yield path, schema
        for name, sub in schema.get("properties", {}).items():
            yield from objects(sub, f"{path}.{name}")

    schema = load_schema()
    loose = [p for p, s in objects(schema) if s.get("additionalProperties") is not False]
    assert not loose, f"objects accepting unknown keys: {loose}"


def test_paper_config_overrides_validate():
    merged = copy.deepcopy(load("config.yaml"))
    from cavl.config import deep_update

    deep_update(merged, load("configs/paper.yaml"))
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
