"""Human-readable numbers, one convention for every table: counts in K/M/B/T (thousand, million,
billion, trillion), bytes in binary units (KiB/MiB/GiB)."""


def count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def nbytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.1f} B" if n != int(n) else f"{int(n)} B"
