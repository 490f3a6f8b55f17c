"""Hydra's own launcher conformance suite against ptychostab's submitit launcher (issue 11:
"Hydra's launcher_common_tests passes against our launchers; keep it in our tests"). Each test
starts real submitit jobs (processes), hence slow."""

import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _hydra_version_base_unset():
    """The suite's apps declare no ``version_base``; an in-process ``train.py`` earlier in the
    session (``version_base="1.3"``) leaves Hydra's process-wide version base at 1.3 (jobs no
    longer chdir), which would fail the suite for a reason that is not the launcher's."""
    from hydra import version

    inst = version.VersionBase.instance()
    saved = inst.version_base
    inst.version_base = version._UNSPECIFIED_
    yield
    inst.version_base = saved


@pytest.mark.parametrize("launcher_name, overrides", [
    ("ptychostab_submitit_local", ["hydra.launcher.timeout_min=5"])])
class TestPtychoLocalLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [
    ({"defaults": [{"override hydra/launcher": "ptychostab_submitit_local"}],
      "hydra": {"launcher": {"timeout_min": 5}}}, ["-m"])])
class TestPtychoLocalLauncherIntegration(IntegrationTestSuite):
    """As Hydra's own launcher plugins run it: ``-m`` in the extra flags (without it the apps
    run a single job and 6 tests fail, for the stock ``submitit_local`` as for ours)."""
    pass
