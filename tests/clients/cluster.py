"""Several real `chronik start` processes on 127.0.0.1 forming one cluster (issue 4's tests).

Each broker gets a Kafka port and an rpc port; `--peers` lists every node's rpc address.
Brokers can be SIGKILLed, SIGTERMed and restarted individually or all at once.
"""

import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

from broker import Broker, free_port


class Cluster:
    def __init__(self, base_dir: Path, nodes: int = 3, extra_args=()):
        self.rpc_ports = {i: free_port() for i in range(1, nodes + 1)}
        peers = ",".join(f"{i}@127.0.0.1:{p}" for i, p in self.rpc_ports.items())
        self.brokers = {
            i: Broker(Path(base_dir) / f"node{i}", node_id=i,
                      extra_args=["--rpc", f"127.0.0.1:{self.rpc_ports[i]}", "--peers", peers, *extra_args])
            for i in self.rpc_ports
        }

    def start(self, timeout: float = 60.0) -> "Cluster":
        for b in self.brokers.values():
            b.start_process()
        for b in self.brokers.values():
            b.wait_ready(timeout)
        self.wait_for(lambda: self.all_brokers_registered(), timeout, "every broker registered")
        return self

    def bootstrap(self, *ids) -> str:
        ids = ids or tuple(self.live_ids())
        return ",".join(self.brokers[i].bootstrap for i in ids)

    def live_ids(self):
        return [i for i, b in self.brokers.items() if b.proc is not None and b.proc.poll() is None]

    def metadata(self, node_id: int, timeout: float = 10):
        return AdminClient({"bootstrap.servers": self.brokers[node_id].bootstrap}).list_topics(timeout=timeout)

    def all_brokers_registered(self) -> bool:
        try:
            return all(sorted(self.metadata(i).brokers) == sorted(self.brokers) for i in self.live_ids())
        except Exception:
            return False

    def controller_id(self, via: int) -> int:
        return self.metadata(via).controller_id

    def topic_view(self, node_id: int, topic: str):
        """{partition: (leader, replicas, isr)} as broker `node_id` answers Metadata."""
        t = self.metadata(node_id).topics.get(topic)
        if t is None or t.error is not None:
            return None
        return {p: (pm.leader, list(pm.replicas), sorted(pm.isrs)) for p, pm in t.partitions.items()}

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(interval)
        # The brokers' last words, so a failure far from this machine (CI) can be diagnosed.
        tails = "\n".join(f"--- broker {n} ({b.log_path}):\n{b.log_tail(40)}"
                          for n, b in self.brokers.items())
        raise AssertionError(f"timed out after {timeout}s waiting for: {what}\n{tails}")

    def stop_all(self):
        for b in self.brokers.values():
            b.stop()

    def kill_all(self):
        for b in self.brokers.values():
            b.kill()
