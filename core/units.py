"""How sizes are written for people, in one place.

Memory (what training needs, what the machine has, peak memory) is counted as a Mac's memory is sold and
shown: 1 GB = 2^30 bytes, so a "16 GB" Mac shows 16.0 GB. Files and downloads are counted as disks and
Finder count them: 1 GB = 10^9 bytes. Every page, the log and the CLI use these two functions, so one figure
is the same number under the same name everywhere. No Qt, no heavy imports: the GUI thread may call them."""
from __future__ import annotations


def fmt_bytes(n: float | None) -> str:
    """A file or download size: 1.8 MB, 740.3 KB, 512 B (decimal units); "-" when unknown."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def fmt_memory(n: float | None) -> str:
    """A memory figure: 23.5 GB, 512.0 MB (1 GB = 2^30 bytes, as memory is sold); "-" when unknown."""
    if n is None:
        return "-"
    if abs(n) >= 2**30:
        return f"{n / 2**30:.1f} GB"
    if abs(n) >= 2**20:
        return f"{n / 2**20:.1f} MB"
    return f"{n / 2**10:.1f} KB" if abs(n) >= 2**10 else f"{n:.0f} B"
