"""The rule of tests/conftest.py that sorts tests into the fast and the slow tier, and the skip-or-fail
of tests/guards.py (CAVL_REQUIRE_*)."""

import subprocess
import types

import pytest

import conftest
import tiny_run
import workflow_run


def item(function, **fixtures):
    """A stand-in for a collected test: its function and the fixture functions it requests."""
    defs = {name: [types.SimpleNamespace(func=f)] for name, f in fixtures.items()}
    return types.SimpleNamespace(function=function, _fixtureinfo=types.SimpleNamespace(name2fixturedefs=defs))


def _dry_run(workdir):
    return workflow_run.snakemake(workdir, "-n")


def _helper_of_a_helper(workdir):
    return _dry_run(workdir)


def _tiny(workdir):
    return tiny_run.run(workdir, "--cores", "1", out_name="x")


def _shard(manifest):
    from extract.shard import run_shard

    return run_shard(manifest, 0, "out.parquet", None, None)


def _torchrun():
    return subprocess.run(["torchrun", "--nproc_per_node", "2", "-m", "cavl.pretrain"])


def _unit():
    return sorted([3, 1, 2]) == [1, 2, 3] and subprocess.run(["true"]).returncode == 0


@pytest.mark.parametrize("function, expected", [
    (_dry_run, "_dry_run calls workflow_run.snakemake"),
    (_helper_of_a_helper, "_dry_run calls workflow_run.snakemake"),  # followed through helpers
    (_tiny, "start calls workflow_run.snakemake_command"),  # into tiny_run.py
    (_shard, "_shard calls extract.shard.run_shard"),  # imported inside the function
    (_torchrun, "_torchrun names 'torchrun'"),
    (_unit, None),
])
def test_a_test_is_slow_when_its_code_reaches_a_workflow_torchrun_or_a_shard(function, expected):
    assert conftest.slow_reason(item(function)) == expected


def test_a_test_is_slow_when_a_fixture_it_requests_runs_the_demo():
    assert conftest.slow_reason(item(_unit, demo_run=conftest.demo_run)) == "demo_run calls workflow_run.snakemake"
    assert conftest.slow_reason(item(_unit, tiny_demo_run=conftest.tiny_demo_run)) == (
        "start calls workflow_run.snakemake_command")
    assert conftest.slow_reason(item(_unit, tmp_path=_unit)) is None


def test_the_collected_demo_and_shard_tests_are_in_the_slow_tier(request):
    """On the real suite: what this session collected carries the marker where the rule says."""
    items = {i.nodeid: i for i in request.session.items}
    expected_slow = [n for n in items if n.startswith(("tests/test_demo_results.py", "tests/test_resume_dag.py"))]
    for nodeid in expected_slow:
        assert items[nodeid].get_closest_marker("slow"), nodeid
    assert items[request.node.nodeid].get_closest_marker("slow") is None


@pytest.mark.parametrize("value, outcome", [(None, pytest.skip.Exception), ("0", pytest.skip.Exception),
                                            ("1", pytest.fail.Exception)])
def test_a_missing_tool_skips_unless_ci_requires_it(monkeypatch, value, outcome):
    import guards

    if value is None:
        monkeypatch.delenv("CAVL_REQUIRE_TORCHRUN", raising=False)
    else:
        monkeypatch.setenv("CAVL_REQUIRE_TORCHRUN", value)
    guards.require("CAVL_REQUIRE_TORCHRUN", True, "torchrun is there")  # available: nothing happens
    with pytest.raises(outcome, match="no torchrun"):
        guards.require("CAVL_REQUIRE_TORCHRUN", False, "no torchrun")
    with pytest.raises(outcome, match="no_such_module_cavl"):
        guards.import_or_require("no_such_module_cavl", "CAVL_REQUIRE_TORCHRUN")
    assert guards.import_or_require("json", "CAVL_REQUIRE_TORCHRUN").__name__ == "json"
