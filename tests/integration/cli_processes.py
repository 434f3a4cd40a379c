"""Running `lambda-ml` jobs as real processes, and killing them with SIGKILL mid-work."""

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

CLI = [str(Path(sys.executable).parent / "lambda-ml")]


def cli_env(**settings: str | Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "MLFLOW_", "SPEED_"))}
    env.update({k: str(v) for k, v in settings.items()})
    return env


def run_to_end(args: list[str], env: dict[str, str], timeout_s: float = 180) -> str:
    done = subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def kill_mid_work(
    args: list[str],
    env: dict[str, str],
    working: Callable[[], bool],
    rng: random.Random,
    max_delay_s: float,
    timeout_s: float = 60,
) -> bool:
    """Start the job, wait until `working()` says it is busy, then SIGKILL it after a random
    delay. Returns False if the job finished before it could be killed."""
    process = subprocess.Popen(
        CLI + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not working() and process.poll() is None:
            assert time.monotonic() < deadline, "the job never started working"
            time.sleep(0.02)
        time.sleep(rng.uniform(0, max_delay_s))
        if process.poll() is not None:
            return False
        os.kill(process.pid, signal.SIGKILL)
        return True
    finally:
        process.kill()
        process.wait()
