"""Whole-workflow runs of the tiny demo (tests/fixtures/tiny_demo.yaml) that tests can kill.

Snakemake runs in a new session, so it and every job it starts share one process group: a test
can SIGKILL all of them at once (kill_group), as a killed terminal or a lost node would, and a
hung run is killed the same way when its hard timeout expires. Output goes to a file beside the
workdir (a pipe nobody reads could fill up and stall Snakemake).
"""

import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from workflow_run import ROOT, snakemake_command, snakemake_env

TINY = Path(ROOT) / "tests" / "fixtures" / "tiny_demo.yaml"
RUN_TIMEOUT = 600  # seconds for one snakemake call (the whole tiny workflow takes ~3-5 min on 2 cores)
POLL_S = 0.05  # how often run_until looks at the file system

_runs = itertools.count(1)


def start(workdir, *args, out_name, env=None, configfiles=()):
    """Start snakemake on the tiny demo in workdir; returns the Popen (.out_path: its output).
    `configfiles` are merged over the tiny demo's."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out_path = workdir.parent / f"{workdir.name}-{next(_runs):02d}-{out_name}.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(snakemake_command(workdir, *args, configfiles=[TINY, *configfiles]), stdout=out,
                                stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                env=snakemake_env() if env is None else env, start_new_session=True)
    proc.out_path = out_path
    return proc


def output(proc):
    return proc.out_path.read_text(errors="replace")


def group_members(pgid):
    """PIDs of live (non-zombie) processes in process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def kill_group(proc):
    """SIGKILL snakemake's whole process group and wait until every member is gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while group_members(proc.pid):
        assert time.monotonic() < deadline, f"still alive after SIGKILL: {group_members(proc.pid)}"
        time.sleep(0.1)


def run(workdir, *args, out_name, timeout=RUN_TIMEOUT, env=None, configfiles=()):
    """Run snakemake to its end; returns (returncode, output). A hang fails the test."""
    proc = start(workdir, *args, out_name=out_name, env=env, configfiles=configfiles)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"snakemake {' '.join(map(str, args))} still running after {timeout}s:\n"
                    f"{output(proc)[-4000:]}")
    return proc.returncode, output(proc)


def run_until(workdir, condition, *args, out_name, timeout=RUN_TIMEOUT, configfiles=()):
    """Run snakemake and SIGKILL its process group as soon as condition() is true."""
    proc = start(workdir, *args, out_name=out_name, configfiles=configfiles)
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            if proc.poll() is not None:
                pytest.fail(f"snakemake exited ({proc.returncode}) before the moment to kill it:\n"
                            f"{output(proc)[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no moment to kill within {timeout}s:\n{output(proc)[-4000:]}")
            time.sleep(POLL_S)
    finally:
        kill_group(proc)
    return output(proc)


def complete_run(workdir):
    """One uninterrupted local run of the whole tiny demo (every target of rule all)."""
    rc, out = run(workdir, "--cores", "2", out_name="run")
    assert rc == 0, out[-5000:]
    return Path(workdir)


def without_timings(value):
    """A metrics.json without its wall-clock timings (retrieval's `seconds` per phase)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k != "seconds"}
    return value


def all_metrics(workdir):
    """task → results/{task}/metrics.json of a run."""
    return {p.parent.name: json.loads(p.read_text())
            for p in sorted(Path(workdir).glob("results/*/metrics.json"))}
