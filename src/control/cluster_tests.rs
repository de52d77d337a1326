//! Cluster-mode tests: several control nodes in one process, talking over loopback TCP.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;

use super::*;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    configs: Vec<ControlConfig>,
}

impl Cluster {
    fn new(nodes: i32) -> Cluster {
        init_logs();
        let peers: Vec<(i32, SocketAddr)> = (1..=nodes).map(|id| (id, free_port())).collect();
        let dirs: Vec<_> = (1..=nodes).map(|_| tempfile::tempdir().unwrap()).collect();
        let configs = peers
            .iter()
            .zip(&dirs)
            .map(|((id, rpc), dir)| ControlConfig {
                node_id: *id,
                data_dir: dir.path().to_path_buf(),
                kafka_endpoint: ("127.0.0.1".into(), 9000 + *id as u16),
                rack: None,
                rpc: Some(*rpc),
                peers: peers.clone(),
                control_core: None,
                defaults: BrokerDefaults::default(),
            })
            .collect();
        Cluster { dirs, configs }
    }

    /// Starts the given nodes at once (each `start` waits for a quorum).
    fn start(&self, which: &[usize]) -> Vec<ControlHandle> {
        let threads: Vec<_> = which
            .iter()
            .map(|i| {
                let config = self.configs[*i].clone();
                std::thread::spawn(move || start(config).unwrap())
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    fn start_all(&self) -> Vec<ControlHandle> {
        self.start(&(0..self.configs.len()).collect::<Vec<_>>())
    }
}

/// Waits until `check` holds for every node's image.
fn wait_for(nodes: &[ControlHandle], within: Duration, check: impl Fn(&MetadataImage) -> bool) {
    let deadline = Instant::now() + within;
    while !nodes.iter().all(|n| check(&n.image())) {
        assert!(
            Instant::now() < deadline,
            "condition not reached within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every node applied the same last entry, and returns their images, which must
/// then be identical: one committed log, one answer on every broker.
fn converged(nodes: &[ControlHandle]) -> Vec<Arc<MetadataImage>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let images: Vec<_> = nodes.iter().map(|n| n.image()).collect();
        if images.iter().all(|i| i.version == images[0].version) {
            std::thread::sleep(Duration::from_millis(300));
            if nodes.iter().all(|n| n.image().version == images[0].version) {
                for image in &images {
                    assert_eq!(image.topics, images[0].topics);
                    assert_eq!(image.brokers, images[0].brokers);
                }
                return images;
            }
        }
        assert!(Instant::now() < deadline, "nodes did not converge");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn controller(nodes: &[ControlHandle]) -> &ControlHandle {
    wait_for(nodes, Duration::from_secs(10), |image| {
        image.controller_id.is_some()
    });
    let id = nodes[0].controller_id().unwrap();
    nodes.iter().find(|n| n.node_id() == id).unwrap()
}

fn non_controller(nodes: &[ControlHandle]) -> &ControlHandle {
    let id = controller(nodes).node_id();
    nodes.iter().find(|n| n.node_id() != id).unwrap()
}

fn new_topic(name: &str, partitions: i32, rf: i16) -> NewTopic {
    NewTopic {
        name: name.into(),
        num_partitions: partitions,
        replication_factor: rf,
        assignments: vec![],
        configs: vec![],
    }
}

fn leaders_per_broker(topic: &TopicInfo) -> BTreeMap<i32, usize> {
    let mut counts = BTreeMap::new();
    for partition in &topic.partitions {
        *counts.entry(partition.leader).or_insert(0) += 1;
    }
    counts
}

fn shutdown_all(nodes: Vec<ControlHandle>) {
    let threads: Vec<_> = nodes
        .into_iter()
        .map(|n| std::thread::spawn(move || block_on(n.shutdown())))
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn topic_created_through_a_non_controller_is_identical_everywhere() {
    let cluster = Cluster::new(3);
    let nodes = cluster.start_all();
    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.live_brokers().count() == 3 && image.controller_id.is_some()
    });
    let cluster_id = nodes[0].image().cluster_id.clone();
    assert!(nodes.iter().all(|n| n.image().cluster_id == cluster_id));
    let controllers = nodes.iter().filter(|n| n.is_controller()).count();
    assert_eq!(controllers, 1);

    let via = non_controller(&nodes);
    let created = block_on(via.create_topics(vec![new_topic("six", 6, 3)], false));
    let created = created[0].as_ref().unwrap().clone();
    // The answer comes once the controller applied it; every node has it within 2 s.
    wait_for(&nodes, Duration::from_secs(2), |image| {
        image.topics.contains_key("six")
    });
    for image in converged(&nodes) {
        assert_eq!(*image.topics["six"], *created);
    }
    assert!(created
        .partitions
        .iter()
        .all(|p| p.replicas.len() == 3 && p.isr.len() == 3));
    assert_eq!(
        leaders_per_broker(&created)
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![2, 2, 2]
    );

    // A partition leader shrinks its ISR through a broker that is not the controller.
    let p0 = created.partitions[0].clone();
    let leader_node = nodes.iter().find(|n| n.node_id() == p0.leader).unwrap();
    block_on(leader_node.alter_partition_isr(
        "six".into(),
        0,
        p0.leader_epoch,
        vec![p0.leader],
        None,
    ))
    .unwrap();
    let stale = block_on(leader_node.alter_partition_isr(
        "six".into(),
        0,
        p0.leader_epoch + 1,
        vec![p0.leader],
        None,
    ));
    assert_eq!(stale.unwrap_err().code().code(), 74);
    wait_for(&nodes, Duration::from_secs(2), |image| {
        image.topics["six"].partitions[0].isr == vec![p0.leader]
    });

    // Only the controller proposed anything (registrations included).
    for node in &nodes {
        assert_eq!(
            node.proposals_made() > 0,
            node.is_controller(),
            "node {}",
            node.node_id()
        );
    }

    let twelve = block_on(via.create_topics(vec![new_topic("twelve", 12, 3)], false));
    let twelve = twelve[0].as_ref().unwrap();
    assert_eq!(
        leaders_per_broker(twelve)
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![4, 4, 4]
    );

    // Errors come back from the controller with their codes; validate_only creates nothing.
    let again =
        block_on(via.create_topics(vec![new_topic("six", 1, 1), new_topic("big", 1, 4)], false));
    assert_eq!(again[0].as_ref().unwrap_err().code().code(), 36);
    assert_eq!(again[1].as_ref().unwrap_err().code().code(), 38);
    let dry = block_on(via.create_topics(vec![new_topic("dry", 3, 2)], true));
    assert!(dry[0].is_ok());
    assert!(block_on(via.delete_topics(vec!["twelve".into()]))[0].is_ok());
    block_on(via.alter_topic_configs(
        "six".into(),
        vec![ConfigOp::Set("retention.ms".into(), "1000".into())],
        false,
    ))
    .unwrap();
    assert!(block_on(via.create_partitions(vec![("six".into(), 9)], false))[0].is_ok());
    wait_for(&nodes, Duration::from_secs(2), |image| {
        !image.topics.contains_key("twelve")
            && !image.topics.contains_key("dry")
            && image.topics["six"].partitions.len() == 9
            && image.topics["six"].configs.contains_key("retention.ms")
    });
    shutdown_all(nodes);
}

#[test]
fn controlled_shutdown_of_the_controller_moves_everything_and_restart_keeps_metadata() {
    let cluster = Cluster::new(3);
    let mut nodes = cluster.start_all();
    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.live_brokers().count() == 3
    });
    let created = block_on(nodes[0].create_topics(vec![new_topic("t", 6, 3)], false));
    let before = created[0].as_ref().unwrap().clone();

    let old = controller(&nodes).node_id();
    let position = nodes.iter().position(|n| n.node_id() == old).unwrap();
    let leaving = nodes.remove(position);
    block_on(leaving.shutdown());
    drop(leaving);

    // A new controller among the others; the old one is fenced and leads nothing; each of its
    // partitions moved to an in-sync replica with the epoch up by exactly one.
    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.controller_id.is_some_and(|c| c != old) && image.brokers[&old].fenced
    });
    let after = nodes[0].image().topics["t"].clone();
    for (p, q) in before.partitions.iter().zip(&after.partitions) {
        assert_ne!(q.leader, old);
        if p.leader == old {
            assert_eq!(q.leader_epoch, p.leader_epoch + 1);
            assert!(p.isr.contains(&q.leader));
        } else {
            assert_eq!(q.leader_epoch, p.leader_epoch);
        }
    }
    // Topic creation keeps working with two of three.
    let more = block_on(nodes[1].create_topics(vec![new_topic("more", 2, 2)], false));
    assert!(more[0].is_ok(), "{more:?}");
    let image_before_restart = nodes[0].image();
    shutdown_all(nodes);

    // Restart all three at once: the metadata comes back identical on every broker.
    let nodes = cluster.start_all();
    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.live_brokers().count() == 3
    });
    wait_for(&nodes, Duration::from_secs(5), |image| {
        image.topics.len() == 2 && image.cluster_id == image_before_restart.cluster_id
    });
    let images = converged(&nodes);
    for image in &images {
        assert_eq!(image.cluster_id, image_before_restart.cluster_id);
        for (name, topic) in &image_before_restart.topics {
            assert_eq!(image.topics[name].id, topic.id);
            assert_eq!(image.topics[name].configs, topic.configs);
            let replicas = |t: &Arc<TopicInfo>| {
                t.partitions
                    .iter()
                    .map(|p| p.replicas.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(replicas(&image.topics[name]), replicas(topic));
        }
    }
    shutdown_all(nodes);
}

#[test]
fn racing_auto_creates_on_every_broker_create_the_topic_once() {
    let cluster = Cluster::new(3);
    let nodes = cluster.start_all();
    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.live_brokers().count() == 3
    });
    let threads: Vec<_> = nodes
        .iter()
        .flat_map(|n| [n.clone(), n.clone()])
        .map(|n| {
            std::thread::spawn(move || {
                block_on(n.create_topics(vec![NewTopic::with_defaults("auto")], false))
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().unwrap().remove(0))
        .collect();
    let created: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(created.len(), 1, "{results:?}");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| e.code().code() == 36));
    let images = converged(&nodes);
    assert_eq!(images[0].topics["auto"].id, created[0].id);
    shutdown_all(nodes);
}

#[test]
fn five_nodes_spread_leaders_evenly() {
    let cluster = Cluster::new(5);
    let nodes = cluster.start_all();
    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.live_brokers().count() == 5
    });
    let created =
        block_on(non_controller(&nodes).create_topics(vec![new_topic("five", 10, 3)], false));
    let topic = created[0].as_ref().unwrap();
    assert_eq!(
        leaders_per_broker(topic)
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![2; 5]
    );
    wait_for(&nodes, Duration::from_secs(2), |image| {
        image.topics.get("five") == Some(topic)
    });
    shutdown_all(nodes);
}

#[test]
fn a_killed_broker_is_fenced_after_its_session_and_its_partitions_move() {
    let cluster = Cluster::new(3);
    let mut nodes = cluster.start_all();
    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.live_brokers().count() == 3
    });
    let created = block_on(nodes[0].create_topics(vec![new_topic("t", 6, 3)], false));
    let before = created[0].as_ref().unwrap().clone();
    let victim = non_controller(&nodes).node_id();
    let position = nodes.iter().position(|n| n.node_id() == victim).unwrap();
    let killed_at = Instant::now();
    nodes.remove(position).crash();

    wait_for(&nodes, Duration::from_secs(15), |image| {
        image.brokers[&victim].fenced
    });
    assert!(
        killed_at.elapsed() >= Duration::from_secs(8),
        "fenced before the session expired"
    );
    let after = converged(&nodes)[0].topics["t"].clone();
    for (p, q) in before.partitions.iter().zip(&after.partitions) {
        assert!(!q.isr.contains(&victim));
        if p.leader == victim {
            assert!(p.isr.contains(&q.leader) && q.leader != victim);
            assert_eq!(q.leader_epoch, p.leader_epoch + 1);
        } else {
            assert_eq!((q.leader, q.leader_epoch), (p.leader, p.leader_epoch));
        }
    }

    // It comes back with a new incarnation and is registered and unfenced again.
    nodes.extend(cluster.start(&[position]));
    wait_for(&nodes, Duration::from_secs(5), |image| {
        image.live_brokers().count() == 3
    });
    let image = converged(&nodes).remove(0);

    // Once the leaders report it in sync again (replication's AlterPartition), the controller
    // gives it back the partitions it is the preferred leader of.
    for partition in &image.topics["t"].partitions {
        if partition.replicas[0] == victim {
            assert!(!partition.isr.contains(&victim));
            let leader = nodes
                .iter()
                .find(|n| n.node_id() == partition.leader)
                .unwrap();
            let mut isr = partition.isr.clone();
            isr.push(victim);
            block_on(leader.alter_partition_isr(
                "t".into(),
                partition.index,
                partition.leader_epoch,
                isr,
                None,
            ))
            .unwrap();
        }
    }
    wait_for(&nodes, Duration::from_secs(5), |image| {
        image.topics["t"]
            .partitions
            .iter()
            .all(|p| p.leader == p.replicas[0])
    });
    let restored = converged(&nodes).remove(0);
    assert_eq!(
        leaders_per_broker(&restored.topics["t"])
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    shutdown_all(nodes);
}

#[test]
fn a_killed_controller_is_replaced_and_loses_no_metadata() {
    let cluster = Cluster::new(3);
    let mut nodes = cluster.start_all();
    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.live_brokers().count() == 3
    });
    let first = block_on(nodes[0].create_topics(vec![new_topic("before", 3, 3)], false));
    let first = first[0].as_ref().unwrap().clone();
    let old = controller(&nodes).node_id();
    let position = nodes.iter().position(|n| n.node_id() == old).unwrap();
    nodes.remove(position).crash();

    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.controller_id.is_some_and(|c| c != old)
    });
    let second = block_on(nodes[0].create_topics(vec![new_topic("after", 2, 2)], false));
    assert!(second[0].is_ok(), "{second:?}");
    assert_eq!(nodes[1].image().topics["before"].id, first.id);

    nodes.extend(cluster.start(&[position]));
    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.live_brokers().count() == 3 && image.topics.contains_key("after")
    });
    let images = converged(&nodes);
    assert_eq!(images[0].topics["before"].id, first.id);
    assert_eq!(images[0].topics["before"].partitions.len(), 3);
    shutdown_all(nodes);
}

#[test]
fn a_lagging_broker_catches_up_from_a_snapshot() {
    let cluster = Cluster::new(3);
    let mut nodes = cluster.start_all();
    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.live_brokers().count() == 3
    });
    let lagging = non_controller(&nodes).node_id();
    let position = nodes.iter().position(|n| n.node_id() == lagging).unwrap();
    block_on(nodes.remove(position).shutdown());

    // Enough changes for the others to compact their logs past what the stopped one has.
    let count = crate::control::node::SNAPSHOT_EVERY as usize + 20;
    let topics = (0..count)
        .map(|i| new_topic(&format!("t{i}"), 1, 1))
        .collect();
    let results = block_on(nodes[0].create_topics(topics, false));
    assert!(results.iter().all(Result::is_ok));
    let compacted = || {
        cluster
            .dirs
            .iter()
            .filter(|d| d.path().join("meta/snapshot").exists())
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while compacted() < 2 {
        assert!(
            Instant::now() < deadline,
            "the live brokers did not compact"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    nodes.extend(cluster.start(&[position]));
    let images = converged(&nodes);
    assert_eq!(images[0].topics.len(), count);
    // The returning broker installed the leader's snapshot (its log alone could not catch up).
    assert_eq!(compacted(), 3);
    shutdown_all(nodes);
}

#[test]
fn a_node_restarted_with_other_peers_is_refused() {
    let cluster = Cluster::new(1);
    let mut config = cluster.configs[0].clone();
    config.peers.clear();
    block_on(start(config.clone()).unwrap().shutdown());
    config.peers = vec![(1, config.rpc.unwrap()), (2, free_port())];
    let error = start(config).err().unwrap();
    assert!(
        matches!(error, ControlError::InvalidRequest(ref m) if m.contains("same peers")),
        "{error:?}"
    );
}

#[test]
fn peers_must_include_this_node() {
    let mut config = Cluster::new(3).configs[0].clone();
    config.peers.retain(|(id, _)| *id != 1);
    assert!(matches!(
        start(config),
        Err(ControlError::InvalidRequest(_))
    ));
    let _ = &Cluster::new(1).dirs;
}

/// Producer id blocks asked for through every node (forwarded to the controller by the others),
/// with the controller killed and restarted in between, never overlap.
#[test]
fn producer_id_blocks_never_overlap_across_a_controller_crash() {
    let cluster = Cluster::new(3);
    let mut nodes = cluster.start_all();
    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.live_brokers().count() == 3
    });
    let mut blocks = Vec::new();
    let mut allocate_everywhere = |nodes: &[ControlHandle]| {
        for node in nodes {
            for _ in 0..3 {
                blocks.push(block_on(node.allocate_producer_ids()).unwrap());
            }
        }
    };
    allocate_everywhere(&nodes);
    let old = controller(&nodes).node_id();
    let position = nodes.iter().position(|n| n.node_id() == old).unwrap();
    nodes.remove(position).crash();
    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.controller_id.is_some_and(|c| c != old)
    });
    allocate_everywhere(&nodes);
    nodes.extend(cluster.start(&[position]));
    wait_for(&nodes, Duration::from_secs(10), |image| {
        image.live_brokers().count() == 3
    });
    allocate_everywhere(&nodes);
    blocks.sort_by_key(|b| b.first);
    for pair in blocks.windows(2) {
        assert!(pair[0].end() <= pair[1].first, "overlap: {pair:?}");
    }
    let images = converged(&nodes);
    assert!(images
        .iter()
        .all(|i| i.next_producer_id >= blocks.last().unwrap().end()));
    shutdown_all(nodes);
}
