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


def test_sigterm_still_prints_the_failures(tmp_path):
    runs = {}
    for ray_style in ("no", "yes"):  # both at once: each is mostly pytest starting up
        folder = tmp_path / ray_style
        folder.mkdir()
        shutil.copy(Path(__file__).with_name("conftest.py"), folder / "conftest.py")
        (folder / "test_x.py").write_text(TESTS.format(ray_style=ray_style))
        runs[ray_style] = (folder, subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "test_x.py"], cwd=folder,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        for ray_style, (folder, proc) in runs.items():
            deadline = time.time() + 180  # pytest starting on a busy machine
            while not (folder / "started").exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.1)
            assert (folder / "started").exists(), (ray_style, proc.poll())
            proc.send_signal(signal.SIGTERM)
        for ray_style, (folder, proc) in runs.items():
            out, _ = proc.communicate(timeout=180)
            assert "FAILED test_x.py::test_fails - assert 1 == 2" in out, (ray_style, out)
            assert "stopped by signal 15 during test_x.py::test_waits" in out, (ray_style, out)
            assert "test_never_reached" not in out and proc.returncode != 0, (ray_style, out)
    finally:
        for _, proc in runs.values():
            if proc.poll() is None:
                proc.kill()
