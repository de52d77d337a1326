"""Cluster mode (issue 4): real broker processes on 127.0.0.1, killed and restarted.

Each test is named after its scenario. The cluster's metadata lives in Raft; the
controller (Raft leader) alone proposes; partition leaders are spread over brokers
and elected from the ISR by the controller when a broker is fenced.
"""

import re
import time
from collections import Counter

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic
from kafka.admin import KafkaAdminClient

from clients import admin, consume_partitions
from cluster import Cluster

SESSION_TIMEOUT_S = 9.0  # broker.session.timeout.ms default


@pytest.fixture
def cluster(tmp_path):
    made = []

    def make(nodes=3, **kw) -> Cluster:
        c = Cluster(tmp_path, nodes=nodes, **kw).start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.kill_all()
        for b in c.brokers.values():
            b.assert_no_panic()


def describe(cluster: Cluster, via: int, topic: str):
    """{partition: (leader, leader_epoch, replicas, sorted isr)} from broker `via` (Metadata v7+)."""
    client = KafkaAdminClient(bootstrap_servers=cluster.brokers[via].bootstrap, request_timeout_ms=10_000)
    try:
        (t,) = client.describe_topics([topic])
    finally:
        client.close()
    if t["error_code"] != 0:
        return None
    return {p["partition_index"]: (p["leader_id"], p["leader_epoch"], list(p["replica_nodes"]),
                                   sorted(p["isr_nodes"])) for p in t["partitions"]}


def same_everywhere(cluster: Cluster, topic: str):
    """The topic's view if every live broker gives the same answer, else None."""
    try:
        views = [describe(cluster, i, topic) for i in cluster.live_ids()]
    except Exception:
        return None
    if views[0] is None or any(v != views[0] for v in views):
        return None
    return views[0]


def agreed(cluster: Cluster, topics, into: dict) -> bool:
    """True once every live broker gives the same view of each topic; the views go into `into`.

    Leaders and ISRs keep moving right after a restart (elections, followers catching up), so
    the views a test compares are the ones that were agreed, not ones read again later.
    """
    for t in topics:
        view = same_everywhere(cluster, t)
        if view is None:
            return False
        into[t] = view
    return True


def non_controller(cluster: Cluster) -> int:
    controller = cluster.controller_id(via=cluster.live_ids()[0])
    return next(i for i in cluster.live_ids() if i != controller)


def create(cluster: Cluster, via: int, name: str, partitions: int, rf: int, config=None):
    client = admin(cluster.brokers[via].bootstrap)
    client.create_topics([NewTopic(name, partitions, rf, config=config or {})],
                         request_timeout=30)[name].result(30)


def problems_logged(cluster: Cluster) -> list[str]:
    bad = re.compile(r"\b(WARN|ERROR)\b")
    return [f"node {i}: {line}" for i, b in cluster.brokers.items()
            for line in b.log_text().splitlines() if bad.search(line)]


def test_create_topic_through_non_controller_is_identical_on_all_brokers(cluster):
    c = cluster()
    via = non_controller(c)
    create(c, via, "orders", 6, 3)
    deadline = time.monotonic() + 2.0
    view = None
    while time.monotonic() < deadline and view is None:
        view = same_everywhere(c, "orders")
    assert view is not None, "brokers disagree about the topic 2 s after creation"
    assert sorted(view) == list(range(6))
    for leader, epoch, replicas, isr in view.values():
        assert sorted(replicas) == [1, 2, 3] and isr == [1, 2, 3] and leader in replicas
    assert problems_logged(c) == []


def test_produce_to_missing_topic_via_non_controller_creates_it_once(cluster):
    c = cluster()
    via = non_controller(c)
    p = Producer({"bootstrap.servers": c.brokers[via].bootstrap, "acks": "all"})
    errors = []
    for i in range(20):
        p.produce("auto-made", value=str(i).encode(), on_delivery=lambda e, m: e and errors.append(e))
    assert p.flush(30) == 0 and errors == []
    c.wait_for(lambda: same_everywhere(c, "auto-made") is not None, 5, "topic visible on all brokers")
    ids = {KafkaAdminClient(bootstrap_servers=c.brokers[i].bootstrap).describe_topics(["auto-made"])[0]["topic_id"]
           for i in c.live_ids()}
    assert len(ids) == 1, f"topic created more than once: ids {ids}"
    created = sum(b.log_text().count("topic created") for b in c.brokers.values())
    assert created == 1, f"'topic created' logged {created} times"


def test_idle_cluster_for_60s_has_no_failed_proposal_and_only_the_controller_proposes(cluster):
    c = cluster()
    create(c, 1, "idle-a", 3, 3)
    create(c, 2, "idle-b", 4, 2)
    controller = c.controller_id(via=1)
    time.sleep(60)
    assert all(c.controller_id(via=i) == controller for i in c.live_ids())
    assert problems_logged(c) == []
    # The controller stops last: a controller that stops first hands its role over, and the
    # new controller rightly proposes (it fences the leaving broker). That is not idle work.
    for i in [i for i in c.brokers if i != controller] + [controller]:
        c.brokers[i].stop()
    proposals = {i: _proposals_made(b.log_text()) for i, b in c.brokers.items()}
    assert proposals[controller] > 0
    assert all(n == 0 for i, n in proposals.items() if i != controller), proposals


def _proposals_made(log: str) -> int:
    found = re.findall(r"proposals_made=(\d+)", log)
    assert found, "the broker logs how many proposals it made when it stops"
    return int(found[-1])


def test_twelve_partitions_rf3_on_three_brokers_each_lead_four(cluster):
    c = cluster()
    create(c, 1, "spread", 12, 3)
    c.wait_for(lambda: same_everywhere(c, "spread") is not None, 5, "topic visible")
    leaders = Counter(v[0] for v in same_everywhere(c, "spread").values())
    assert leaders == {1: 4, 2: 4, 3: 4}


def test_confluent_producer_reaches_every_partition_leader_through_one_bootstrap(cluster):
    c = cluster()
    create(c, 1, "through-one", 6, 3)
    c.wait_for(lambda: same_everywhere(c, "through-one") is not None, 5, "topic visible")
    p = Producer({"bootstrap.servers": c.brokers[2].bootstrap, "acks": "all"})
    delivered, errors = [], []
    for i in range(600):
        p.produce("through-one", value=str(i).encode(), partition=i % 6,
                  on_delivery=lambda e, m: errors.append(e) if e else delivered.append(m.partition()))
    assert p.flush(60) == 0
    assert errors == []
    assert Counter(delivered) == {i: 100 for i in range(6)}
    consume_partitions(c.bootstrap(), "through-one", range(6), 600)


def test_sigkill_partition_leader_elects_from_isr_then_preferred_leaders_return(cluster):
    c = cluster()
    create(c, 1, "failover", 6, 3)
    c.wait_for(lambda: same_everywhere(c, "failover") is not None, 5, "topic visible")
    before = same_everywhere(c, "failover")
    victim = non_controller(c)
    led = {p for p, v in before.items() if v[0] == victim}
    assert led, "the victim leads some partitions"
    c.brokers[victim].kill()
    deadline = SESSION_TIMEOUT_S + 2.0

    def moved():
        view = same_everywhere(c, "failover")
        return view is not None and all(view[p][0] not in (victim, -1) for p in led)
    c.wait_for(moved, deadline, "new leaders for every partition the victim led")
    after = same_everywhere(c, "failover")
    for p in led:
        leader, epoch, _, _ = after[p]
        assert leader in before[p][3], "the new leader comes from the ISR"
        assert epoch == before[p][1] + 1, "the leader epoch went up by exactly one"

    c.brokers[victim].start()
    c.wait_for(lambda: (v := same_everywhere(c, "failover")) is not None
               and all(v[p][0] == victim for p in led), 30, "preferred leaders restored")


def test_sigkill_controller_then_full_restart_keeps_all_metadata(cluster):
    c = cluster()
    create(c, 1, "before-crash", 3, 3)
    old = c.controller_id(via=1)
    c.brokers[old].kill()
    survivors = [i for i in c.brokers if i != old]
    c.wait_for(lambda: c.controller_id(via=survivors[0]) not in (None, -1, old), 15, "a new controller")
    create(c, survivors[0], "after-crash", 2, 2)
    c.brokers[old].start()
    views = {}
    c.wait_for(lambda: agreed(c, ("before-crash", "after-crash"), views), 15, "the old controller catches up")

    c.kill_all()
    for b in c.brokers.values():
        b.start_process()
    for b in c.brokers.values():
        b.wait_ready()
    again = {}
    c.wait_for(lambda: agreed(c, views, again), 30, "metadata back on all")
    for t, v in views.items():
        assert {p: sorted(x[2]) for p, x in again[t].items()} == {p: sorted(x[2]) for p, x in v.items()}
    create(c, 3, "after-restart", 1, 3)


def test_five_broker_cluster_spreads_and_fails_over(cluster):
    c = cluster(nodes=5)
    create(c, 2, "five", 10, 3)
    c.wait_for(lambda: same_everywhere(c, "five") is not None, 5, "topic visible")
    view = same_everywhere(c, "five")
    assert Counter(v[0] for v in view.values()) == {i: 2 for i in range(1, 6)}
    assert Counter(r for v in view.values() for r in v[2]) == {i: 6 for i in range(1, 6)}
    victim = non_controller(c)
    c.brokers[victim].kill()
    c.wait_for(lambda: (v := same_everywhere(c, "five")) is not None
               and all(x[0] != victim for x in v.values()), SESSION_TIMEOUT_S + 2.0, "failover")
