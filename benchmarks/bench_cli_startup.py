"""Start-up time of commands that need no model, against a bare Python start and an `import torch` in the same run.

Run: .venv/bin/python benchmarks/bench_cli_startup.py  (writes benchmarks/cli_startup.md; median of 5 runs each,
interleaved, so machine load affects every row alike).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "acdc-lite --version": [sys.executable, "-m", "acdc_lite", "--version"],
    "acdc-lite --help": [sys.executable, "-m", "acdc_lite", "--help"],
    "acdc-lite tasks list": [sys.executable, "-m", "acdc_lite", "tasks", "list"],
    "acdc-lite zoo list": [sys.executable, "-m", "acdc_lite", "zoo", "list"],
    "acdc-lite discover --method nonsense (error)": [sys.executable, "-m", "acdc_lite", "discover", "--method", "nonsense"],
}


def main(repeats: int = 5) -> str:
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(repeats):
        for name, argv in COMMANDS.items():
            started = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=False)
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["python -c pass (baseline)"])
    rows = ["| command | median s | x bare python |", "|---|---:|---:|"]
    rows += [f"| {name} | {statistics.median(t):.2f} | {statistics.median(t) / base:.1f} |" for name, t in times.items()]
    return "\n".join(rows)


if __name__ == "__main__":
    table = main()
    out = Path(__file__).with_name("cli_startup.md")
    out.write_text("# Start-up of commands that need no model\n\n" + (__doc__ or "") + "\n" + table + "\n")
    print(table)
