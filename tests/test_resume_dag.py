"""Crash and resume across the whole DAG, with real processes and SIGKILL.

Snakemake runs the tiny demo (tests/fixtures/tiny_demo.yaml) in its own process group; when the
file system shows the moment we want (a shard written but not all, a checkpoint written but no
model yet), the whole group — Snakemake and every job it started — gets SIGKILL, as from a
killed terminal or a node going down. The rerun uses what a user would type (README,
"Resuming"): `snakemake --unlock`, then the same command with `--rerun-incomplete`.

One workdir goes through three kills in turn (extraction, pretraining, one finetuning task), so
the tests below run in order and each continues where the previous one left the workdir; in the
end every results/*/metrics.json must equal an uninterrupted run's (the module's reference run).
A separate copy of the reference's upstream outputs checks that a truncated newest checkpoint is
skipped with a warning and the previous one used.

Every subprocess has a hard timeout; a hung run fails its test after its process group is killed.
"""

import hashlib
import json
import os
import re
import shutil
from base64 import urlsafe_b64encode
from pathlib import Path

import pytest

from tiny_run import all_metrics, run, run_until, without_timings

FINETUNE_TASK = "vcr"  # its steps are the slowest of the tiny tasks: the widest window to kill in
RESUME = ["--cores", "2", "--rerun-incomplete"]  # what the README tells users to rerun with


def unlock(workdir):
    rc, out = run(workdir, "--unlock", out_name="unlock", timeout=120)
    assert rc == 0, out[-3000:]


# ---- file-system views -----------------------------------------------------------------------

def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def incomplete(workdir, relpath):
    """Whether Snakemake marks `relpath` as the output of a job that has not finished."""
    key = urlsafe_b64encode(str(relpath).encode()).decode()
    return (Path(workdir) / ".snakemake" / "incomplete" / key).exists()


def shard_files(workdir):
    """Relative paths of the feature shards (not their failures tables) in workdir."""
    root = Path(workdir)
    return sorted(str(p.relative_to(root)) for p in root.glob("resources/features/*/shard-*.parquet")
                  if not p.name.endswith(".failures.parquet"))


def finished_shards(workdir, expected):
    """Shards whose job Snakemake saw finish: both outputs there and neither marked incomplete."""
    done = []
    for shard in expected:
        outputs = [shard, shard.replace(".parquet", ".failures.parquet")]
        if all((Path(workdir) / o).exists() and not incomplete(workdir, o) for o in outputs):
            done.append(shard)
    return done


def shard_key(shard):
    """(dataset, shard number) of a shard path, as in the extract_shard job's wildcards."""
    return Path(shard).parent.name, Path(shard).stem.split("-")[1]


def checkpoint_steps(folder):
    """Steps of the complete checkpoints (their .json marker exists), oldest first."""
    return sorted(int(p.stem.split("-")[1]) for p in Path(folder).glob("step-*.json"))


def log_events(path, event):
    return [r for r in map(json.loads, Path(path).read_text().splitlines()) if r.get("event") == event]


def dry_run_jobs(output, rule):
    """Wildcards of each job of `rule` in a `snakemake -n` listing."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        if re.match(rf"(?:local)?rule {rule}:", block.strip()):
            found = re.search(r"wildcards: (.*)", block)
            jobs.append(found.group(1).strip() if found else "")
    return jobs


# ---- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tiny_demo_run):
    """One uninterrupted run of the tiny demo (conftest; shared with the SLURM test)."""
    return tiny_demo_run


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """The workdir that the kill tests share, and which of them have passed."""
    return {"dir": tmp_path_factory.mktemp("resume") / "crashed", "passed": set()}


def _needs(crashed, *tests):
    missing = [t for t in tests if t not in crashed["passed"]]
    if missing:
        pytest.skip(f"continues the workdir of {', '.join(missing)}, which did not pass")


# ---- the kills -------------------------------------------------------------------------------

def test_kill_during_extraction_keeps_finished_shards(reference, crashed):
    workdir = crashed["dir"]
    expected = shard_files(reference)
    assert len(expected) >= 5, expected

    manifests = sorted({f"resources/manifests/{Path(s).parent.name}.parquet" for s in expected})

    def some_but_not_all_shards():  # once every manifest is there, the DAG knows every shard
        return (all((workdir / m).exists() and not incomplete(workdir, m) for m in manifests)
                and finished_shards(workdir, expected) and len(shard_files(workdir)) < len(expected))

    run_until(workdir, some_but_not_all_shards, "--cores", "2", out_name="kill-extract")
    kept = finished_shards(workdir, expected)
    assert kept and len(kept) < len(expected)
    # A job killed after its shard's atomic rename but before Snakemake's bookkeeping leaves a
    # complete shard that Snakemake still marks incomplete: it may be kept or redone.
    written = [s for s in expected if s not in kept and (workdir / s).exists()
               and (workdir / s.replace(".parquet", ".failures.parquet")).exists()]
    # Every finished output under resources/ (shards, manifests, task tables) must survive as is.
    kept_files = [str(p.relative_to(workdir)) for p in sorted((workdir / "resources").rglob("*"))
                  if p.is_file() and not p.name.startswith(".")
                  and not incomplete(workdir, p.relative_to(workdir))]
    assert set(kept) <= set(kept_files)
    before = {f: (os.stat(workdir / f).st_mtime_ns, sha256(workdir / f)) for f in kept_files}

    indexes = sorted({f"resources/features/{Path(s).parent.name}/index.parquet" for s in expected})
    # The killed Snakemake left its lock: a rerun refuses to start and names --unlock.
    rc, out = run(workdir, *RESUME, *indexes, out_name="locked")
    assert rc != 0 and "Directory cannot be locked" in out and "--unlock" in out, out[-3000:]
    unlock(workdir)
    # The rerun extracts exactly the shards that were not finished.
    rc, out = run(workdir, *RESUME, "-n", out_name="dry-extract")
    assert rc == 0, out[-3000:]
    planned = {tuple(re.findall(r"=(\w+)", w)) for w in dry_run_jobs(out, "extract_shard")}
    missing = {shard_key(s) for s in expected if s not in kept and s not in written}
    assert missing <= planned <= missing | {shard_key(s) for s in written}, (planned, missing, written)
    for rule in ("demo_data", "manifest"):
        assert not dry_run_jobs(out, rule), (rule, out[-3000:])

    rc, out = run(workdir, *RESUME, *indexes, out_name="resume-extract")
    assert rc == 0, out[-4000:]
    assert shard_files(workdir) == expected
    after = {f: (os.stat(workdir / f).st_mtime_ns, sha256(workdir / f)) for f in kept_files}
    assert after == before
    # Same detector, same seed: the shards extracted after the kill equal the reference's too.
    for shard in expected:
        assert sha256(workdir / shard) == sha256(reference / shard), shard
    crashed["passed"].add("extraction")


def test_kill_during_pretraining_resumes_from_newest_checkpoint(reference, crashed):
    _needs(crashed, "extraction")
    workdir = crashed["dir"]
    checkpoints, model = workdir / "results/pretrain/checkpoints", workdir / "results/pretrain/model"

    def pretraining_checkpointed():
        return checkpoint_steps(checkpoints) and not model.exists()

    run_until(workdir, pretraining_checkpointed, *RESUME, out_name="kill-pretrain")
    newest = checkpoint_steps(checkpoints)[-1]
    total = json.loads((checkpoints / f"step-{newest:08d}.json").read_text())["total_steps"]
    assert newest < total, "killed after the last step: nothing left to resume"

    unlock(workdir)
    rc, out = run(workdir, *RESUME, "results/pretrain/model", out_name="resume-pretrain")
    assert rc == 0, out[-4000:]
    resumes = log_events(workdir / "results/pretrain/log.jsonl", "resume")
    assert [r["step"] for r in resumes] == [newest], resumes
    assert f"resumed from step {newest} " in (workdir / "logs/pretrain.log").read_text()
    steps = [r["step"] for r in map(json.loads, (workdir / "results/pretrain/log.jsonl")
                                    .read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps)), "a step logged twice after the resume"
    # Bitwise the uninterrupted run's weights (CPU, one thread).
    assert sha256(model / "model.safetensors") == sha256(reference / "results/pretrain/model/model.safetensors")
    crashed["passed"].add("pretraining")


def test_kill_during_finetuning_resumes_from_newest_checkpoint(reference, crashed):
    _needs(crashed, "extraction", "pretraining")
    workdir = crashed["dir"]
    task = FINETUNE_TASK
    checkpoints, model = workdir / f"results/{task}/checkpoints", workdir / f"results/{task}/model"

    def finetuning_checkpointed():
        return checkpoint_steps(checkpoints) and not model.exists()

    run_until(workdir, finetuning_checkpointed, *RESUME, out_name="kill-finetune")
    newest = checkpoint_steps(checkpoints)[-1]
    total = json.loads((checkpoints / f"step-{newest:08d}.json").read_text())["total_steps"]
    assert newest < total, "killed after the last step: nothing left to resume"

    unlock(workdir)
    rc, out = run(workdir, *RESUME, out_name="resume-all")  # the whole workflow, to its end
    assert rc == 0, out[-4000:]
    resumes = log_events(workdir / f"results/{task}/log.jsonl", "resume")
    assert [r["step"] for r in resumes] == [newest], resumes
    assert f"resumed from step {newest} " in (workdir / f"logs/finetune/{task}.log").read_text()
    for name in sorted(os.listdir(reference / f"results/{task}/model")):
        if name.endswith(".safetensors"):
            assert sha256(model / name) == sha256(reference / f"results/{task}/model" / name), name
    crashed["passed"].add("finetuning")


def test_metrics_after_the_kills_equal_an_uninterrupted_run(reference, crashed):
    _needs(crashed, "extraction", "pretraining", "finetuning")
    expected = all_metrics(reference)
    assert len(expected) == 6, sorted(expected)
    # Every stage is deterministic on CPU, so everything but the wall-clock timings is equal.
    got = all_metrics(crashed["dir"])
    assert any("seconds" in m.get("retrieval", {}) for m in expected.values())  # what is left out
    assert without_timings(got) == without_timings(expected)
    rc, out = run(crashed["dir"], "--cores", "2", "-n", out_name="nothing-left")
    assert rc == 0 and "Nothing to be done" in out, out[-3000:]


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    # The reference's data and features, without any results: the rerun starts at pretraining.
    workdir = tmp_path / "corrupt"
    shutil.copytree(reference, workdir, symlinks=True, ignore=shutil.ignore_patterns("results"))
    checkpoints, model = workdir / "results/pretrain/checkpoints", workdir / "results/pretrain/model"

    def two_checkpoints():
        return len(checkpoint_steps(checkpoints)) >= 2 and not model.exists()

    run_until(workdir, two_checkpoints, "--cores", "2", "results/pretrain/model",
              out_name="kill-pretrain")
    previous, newest = checkpoint_steps(checkpoints)[-2:]
    pt = checkpoints / f"step-{newest:08d}.pt"
    with open(pt, "r+b") as f:  # a write cut short, as a full disk would leave it
        f.truncate(pt.stat().st_size // 2)

    unlock(workdir)
    rc, out = run(workdir, *RESUME, "results/pretrain/model", out_name="resume-pretrain")
    assert rc == 0, out[-4000:]
    log = (workdir / "logs/pretrain.log").read_text()
    assert re.search(rf"checkpoint at step {newest} in \S+ is unusable .*SHA-256 mismatch", log), log[-3000:]
    resumes = log_events(workdir / "results/pretrain/log.jsonl", "resume")
    assert [r["step"] for r in resumes] == [previous], resumes
    assert sha256(model / "model.safetensors") == sha256(reference / "results/pretrain/model/model.safetensors")
