"""Memory planning: sizes as users write them, and the peak memory a discover run will need.

`parse_max_memory("2GB")` / `parse_max_memory("cpu=2GB,0=10GiB")` read the `--max-memory` option: one size
(main memory) or one size per device, in the form accelerate's `max_memory` takes.
"""

from __future__ import annotations

import re

from acdc_lite.boundary import UsageError

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
         "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, where: str = "--max-memory") -> int:
    """Bytes in "2GB", "1.5GiB", "800MB", "123456" (decimal and binary units), or a UsageError."""
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in UNITS:
        raise UsageError(f"{where} {text!r} is not a size; write e.g. 800MB, 2GB or 1.5GiB")
    value = int(float(m.group(1)) * UNITS[unit])
    if value <= 0:
        raise UsageError(f"{where} {text!r} must be more than zero bytes")
    return value


def parse_max_memory(text: str, where: str = "--max-memory") -> dict[str | int, int]:
    """{device: bytes} from "2GB" (main memory, "cpu") or "cpu=2GB,0=10GiB" (GPU indices as integers)."""
    out: dict[str | int, int] = {}
    for part in str(text).split(","):
        if "=" not in part:
            if len(str(text).split(",")) > 1:
                raise UsageError(f"{where} {text!r}: give one size (e.g. 2GB) or device=size pairs (e.g. cpu=2GB,0=10GB)")
            out["cpu"] = parse_size(part, where)
            continue
        device, size = (p.strip() for p in part.split("=", 1))
        if not (device == "cpu" or device == "disk" or device == "mps" or device.isdigit()):
            raise UsageError(f"{where} {text!r}: unknown device {device!r}; use cpu, mps or a GPU index such as 0")
        key: str | int = int(device) if device.isdigit() else device
        if key in out:
            raise UsageError(f"{where} {text!r}: device {device} is given twice")
        out[key] = parse_size(size, where)
    return out
