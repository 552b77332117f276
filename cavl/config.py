"""Validate a pipeline configuration against workflow/schemas/config.schema.yaml.

The schema gives every key a description and a default and rejects unknown keys. Errors name
the offending key by its dotted path (`demo.images.coco`) so a bad config is fixed in one look.
"""

import copy
import json
import os
import sys
from pathlib import Path

import yaml

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "..", "workflow", "schemas", "config.schema.yaml")


class ConfigError(ValueError):
    """The configuration does not match the schema; the message names the key."""


def load_schema(path=SCHEMA_PATH):
    with open(path) as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # safe_load, ten times faster


def _key(path):
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error):
    """One line naming the key for a jsonschema ValidationError."""
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in allowed)
        path = list(error.absolute_path)
        names = ", ".join(repr(_key(path + [k])) for k in unknown)
        hint = f" (allowed here: {', '.join(sorted(allowed))})" if allowed else ""
        return f"unknown config key {names}{hint}"
    return f"config key {_key(error.absolute_path)!r}: {error.message}"


def _fill_defaults(instance, schema):
    """Insert schema defaults for missing keys, recursively through nested objects."""
    for name, sub in schema.get("properties", {}).items():
        if name not in instance and "default" in sub:
            instance[name] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(name), dict) and "properties" in sub:
            _fill_defaults(instance[name], sub)


def validate_config(config, schema=None):
    """Return a copy of `config` with defaults filled in; raise ConfigError naming the key."""
    import jsonschema  # here, not at the top: the stage CLIs import read_config_specs without it

    schema = schema or load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    resolved = copy.deepcopy(dict(config))
    for stage in ("as given", "with defaults"):
        errors = sorted(validator.iter_errors(resolved), key=lambda e: list(map(str, e.absolute_path)))
        if errors:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in errors))
        if stage == "as given":
            _fill_defaults(resolved, schema)
    return resolved


def _paths(node, key):
    """(dotted key, value) of every string under `node` (the file and folder paths of `datasets`)."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name not in _NOT_PATHS or isinstance(value, dict):  # a dict: datasets.images.glob is a dataset
                yield from _paths(value, f"{key}.{name}")
    elif isinstance(node, str):
        yield key, node


def _inside(path, folder):
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return os.path.commonpath([path, folder]) == folder


def resolve_datasets(config):
    """The `datasets` section the run reads (before validation: a user's partial entry completes
    the demo's). With the demo enabled it is the demo's layout, and a path the user gave must lie
    under demo.out_dir: else rule demo_data could list a user file as its output (and Snakemake
    delete it before the job)."""
    datasets = copy.deepcopy(config.get("datasets") or {})
    demo = validate_config({"demo": config.get("demo") or {}})["demo"]
    if not demo["enabled"] or not isinstance(datasets, dict):
        return datasets
    from cavl.demo.layout import demo_datasets

    outside = [(key, path) for key, path in _paths(datasets, "datasets") if not _inside(path, demo["out_dir"])]
    if outside:
        listed = "\n  ".join(f"config key {key!r}: {path!r}" for key, path in outside)
        raise ConfigError(f"demo.enabled is true, so the demo data (under demo.out_dir {demo['out_dir']!r}) is "
                          f"used and these paths outside it would be mixed with it:\n  {listed}\n"
                          "Set demo.enabled: false to run on your own data (e.g. --configfile configs/paper.yaml).")
    return deep_update(demo_datasets(demo["out_dir"]), datasets)


# `datasets` values that are not paths.
_NOT_PATHS = {"exclude_eval_images", "missing_images", "glob"}


def check_own_images(datasets):
    """datasets.images: each name must be a valid file name and wildcard value, not an official
    dataset's; an entry takes glob or list, not both. ConfigError naming the key."""
    entries = datasets.get("images") if isinstance(datasets, dict) else None
    if not isinstance(entries, dict):
        return  # absent or null; another type is the schema's to reject
    from cavl.formats.images import name_problem

    accepted = []
    for name, spec in entries.items():
        problem = name_problem(name, accepted)
        if problem:
            raise ConfigError(f"config key 'datasets.images.{name}': {problem}")
        accepted.append(name)
        if isinstance(spec, dict) and spec.get("glob") is not None and spec.get("list") is not None:
            raise ConfigError(f"config key 'datasets.images.{name}': give glob or list, not both")


PRETRAIN_SOURCES = ("coco", "vg")


def resolve_config(config):
    """Validate `config`, fill defaults, and resolve `datasets` (the demo's when enabled),
    pretrain.data.sources (null: coco and vg where configured) and vg.exclude_eval_images."""
    check_own_images(config.get("datasets"))
    resolved = validate_config({**config, "datasets": resolve_datasets(config)})
    datasets = resolved["datasets"] = {name: spec for name, spec in resolved["datasets"].items()
                                       if spec is not None}  # null: not used
    if "images" in datasets:
        datasets["images"] = {name: spec for name, spec in datasets["images"].items() if spec is not None}
    data = resolved["pretrain"]["data"]
    if data["sources"] is None:
        data["sources"] = [d for d in PRETRAIN_SOURCES if d in datasets]
    else:
        missing = [d for d in data["sources"] if d not in datasets]
        if missing:
            raise ConfigError(f"config key 'pretrain.data.sources' names {', '.join(missing)}, but "
                              f"{', '.join('datasets.' + d for d in missing)} is not configured")
    if "vg" in datasets:
        vg = datasets["vg"]
        vg["exclude_eval_images"] = [d for d in vg["exclude_eval_images"] if d in datasets]
    check_detector_vocab(resolved)
    return resolved


def check_detector_vocab(config):
    """With the attribute head or a trained detector, each vocabulary is a published file or built
    from VG's attributes.json."""
    detector = config["extract"]["detector"]
    if not (detector["attributes"] or detector["weights"] == "trained"):
        return
    unset = [kind for kind in ("objects", "attributes") if not detector["vocab"][kind]]
    vg = config["datasets"].get("vg") or {}
    if unset and not vg.get("attributes"):
        keys = " and ".join(f"extract.detector.vocab.{kind}" for kind in unset)
        key = "attributes' is true" if detector["attributes"] else "weights' is trained"
        raise ConfigError(f"config key 'extract.detector.{key}, but {keys} is null and "
                          "datasets.vg.attributes (to build it from) is not configured")


def main(argv=None):
    """`python -m cavl.config FILE [FILE ...]`: validate merged YAML files (later override earlier)."""
    argv = sys.argv[1:] if argv is None else argv
    merged = read_config_specs(argv)
    try:
        resolve_config(merged)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print("configuration valid:", " + ".join(argv))
    return 0


def deep_update(base, override):
    """Merge `override` into `base` (in place, returned) the way Snakemake merges --configfile files."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def read_config_specs(specs):
    """Merge config files (YAML/JSON) and inline JSON objects (stage CLIs get their section as
    one), later ones overriding. Inline JSON is parsed as JSON: YAML 1.1 reads `1e-08` as a string."""
    merged = {}
    for spec in specs:
        if spec.lstrip().startswith("{"):
            data = json.loads(spec)
        else:
            data = yaml.safe_load(Path(spec).read_text())
        deep_update(merged, data or {})
    return merged


if __name__ == "__main__":
    sys.exit(main())
