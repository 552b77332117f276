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
        return yaml.safe_load(f)


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
    if error.validator == "required":
        return f"config key {_key(error.absolute_path)!r}: {error.message}"
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


def main(argv=None):
    """`python -m cavl.config FILE [FILE ...]`: validate merged YAML files (later override earlier)."""
    argv = sys.argv[1:] if argv is None else argv
    merged = read_config_specs(argv)
    try:
        validate_config(merged)
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
    """Merge config files (YAML/JSON) and inline JSON objects, later ones overriding.

    Stage CLIs get their config section from Snakemake as inline JSON (`json_arg`). It is parsed
    as JSON, not YAML: YAML 1.1 reads JSON's `1e-08` as a string.
    """
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
