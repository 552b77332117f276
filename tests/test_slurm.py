"""profiles/slurm on a real one-node SLURM cluster started by scripts/slurm/cluster.py.

The whole tiny demo (tests/fixtures/tiny_demo.yaml: data, extraction, pretraining, finetuning,
evaluation) is submitted job by job through the Snakemake SLURM executor plugin; its tables,
weights and metrics must equal those of a local run (the session's `tiny_demo_run`). A failing
job and a job cancelled under Snakemake's feet must make Snakemake exit non-zero instead of
waiting forever, and a GPU count in the config must reach both sbatch and torchrun.

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

import tiny_run
from workflow_run import snakemake_env

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

RUN_TIMEOUT = 600  # seconds for one snakemake run; a hang (the dropped-job trap) fails the test
# The whole tiny demo through SLURM: ~40 jobs, each a SLURM job whose step starts Snakemake again.
WORKFLOW_TIMEOUT = 1800


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


def submitted_jobs(output):
    """(run id, {SLURM job id: rule}) from the executor's log lines."""
    run_id = re.search(r"SLURM run ID: (\S+)", output)
    jobs = re.findall(r"Job \S+ has been submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/"
                      r"(?:rule|group)_(\w+)/", output)
    return (run_id.group(1) if run_id else None), dict(jobs)


def test_whole_workflow_on_slurm_equals_a_local_run(cluster, tiny_demo_run, tmp_path):
    """Extraction, pretraining, finetuning and evaluation of the tiny demo, one SLURM job each."""
    on_slurm, local = tmp_path / "slurm", tiny_demo_run
    started = time.monotonic()
    rc, out = tiny_run.run(on_slurm, "--profile", PROFILE, "--slurm-keep-successful-logs",
                           out_name="slurm", timeout=WORKFLOW_TIMEOUT,
                           env=cluster.env(snakemake_env()))
    slurm_seconds = time.monotonic() - started
    assert rc == 0, out[-6000:] + "\n" + cluster.log_tails(lines=5)

    # Every job but the local rules went through SLURM: submitted, in the controller's
    # completion log under this run's job name, with the profile's (or config's) wall time, and with its sbatch
    # log in the working dir.
    run_id, jobs = submitted_jobs(out)
    rules = set(jobs.values())
    assert run_id and {"demo_data", "manifest", "task_data", "extract_shard", "pretrain", "finetune",
                       "evaluate", "evaluate_zero_shot"} <= rules, out[-4000:]
    assert "gather_features" not in rules  # a localrule
    records = {r["JobId"]: r for r in cluster.completed_jobs() if r.get("Name") == run_id}
    assert set(records) == set(jobs), (records, jobs)
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    for slurm_id, rule in jobs.items():
        runtime = profile["set-resources"].get(rule, {}).get(
            "runtime", profile["default-resources"]["runtime"])
        if rule == "train_detector":  # its wall time is a config setting (extract.train.runtime)
            runtime = yaml.safe_load(tiny_run.TINY.read_text())["extract"]["train"]["runtime"]
        assert records[slurm_id]["JobState"] == "COMPLETED", records[slurm_id]
        assert records[slurm_id]["TimeLimit"] == str(runtime), (rule, records[slurm_id])
    logs = sorted((on_slurm / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} == set(jobs), logs
    (pretrain_log,) = (on_slurm / ".snakemake/slurm_logs/rule_pretrain").rglob("*.log")
    assert "(Rule: pretrain)" in pretrain_log.read_text()

    # The same results as the local run: tables, features, weights and every task's metrics.
    tables = sorted(str(p.relative_to(local)) for p in (local / "resources").rglob("*.parquet"))
    assert any("/features/" in t for t in tables) and any("/tasks/" in t for t in tables), tables
    for table in tables:
        a, b = pq.read_table(on_slurm / table), pq.read_table(local / table)
        assert a.equals(b, check_metadata=True), table
    weights = sorted(str(p.relative_to(local)) for p in (local / "results").rglob("*.safetensors"))
    assert "results/pretrain/model/model.safetensors" in weights, weights
    for path in weights:
        assert (on_slurm / path).read_bytes() == (local / path).read_bytes(), path
    expected = tiny_run.all_metrics(local)
    assert len(expected) == 6, sorted(expected)
    assert (tiny_run.without_timings(tiny_run.all_metrics(on_slurm))
            == tiny_run.without_timings(expected))
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


def test_pretrain_on_gpus_asks_for_them_and_starts_one_process_per_gpu(cluster, tiny_demo_run,
                                                                      tmp_path):
    """The real pretrain rule with `pretrain.gpus: 2`: sbatch --gpus=2 and torchrun with two
    processes, both from the one config key. The node has no GPUs, so SLURM refuses the job."""
    workdir = tmp_path / "gpus"  # the tiny demo's inputs of pretraining, without any results
    shutil.copytree(tiny_demo_run, workdir, symlinks=True, ignore=shutil.ignore_patterns("results"))
    gpus = tmp_path / "gpus.yaml"
    gpus.write_text(yaml.safe_dump({"pretrain": {"gpus": 2}}))
    rc, out = tiny_run.run(workdir, "--profile", PROFILE, "results/pretrain/model", out_name="gpus",
                           timeout=120, env=cluster.env(snakemake_env()), configfiles=[gpus])
    assert rc != 0 and "SLURM sbatch failed" in out, out[-4000:]
    (call,) = re.findall(r"^\s*sbatch --parsable .*$", out, flags=re.M)
    assert " --gpus=2" in call and "--ntasks-per-gpu" not in call and "--gres" not in call, call
    assert "torchrun --standalone --nproc_per_node 2 -m cavl.pretrain " in out, out[-4000:]
