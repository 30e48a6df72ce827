"""The engine's default thread count follows the cores other processes leave idle."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from stancelab.engine._llamacpp import idle_cores


def test_busy_cores_are_left_to_their_processes() -> None:
    cores = os.cpu_count() or 1
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)  # the spinners are running before the sample
        busy = idle_cores(sample_s=0.5)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    assert 1 <= busy < cores or cores == 1
