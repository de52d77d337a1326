"""Deterministic test records and the checks every round-trip test applies."""

import random
from dataclasses import dataclass

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


@dataclass(frozen=True)
class Rec:
    key: bytes | None
    value: bytes | None
    headers: tuple


def make_records(n: int, seed: int, max_value: int = 2000) -> list[Rec]:
    """Keys (some null), values of varied size (some null or empty, some incompressible), headers."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        key = None if i % 17 == 0 else f"key-{i}".encode()
        kind = i % 5
        if kind == 0:
            value = rng.randbytes(rng.randint(1, max_value))
        elif kind == 1:
            value = (f"value-{i}-" * rng.randint(1, max_value // 16)).encode()
        elif kind == 2:
            value = b""
        elif kind == 3 and i % 10 == 3 and key is not None:
            value = None  # a tombstone (kafka-python refuses a record with neither key nor value)
        else:
            value = f"{i}".encode()
        headers = (("seq", str(i).encode()), ("h-bin", rng.randbytes(8))) if i % 3 else ()
        out.append(Rec(key, value, headers))
    return out


def seq_of(headers) -> int | None:
    for k, v in headers or ():
        if k == "seq":
            return int(v)
    return None
