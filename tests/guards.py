"""Skip a test whose tool is missing, unless CI requires the tool (CAVL_REQUIRE_* set).

.ci/run installs every tool the suite uses and sets CAVL_REQUIRE_SLURM, CAVL_REQUIRE_CHROMIUM,
CAVL_REQUIRE_MINILM and CAVL_REQUIRE_TORCHRUN, so there a missing tool fails the test instead of
skipping it; on a developer's machine the test is skipped with the reason.
"""

import importlib
import os

import pytest


def required(variable):
    """Whether the environment variable `variable` asks for the tool (set and not 0)."""
    return os.environ.get(variable, "") not in ("", "0")


def require(variable, available, reason):
    """Nothing when `available`; else skip with `reason`, or fail where `variable` is set."""
    if available:
        return
    if required(variable):
        pytest.fail(f"{variable} is set, but {reason}", pytrace=False)
    pytest.skip(f"{reason} (set {variable}=1 to make this an error)")


def import_or_require(module, variable):
    """`module` imported; missing → skip, or fail where `variable` is set."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        require(variable, False, f"{module} cannot be imported ({e})")
