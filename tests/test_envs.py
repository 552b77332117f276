"""envs/cavl.yaml (the conda route) pins the same versions as the venv route."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Tools of the developer/test side that the rules themselves never run.
DEV_ONLY = {"snakefmt", "black", "shfmt-py"}


def pins(lines):
    """name → version of every `name==version` line (comments and blanks skipped)."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            out[match.group(1).lower()] = match.group(2)
    return out


def test_conda_env_pins_equal_the_venv_pins():
    env = yaml.safe_load((ROOT / "envs/cavl.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = pins(pip_section)
    venv_pins = pins((ROOT / "requirements.txt").read_text().splitlines())
    setup = (ROOT / "scripts/setup_env.sh").read_text()
    venv_pins.update(pins(re.findall(r"\b(torch(?:vision)?==\S+)", setup)))
    assert {"torch", "torchvision", "transformers", "snakemake"} <= set(conda_pins)
    expected = {name: v for name, v in venv_pins.items() if name not in DEV_ONLY}
    assert conda_pins == expected


def test_conda_env_python_matches_the_supported_one():
    env = yaml.safe_load((ROOT / "envs/cavl.yaml").read_text())
    assert "python=3.11" in env["dependencies"]
