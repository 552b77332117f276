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


# ---------------------------------------------------------------------------------------------
# Enums and limits: every one in the schema rejects a bad value naming the key
# ---------------------------------------------------------------------------------------------

LIMITS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "minItems", "maxItems")
SCHEMA = load_schema()


def _resolve(schema, root=SCHEMA):
    """`schema` with its $ref (a local '#/definitions/...') followed: the definition itself
    when the key adds only a description, else the two merged (2020-12: both apply)."""
    if "$ref" not in schema:
        return schema
    target = root
    for part in schema["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    own = {k: v for k, v in schema.items() if k not in ("$ref", "description")}
    return {**_resolve(target, root), **own} if own else _resolve(target, root)


def _constrained(schema, path=()):
    """(path, schema) of every value the schema gives an enum or a limit. Path parts: property
    names; 0 for an array's item; for a mapping's free keys (additionalProperties) a name the
    mapping accepts."""
    schema = _resolve(schema)
    if "enum" in schema or any(k in schema for k in LIMITS):
        yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _constrained(sub, path + (name,))
    if isinstance(schema.get("items"), dict):
        yield from _constrained(schema["items"], path + (0,))
    if isinstance(schema.get("additionalProperties"), dict):
        names = schema.get("propertyNames", {}).get("enum", ["train"])
        yield from _constrained(schema["additionalProperties"], path + (names[0],))


def _mappings(node, skip=("propertyNames",)):
    """Every mapping in the raw schema, but those under `skip` keys (rules for key names)."""
    if isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key not in skip:
                yield from _mappings(value, skip)
    elif isinstance(node, list):
        for value in node:
            yield from _mappings(value, skip)


_BASE = deep_update(load("config.yaml"), load("configs/paper.yaml"))
_BASE["datasets"]["images"] = {"train": {"root": "photos"}}  # every dataset entry present


def _config_with(path, value):
    """A copy of a valid config (every dataset entry present) with the value at `path` set
    (missing mappings created; an array item goes first in a list as short as the array allows,
    the key's other items, or its default's, after it)."""
    config = copy.deepcopy(_BASE)
    node, sub = config, SCHEMA
    for i, part in enumerate(path[:-1]):
        sub = _resolve(sub)
        sub = sub.get("properties", {}).get(part, sub.get("additionalProperties"))
        if path[i + 1] == 0:
            sub = _resolve(sub)
            others = (node.get(part) or sub.get("default") or [])[1:sub.get("minItems", 1)]
            node[part] = [value, *others]  # as few items as the array takes (they may have to differ)
            return config
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
    return config


def _dotted(path):
    return ".".join(map(str, path))


CONSTRAINED = list(_constrained(SCHEMA))
ENUMS = [(p, s) for p, s in CONSTRAINED if "enum" in s]
NUMBER_LIMITS = [(p, s, k) for p, s in CONSTRAINED for k in LIMITS[:4] if k in s]
SIZE_LIMITS = [(p, s, k) for p, s in CONSTRAINED for k in LIMITS[4:] if k in s]


def _accepted(path, value):
    validate_config(_config_with(path, value), SCHEMA)


def _rejected(path, value):
    """validate_config refuses `value` at `path` with one error line naming the key and value."""
    with pytest.raises(ConfigError) as e:
        validate_config(_config_with(path, value), SCHEMA)
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == 1, lines
    assert lines[0].strip().startswith(f"config key '{_dotted(path)}': {value!r} "), lines[0]
    return lines[0]


def test_the_schema_walk_reaches_every_enum_and_limit():
    """The parametrised tests below cover every enum and limit the schema file holds (the two
    rules for key names aside: test_own_images.py and the tir test below)."""
    validate_config(_BASE, SCHEMA)
    reached = {id(s) for _, s in CONSTRAINED}
    in_file = {id(m) for m in _mappings(SCHEMA) if "enum" in m or any(k in m for k in LIMITS)}
    assert reached == in_file
    assert len(ENUMS) >= 25 and len(NUMBER_LIMITS) >= 140 and len(SIZE_LIMITS) >= 15


@pytest.mark.parametrize("path,schema", ENUMS, ids=[_dotted(p) for p, _ in ENUMS])
def test_every_enum_accepts_its_values_and_rejects_another_naming_the_key(path, schema):
    for value in schema["enum"]:
        _accepted(path, value)
    bad = max(schema["enum"]) + 1 if all(isinstance(v, int) for v in schema["enum"]) else "no-such-choice"
    assert "is not one of" in _rejected(path, bad)


@pytest.mark.parametrize("path,schema,keyword", NUMBER_LIMITS,
                         ids=[f"{_dotted(p)}-{k}" for p, _, k in NUMBER_LIMITS])
def test_every_number_limit_holds_at_its_bound_naming_the_key(path, schema, keyword):
    bound = schema[keyword]
    lower = keyword in ("minimum", "exclusiveMinimum")
    if keyword in ("minimum", "maximum"):  # the bound itself is allowed, one step past it is not
        _accepted(path, bound)
        types = schema.get("type", "number")
        step = 1 if "integer" in (types if isinstance(types, list) else [types]) else 0.25
        bad = bound - step if lower else bound + step
    else:  # exclusive: the bound itself is refused
        bad = bound
    message = _rejected(path, bad)
    assert f"{'less' if lower else 'greater'} than" in message and message.endswith(f" of {bound}")


@pytest.mark.parametrize("path,schema,keyword", SIZE_LIMITS, ids=[f"{_dotted(p)}-{k}" for p, _, k in SIZE_LIMITS])
def test_every_length_limit_holds_naming_the_key(path, schema, keyword):
    n = schema[keyword]
    if keyword == "minLength":
        _accepted(path, "x" * n)
        _rejected(path, "x" * (n - 1))
    else:
        item = schema["default"][0] if schema.get("default") else _resolve(schema["items"])["enum"][0]
        _accepted(path, [item] * n)
        _rejected(path, [item] * (n - 1 if keyword == "minItems" else n + 1))


def test_key_names_of_the_tir_learning_rates_are_the_methods():
    _accepted(("finetune", "tasks", "tir", "lr"), {"adapter1": 1e-4, "full": 1e-5})
    with pytest.raises(ConfigError, match=r"config key 'finetune\.tasks\.tir\.lr': 'adapter3' is not one of"):
        validate_config(_config_with(("finetune", "tasks", "tir", "lr"), {"adapter3": 1e-4}), SCHEMA)
