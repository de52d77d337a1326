"""Durability across SIGKILL and SIGTERM: everything acknowledged is read back after a restart."""

from clients import admin, consume_partitions, create_topic, produce_all
from records import make_records


def test_sigkill_restart_keeps_every_acknowledged_record(make_broker):
    broker = make_broker().start()
    create_topic(broker.bootstrap, "durable", 3)
    records = make_records(6000, seed=5)
    delivered = produce_all(broker.bootstrap, "durable", records, lambda i: i % 3)

    broker.kill()
    broker.start()
    msgs = consume_partitions(broker.bootstrap, "durable", range(3), len(records))
    got = {(m.partition(), m.offset()): m for m in msgs}
    for i, r in enumerate(records):
        m = got[delivered[i]]
        assert (m.key(), m.value()) == (r.key, r.value)

    # The restarted broker keeps taking writes after what it recovered.
    more = make_records(100, seed=6)
    again = produce_all(broker.bootstrap, "durable", more, lambda i: 0)
    assert min(off for _, off in again.values()) == sum(1 for p, _ in delivered.values() if p == 0)


def test_sigterm_exits_zero_and_restart_serves_everything(make_broker):
    broker = make_broker().start()
    create_topic(broker.bootstrap, "graceful", 2)
    records = make_records(1000, seed=9)
    produce_all(broker.bootstrap, "graceful", records, lambda i: i % 2)
    assert broker.stop() == 0
    broker.start()
    consume_partitions(broker.bootstrap, "graceful", range(2), len(records))
    # Topic metadata survived too.
    client = admin(broker.bootstrap)
    assert sorted(client.list_topics(timeout=30).topics["graceful"].partitions) == [0, 1]
