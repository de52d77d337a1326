"""kcat (Debian's, built on librdkafka 2.0.2: the old-client regression test)."""

import json
import random
import string
import subprocess


def kcat(*args, input_path=None, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run(["kcat", *args], capture_output=True, timeout=timeout,
                          stdin=open(input_path, "rb") if input_path else subprocess.DEVNULL)


def test_kcat_produces_100k_and_consumes_them_byte_identical(broker, tmp_path):
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \t"
    lines = [f"{i:06d} " + "".join(rng.choices(alphabet, k=rng.randint(0, 300))) for i in range(100_000)]
    payload = ("\n".join(lines) + "\n").encode()
    src = tmp_path / "in.txt"
    src.write_bytes(payload)

    produced = kcat("-P", "-b", broker.bootstrap, "-t", "kcat-roundtrip", "-p", "0",
                    "-X", "acks=all", "-l", str(src))
    assert produced.returncode == 0, produced.stderr.decode(errors="replace")

    consumed = kcat("-C", "-b", broker.bootstrap, "-t", "kcat-roundtrip", "-p", "0",
                    "-o", "beginning", "-e", "-c", "100000", "-f", "%s\n")
    assert consumed.returncode == 0, consumed.stderr.decode(errors="replace")
    assert consumed.stdout == payload


def test_kcat_lists_metadata_of_auto_created_topic(broker, tmp_path):
    src = tmp_path / "one.txt"
    src.write_bytes(b"hello\n")
    assert kcat("-P", "-b", broker.bootstrap, "-t", "listed", "-l", str(src)).returncode == 0
    listing = kcat("-L", "-J", "-b", broker.bootstrap, "-t", "listed")
    assert listing.returncode == 0, listing.stderr.decode(errors="replace")
    meta = json.loads(listing.stdout)
    assert [b["id"] for b in meta["brokers"]] == [1]
    (topic,) = meta["topics"]
    assert topic["topic"] == "listed"
    assert [p["partition"] for p in topic["partitions"]] == [0]
    assert topic["partitions"][0]["leader"] == 1


def test_kcat_consumes_with_key_and_offsets(broker, tmp_path):
    src = tmp_path / "kv.txt"
    src.write_bytes(b"".join(f"k{i}:v{i}\n".encode() for i in range(50)))
    assert kcat("-P", "-b", broker.bootstrap, "-t", "keyed", "-K", ":", "-l", str(src)).returncode == 0
    out = kcat("-C", "-b", broker.bootstrap, "-t", "keyed", "-o", "beginning", "-e", "-c", "50",
               "-f", "%o %k %s\n")
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert out.stdout.decode().splitlines() == [f"{i} k{i} v{i}" for i in range(50)]
