"""OpenMP waits passively unless told otherwise (see engine/__init__.py for the measured reason)."""

import os
import subprocess
import sys


def _policy(env: dict[str, str]) -> str:
    code = "import engine, torch, os; print(os.environ['OMP_WAIT_POLICY'])"
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True).stdout.strip()


def test_engine_sets_passive_waiting_before_torch_loads_and_an_explicit_choice_wins():
    assert _policy({}) == "PASSIVE"
    assert _policy({"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
