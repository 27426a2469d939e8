"""A test run ended by `timeout` (SIGTERM), as CI's time cap or a developer's `timeout 900 pytest` ends it, still
prints the summary that names the failures so far and the test it stopped in (tests/conftest.py), also when the
running test had replaced the SIGTERM handler the way ray.init() does (sys.exit)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = '''
import signal, sys, time
from pathlib import Path

def test_fails():
    assert 1 == 2

def test_waits():
    if "{ray_style}" == "yes":  # what ray.init() does in the main thread
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    Path("started").touch()
    time.sleep(300)

def test_never_reached():
    pass
'''


@pytest.mark.parametrize("ray_style", ["no", "yes"])
def test_sigterm_still_prints_the_failures(tmp_path, ray_style):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text(TESTS.format(ray_style=ray_style))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "test_x.py"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120  # pytest starting on a busy machine
        while not (tmp_path / "started").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "started").exists(), proc.communicate(timeout=60)[0] if proc.poll() is not None else ""
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "FAILED test_x.py::test_fails - assert 1 == 2" in out, out
    assert "stopped by signal 15 during test_x.py::test_waits" in out, out
    assert "test_never_reached" not in out and proc.returncode != 0, out
