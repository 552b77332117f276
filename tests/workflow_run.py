"""Running the repo's Snakemake workflow from tests, in a scratch folder outside the checkout."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAKEMAKE = os.path.join(os.path.dirname(sys.executable), "snakemake")


def snakemake_command(workdir, *args, configfiles=()):
    """The command line that runs the workflow in `workdir` (outputs land there).

    `configfiles` are merged over config.yaml; they go last because --configfile takes
    every following argument up to the next option.
    """
    return [SNAKEMAKE, "-s", os.path.join(ROOT, "Snakefile"), "--directory", str(workdir), *args,
            "--configfile", os.path.join(ROOT, "config.yaml"), *map(str, configfiles)]


def snakemake_env():
    """This interpreter's folder first on PATH, so rules' `python -m ...` find the test venv."""
    return dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])


def snakemake(workdir, *args, configfiles=(), timeout=600):
    """Run the workflow to completion; returns the CompletedProcess (output captured)."""
    return subprocess.run(snakemake_command(workdir, *args, configfiles=configfiles),
                          capture_output=True, text=True, timeout=timeout, env=snakemake_env(),
                          cwd=ROOT)
