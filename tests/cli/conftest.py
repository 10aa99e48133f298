import subprocess
import sys

import pytest
from cli_helpers import script, script_env


@pytest.fixture
def tightfit():
    """``tightfit(*args, cwd=...)`` -> CompletedProcess (text, captured), never raising on exit codes;
    ``module=True`` runs ``python -m tightfit`` instead of the console script."""
    def run(*args, cwd=None, timeout=180, module=False):
        command = [sys.executable, "-m", "tightfit"] if module else script()
        return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=script_env(),
                              cwd=cwd, timeout=timeout)

    return run
