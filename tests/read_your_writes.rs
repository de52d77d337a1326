//! Issue 14 "Also": CreateTopics sent to a broker that is not the controller answers only once that
//! broker's own image has the topic, so a Metadata or Produce sent right after the answer finds it.

mod common;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use common::cluster::{create_topic, start_cluster, start_cluster_env};
use common::{batch, Client};

/// Metadata for `topic` without auto-creation (which would hide a topic not yet visible).
fn metadata_no_create(client: &mut Client, topic: &str) -> MetadataResponse {
    let mut t = MetadataRequestTopic::default();
    t.name = Some(TopicName(StrBytes::from_string(topic.to_string())));
    let mut request = MetadataRequest::default();
    request.topics = Some(vec![t]);
    request.allow_auto_topic_creation = false;
    client.call(ApiKey::Metadata, 12, &request)
}

#[test]
fn a_topic_created_through_a_follower_is_visible_there_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_cluster(tmp.path(), 3);
    create_and_use_at_once(&nodes, 20);
}

/// The same with every broker but the controller publishing its images 500 ms late
/// (`CHRONIK_FAULT_SLOW_FOLLOWER_PUBLISH_MS`): the controller's answer always arrives first, which
/// makes the race deterministic. Before the fix (79c37ea) this failed on the first topic.
#[test]
fn a_topic_created_through_a_follower_is_visible_there_even_when_its_image_is_late() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = start_cluster_env(
        tmp.path(),
        3,
        1,
        &[],
        &[("CHRONIK_FAULT_SLOW_FOLLOWER_PUBLISH_MS", "500")],
    );
    create_and_use_at_once(&nodes, 5);
}

/// Creates topics through a broker that is not the controller and uses each at once there.
fn create_and_use_at_once(nodes: &[common::cluster::Node], rounds: usize) {
    let controller = {
        let metadata = Client::connect(nodes[0].addr).metadata(&[]);
        (metadata.controller_id.0 - 1) as usize
    };
    let follower = (controller + 1) % nodes.len();
    let mut client = Client::connect(nodes[follower].addr);
    for i in 0..rounds {
        let name = format!("ryw-{i}");
        create_topic(&mut client, &name, 1, 1);
        let metadata = metadata_no_create(&mut client, &name);
        let topic = &metadata.topics[0];
        assert_eq!(
            topic.error_code,
            0,
            "topic {name} created through broker {} but not in its metadata: {metadata:?}",
            follower + 1
        );
        // Produce v9 names the topic; it must not be UNKNOWN_TOPIC_OR_PARTITION either.
        let name2 = format!("ryw-produce-{i}");
        create_topic(&mut client, &name2, 1, 1);
        let got = client.produce(&name2, 1, &[(0, batch(&[b"v"], 1))]);
        assert_ne!(
            got[0].1, 3,
            "produce to {name2} right after creating it: {got:?}"
        );
    }
}
