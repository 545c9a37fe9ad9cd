"""Optional `--profile`: py-spy samples the API process during the single-packet closed loop."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed (.venv/bin/pip install py-spy); no profile")
        return None
    args = [spy, "record", "-p", str(pid), "-d", str(int(seconds) + 1), "-r", "250"]
    args += ["-f", "raw", "-o", str(out), "--nonblocking"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(out: Path, top: int = 25) -> list[str]:
    """Self and inclusive share of samples per function (file:function), busiest first."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        total += count
        frames = [_name(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return ["(no samples)"]
    lines = [f"{total} samples; self%  incl%  function"]
    for name, n in own.most_common(top):
        lines.append(f"{100 * n / total:5.1f} {100 * incl[name] / total:6.1f}  {name}")
    lines.append("-- inclusive --")
    for name, n in incl.most_common(top * 2):
        lines.append(f"{100 * n / total:6.1f}  {name}")
    return lines


def _name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    func, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{short}:{func}"
