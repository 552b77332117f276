"""The workflow files pass `snakemake --lint` with nothing to report and are formatted with
snakefmt (settings in pyproject.toml's [tool.snakefmt])."""

import importlib.util
import os
import subprocess
import sys

from workflow_run import ROOT, snakemake

WORKFLOW_FILES = ["Snakefile", "workflow/rules"]


def test_snakemake_lint_reports_nothing(tmp_path):
    result = snakemake(tmp_path, "--lint")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Lints for" not in output, output[-4000:]
    assert "your workflow is in a good condition" in output, output[-4000:]
    assert not any((tmp_path / name).exists() for name in ("data", "resources", "results"))  # no job ran


def test_workflow_files_are_snakefmt_formatted():
    assert importlib.util.find_spec("snakefmt"), "snakefmt is not installed: it is pinned in requirements.txt"
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "--diff", *WORKFLOW_FILES],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # It checked the Snakefile and every rule file.
    rules = [f for _, _, files in os.walk(os.path.join(ROOT, "workflow", "rules")) for f in files if f.endswith(".smk")]
    assert f"All {1 + len(rules)} file(s) would be left unchanged" in output, output[-2000:]
