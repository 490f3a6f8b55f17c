"""Hydra's own launcher conformance suite against ptychostab's submitit launcher (issue 11:
"Hydra's launcher_common_tests passes against our launchers; keep it in our tests"). Each test
starts real submitit jobs (processes), hence slow."""

import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("launcher_name, overrides", [
    ("ptychostab_submitit_local", ["hydra.launcher.timeout_min=5"])])
class TestPtychoLocalLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [
    ({"defaults": [{"override hydra/launcher": "ptychostab_submitit_local"}],
      "hydra": {"launcher": {"timeout_min": 5}}}, [])])
class TestPtychoLocalLauncherIntegration(IntegrationTestSuite):
    pass
