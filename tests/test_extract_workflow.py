"""The extraction rules under Snakemake: shards → index, nothing redone on a second run, only a
missing shard re-extracted, a changed box parameter re-extracts all shards."""

import os
import subprocess
import sys

import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAKEMAKE = os.path.join(os.path.dirname(sys.executable), "snakemake")


def snakefile(tmp_path):
    """The repo's Snakefile once it includes extract.smk; until then one that does."""
    with open(os.path.join(ROOT, "Snakefile")) as f:
        if "extract.smk" in f.read():
            return os.path.join(ROOT, "Snakefile")
    path = tmp_path / "Snakefile"
    rules = os.path.join(ROOT, "workflow", "rules")
    path.write_text(f'configfile: "{ROOT}/config.yaml"\n' + "".join(
        f'include: "{rules}/{name}.smk"\n' for name in ("common", "data", "extract")))
    return str(path)


def snakemake(tmp_path, workdir, *args):
    cmd = [SNAKEMAKE, "-s", snakefile(tmp_path), "--directory", str(workdir),
           "--configfile", os.path.join(ROOT, "config.yaml"), str(tmp_path / "small.yaml"), *args]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def planned(result, rule):
    """How many jobs of `rule` a dry run plans (from its job-count table)."""
    for line in (result.stdout + result.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == rule and parts[1].isdigit():
            return int(parts[1])
    return 0


def test_extraction_rules_build_resume_and_rerun_on_param_change(tmp_path):
    (tmp_path / "small.yaml").write_text(
        "demo:\n  images: {coco: 5, vg: 1, flickr30k: 10, nlvr2: 8, vcr: 4}\n  image_size: 64\n"
        "extract:\n  shard_size: 2\n  detector: {min_size: 64, max_size: 96, proposals: 50}\n"
        "  boxes: {max_boxes: 5}\n  num_workers: 0\n  threads: 1\n")
    work = tmp_path / "work"
    target = "resources/features/vcr/index.parquet"
    first = snakemake(tmp_path, work, "--cores", "2", target)
    assert first.returncode == 0, first.stderr[-4000:]
    index = pq.read_table(work / target).to_pandas()
    manifest = pq.read_table(work / "resources/manifests/vcr.parquet").to_pandas()
    assert sorted(index.image_id) == sorted(manifest.image_id)
    assert sorted(set(index.shard)) == [0, 1]
    shard = pq.read_table(work / "resources/features/vcr/shard-00000.parquet").to_pandas()
    # vcr uses its manifest's boxes only (given_boxes.vcr: given), in order.
    assert (shard.num_given == shard.num_boxes).all()
    assert (work / "logs/extract/vcr/shard-00000.log").exists()

    again = snakemake(tmp_path, work, "-n", target)
    assert "Nothing to be done" in again.stdout + again.stderr

    # A run killed after shard 0: shard 1 and the index never appeared. Only shard 1 reruns.
    os.remove(work / "resources/features/vcr/shard-00001.parquet")
    os.remove(work / target)
    missing = snakemake(tmp_path, work, "-n", target)
    assert planned(missing, "extract_shard") == 1, missing.stdout[-3000:]
    assert planned(missing, "gather_features") == 1

    (tmp_path / "small.yaml").write_text((tmp_path / "small.yaml").read_text().replace(
        "max_boxes: 5", "max_boxes: 6"))
    changed = snakemake(tmp_path, work, "-n", target)
    assert planned(changed, "extract_shard") == 2, changed.stdout[-3000:]
