"""Start-up cost: ``import nsbackup`` and the commands agents call most, against a bare Python.

Each line is the median wall time of N fresh processes (interleaved, so that the machine's
state affects every command alike) and its difference with ``python -c pass`` measured in the
same run. Targets: ``import nsbackup`` within 30 ms of a bare Python; ``nsbackup --help``,
``providers`` and ``rclone obscure`` within 150 ms. Run: .venv/bin/python bench/cli.py [N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import nsbackup": [sys.executable, "-c", "import nsbackup"],
    "import nsbackup; Cluster.from_url": [
        sys.executable,
        "-c",
        "import nsbackup; nsbackup.Cluster.from_url('redis://127.0.0.1:6379/0')",
    ],
    "nsbackup --help": [str(BIN / "nsbackup"), "--help"],
    "nsbackup providers": [str(BIN / "nsbackup"), "providers"],
    "nsbackup rclone obscure x": [str(BIN / "nsbackup"), "rclone", "obscure", "x"],
    "nsbackup destination render": [
        str(BIN / "nsbackup"),
        "destination",
        "render",
        "--data",
        '{"provider":"backblaze","url":"b2:bucket","parameters":'
        '{"b2_account_id":"id","b2_account_key":"key"}}',
    ],
}


def once(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main(rounds: int = 21) -> None:
    for command in COMMANDS.values():  # warm the page cache
        once(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, command in COMMANDS.items():
            times[name].append(once(command))
    base = statistics.median(times["python -c pass"])
    print(f"{'command':<36} {'median':>9} {'- python':>10} {'ratio':>7}   (n={rounds})")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"{name:<36} {median * 1000:7.1f} ms {(median - base) * 1000:+8.1f} ms "
            f"{median / base:6.2f}x"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 21)
