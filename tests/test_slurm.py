"""profiles/slurm on a real one-node SLURM cluster started by scripts/slurm/cluster.py.

The workflow is submitted job by job through the Snakemake SLURM executor plugin; its outputs
must equal those of a local run. A failing job and a job cancelled under Snakemake's feet must
make Snakemake exit non-zero instead of waiting forever.

Runs as root with SLURM and MUNGE installed (scripts/slurm/install.sh); otherwise it is skipped,
unless CAVL_REQUIRE_SLURM=1 (CI), where a cluster that cannot start is an error.
Every subprocess has a hard timeout; the cluster's daemons are stopped by PID at teardown.
"""

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "profiles" / "slurm"
SNAKEMAKE = os.path.join(os.path.dirname(sys.executable), "snakemake")

_spec = importlib.util.spec_from_file_location("slurm_cluster", ROOT / "scripts/slurm/cluster.py")
slurm_cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(slurm_cluster)

REQUIRED = os.environ.get("CAVL_REQUIRE_SLURM", "") not in ("", "0")
if not REQUIRED:
    if os.geteuid() != 0:
        pytest.skip("the test SLURM cluster runs its daemons as root (set CAVL_REQUIRE_SLURM=1 "
                    "to make this an error)", allow_module_level=True)
    if not slurm_cluster.available():
        pytest.skip("SLURM/MUNGE not installed: run scripts/slurm/install.sh (set "
                    "CAVL_REQUIRE_SLURM=1 to make this an error)", allow_module_level=True)

# What the cluster run builds (and the local run it is compared with). Extend towards the full
# demo as stages are added.
SLURM_TARGETS = [
    "resources/manifests/coco.parquet",
    "resources/manifests/vg.parquet",
    "resources/manifests/flickr30k.parquet",
    "resources/manifests/nlvr2.parquet",
    "resources/manifests/vcr.parquet",
    "resources/tasks/pretrain/train.parquet",
    "resources/tasks/pretrain/val.parquet",
    "resources/tasks/vqa/train.parquet",
    "resources/tasks/vqa/val.parquet",
    "resources/tasks/vcr/train.parquet",
    "resources/tasks/vcr/val.parquet",
    "resources/tasks/nlvr2/train.parquet",
    "resources/tasks/nlvr2/dev.parquet",
    "resources/tasks/nlvr2/test1.parquet",
    "resources/tasks/rpg/train.parquet",
    "resources/tasks/rpg/val.parquet",
    "resources/tasks/rpg/test.parquet",
    "resources/tasks/tir/train.parquet",
    "resources/tasks/tir/val.parquet",
    "resources/tasks/tir/test.parquet",
]
# Merged over config.yaml for both runs: a small demo.
SMALL_DEMO = {"demo": {"images": {"coco": 12, "vg": 4, "flickr30k": 12, "nlvr2": 16, "vcr": 8},
                       "image_size": 96}}
RUN_TIMEOUT = 600  # seconds for one snakemake run; a hang (the dropped-job trap) fails the test


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    short = None
    if len(str(root)) > slurm_cluster.MAX_ROOT_LENGTH:  # unix sockets live under it
        root = short = Path(tempfile.mkdtemp(prefix="cavl-slurm-", dir="/tmp"))
    instance = slurm_cluster.Cluster(root)
    try:
        instance.start(timeout=120, die_with_parent=True)
        yield instance
    finally:
        daemons = {name: pid for name, pid in instance._saved_pids().items() if name != "owner"}
        instance.stop()
        if short is not None:
            shutil.rmtree(short, ignore_errors=True)
    alive = {name: pid for name, pid in daemons.items() if slurm_cluster._alive(pid)}
    assert not alive, f"daemons still running after stop: {alive}"


def snakemake(args, workdir, env=None, timeout=RUN_TIMEOUT, snakefile=ROOT / "Snakefile"):
    """Run snakemake in its own process group; on timeout kill the group and fail."""
    cmd = [SNAKEMAKE, "-s", str(snakefile), "--directory", str(workdir), *map(str, args)]
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        pytest.fail(f"snakemake still running after {timeout}s: {' '.join(cmd)}\n{out[-4000:]}")
    return proc.returncode, out


def _kill_group(proc):
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def small_config(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL_DEMO))
    return ["--configfile", ROOT / "config.yaml", path]  # last: --configfile eats what follows


def submitted_jobs(output):
    """(run id, {SLURM job id: rule}) from the executor's log lines."""
    run_id = re.search(r"SLURM run ID: (\S+)", output)
    jobs = re.findall(r"Job \S+ has been submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/"
                      r"(?:rule|group)_(\w+)/", output)
    return (run_id.group(1) if run_id else None), dict(jobs)


def test_data_stages_on_slurm_equal_a_local_run(cluster, tmp_path):
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    started = time.monotonic()
    rc, out = snakemake(["--profile", PROFILE, "--slurm-keep-successful-logs", *SLURM_TARGETS,
                         *small_config(tmp_path)], on_slurm, env=cluster.env())
    slurm_seconds = time.monotonic() - started
    assert rc == 0, out[-6000:] + "\n" + cluster.log_tails(lines=5)

    # Every job went through SLURM: submitted, in the controller's completion log under this
    # run's job name, with the profile's wall time, and with its sbatch log in the working dir.
    run_id, jobs = submitted_jobs(out)
    assert run_id and {"demo_data", "manifest", "task_data"} <= set(jobs.values()), out[-4000:]
    records = {r["JobId"]: r for r in cluster.completed_jobs() if r.get("Name") == run_id}
    assert set(records) == set(jobs), (records, jobs)
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    for slurm_id, rule in jobs.items():
        runtime = profile["set-resources"].get(rule, {}).get(
            "runtime", profile["default-resources"]["runtime"])
        assert records[slurm_id]["JobState"] == "COMPLETED", records[slurm_id]
        assert records[slurm_id]["TimeLimit"] == str(runtime), (rule, records[slurm_id])
    logs = sorted((on_slurm / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} == set(jobs), logs
    (coco_log,) = (on_slurm / ".snakemake/slurm_logs/rule_manifest/coco").glob("*.log")
    assert "(Rule: manifest)" in coco_log.read_text()

    # The same targets built locally give the same tables.
    rc, out = snakemake(["--cores", "2", *SLURM_TARGETS, *small_config(tmp_path)], local)
    assert rc == 0, out[-4000:]
    for target in SLURM_TARGETS:
        assert (on_slurm / target).exists() and (local / target).exists(), target
        if target.endswith(".parquet"):
            a, b = pq.read_table(on_slurm / target), pq.read_table(local / target)
            assert a.num_rows > 0 or "/tasks/" in target, target  # a tiny split may be empty
            assert a.equals(b, check_metadata=True), target
    print(f"{len(jobs)} SLURM jobs in {slurm_seconds:.0f}s "
          f"(cluster start {cluster.start_seconds:.1f}s)")


FAILING = """\
rule all:
    input: "done.txt"

rule fails:
    output: "done.txt"
    log: "fails.log"
    shell: "echo about to fail > {log}; exit 3"
"""

SLEEPING = """\
rule sleeps:
    output: "done.txt"
    shell: "sleep 600; touch {output}"
"""


def test_failing_job_is_reported_failed(cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(FAILING)
    rc, out = snakemake(["--profile", PROFILE], tmp_path, env=cluster.env(), timeout=120,
                        snakefile=tmp_path / "Snakefile")
    assert rc != 0, out
    run_id, jobs = submitted_jobs(out)
    (slurm_id,) = jobs
    assert f"SLURM-job '{slurm_id}' failed, SLURM status is: 'FAILED'" in out, out
    record = next(r for r in cluster.completed_jobs() if r.get("JobId") == slurm_id)
    assert record["JobState"] == "FAILED" and record["Name"] == run_id, record
    assert (tmp_path / "fails.log").read_text() == "about to fail\n"
    assert list((tmp_path / ".snakemake/slurm_logs/rule_fails").glob(f"{slurm_id}.log"))  # kept
    assert not (tmp_path / "done.txt").exists()


def test_job_cancelled_outside_snakemake_is_reported_failed(cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(SLEEPING)
    cmd = [SNAKEMAKE, "-s", tmp_path / "Snakefile", "--directory", tmp_path, "--profile", PROFILE]
    env = cluster.env()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        running = ""
        while not running and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
            running = cluster.run("squeue", "-h", "-t", "R", "-o", "%i", check=False).strip()
        assert running, "the job never started running"
        cluster.run("scancel", running)
        out, _ = proc.communicate(timeout=90)
    except BaseException:
        _kill_group(proc)
        raise
    assert proc.returncode != 0, out
    assert f"SLURM-job '{running}' failed, SLURM status is: 'CANCELLED'" in out, out


GPU_RULE = """\
rule trains:
    output: "model.txt"
    resources: gpu=2, gpu_model="a100"
    shell: "touch {output}"
"""


def test_gpu_resource_becomes_sbatch_gpus(cluster, tmp_path):
    """The `gpu` resource (+ gpu_model) is requested as --gpus=MODEL:N, one task for all GPUs.

    The test node has no GPUs, so SLURM refuses the job at submission: Snakemake must say so.
    """
    (tmp_path / "Snakefile").write_text(GPU_RULE)
    rc, out = snakemake(["--profile", PROFILE], tmp_path, env=cluster.env(), timeout=120,
                        snakefile=tmp_path / "Snakefile")
    assert rc != 0, out
    assert "SLURM sbatch failed" in out, out
    (call,) = re.findall(r"^\s*sbatch --parsable .*$", out, flags=re.M)
    assert " --gpus=a100:2" in call and "--ntasks-per-gpu" not in call, call
    assert "--gres" not in call, call
