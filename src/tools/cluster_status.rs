//! `chronik cluster status`: brokers, controller, and per topic the partition
//! leaders, leader epochs, replicas and ISR, as one broker's Metadata and
//! DescribeCluster answers give them. Speaks plain Kafka, so it describes any
//! Kafka-compatible cluster.

use std::time::Duration;

use anyhow::{bail, Result};
use kafka_protocol::messages::{
    ApiKey, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
};
use serde::Serialize;

use super::kafka_client::KafkaClient;

/// `chronik cluster status` flags.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Any broker of the cluster, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Print JSON (for scripts) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the broker's answers.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

/// The cluster as one broker describes it.
#[derive(Debug, Serialize, PartialEq)]
pub struct ClusterStatus {
    pub cluster_id: Option<String>,
    /// -1: no controller known.
    pub controller_id: i32,
    pub brokers: Vec<BrokerStatus>,
    pub topics: Vec<TopicStatus>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct BrokerStatus {
    pub id: i32,
    pub endpoint: String,
    pub rack: Option<String>,
    /// None when the broker cannot say (no DescribeCluster v2).
    pub fenced: Option<bool>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct TopicStatus {
    pub name: String,
    pub id: String,
    /// Kafka error code of the topic, 0 when fine.
    pub error_code: i16,
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct PartitionStatus {
    pub partition: i32,
    /// -1: offline.
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline_replicas: Vec<i32>,
}

/// Runs the command; returns the process exit code.
pub fn main(args: &StatusArgs) -> i32 {
    match fetch(&args.bootstrap, Duration::from_secs(args.timeout.max(1))) {
        Ok(status) => {
            if args.json {
                match serde_json::to_string_pretty(&status) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("chronik cluster status: {e}");
                        return 1;
                    }
                }
            } else {
                print!("{}", render(&status));
            }
            0
        }
        Err(e) => {
            eprintln!("chronik cluster status: {e:#}");
            1
        }
    }
}

/// Asks `bootstrap` for Metadata (every topic) and DescribeCluster.
pub fn fetch(bootstrap: &str, timeout: Duration) -> Result<ClusterStatus> {
    let mut client = KafkaClient::connect(bootstrap, timeout)?;
    let Some(version) = client.version(ApiKey::Metadata, 1, 12) else {
        bail!("{bootstrap} serves no Metadata version from 1 to 12");
    };
    let mut request = MetadataRequest::default();
    request.topics = None;
    let metadata: MetadataResponse = client.call(ApiKey::Metadata, version, &request)?;
    let described = match client.version(ApiKey::DescribeCluster, 0, 2) {
        Some(version) => {
            let mut request = DescribeClusterRequest::default();
            if version >= 1 {
                request.endpoint_type = 1;
            }
            request.include_fenced_brokers = version >= 2;
            let response: DescribeClusterResponse =
                client.call(ApiKey::DescribeCluster, version, &request)?;
            if response.error_code != 0 {
                bail!(
                    "DescribeCluster failed with error code {}",
                    response.error_code
                );
            }
            Some((version, response))
        }
        None => None,
    };
    Ok(build(metadata, described))
}

fn build(
    metadata: MetadataResponse,
    described: Option<(i16, DescribeClusterResponse)>,
) -> ClusterStatus {
    let mut status = ClusterStatus {
        cluster_id: metadata.cluster_id.map(|c| c.to_string()),
        controller_id: metadata.controller_id.0,
        brokers: Vec::new(),
        topics: Vec::new(),
    };
    match described {
        Some((version, response)) => {
            status.controller_id = response.controller_id.0;
            status.cluster_id = Some(response.cluster_id.to_string());
            status.brokers = response
                .brokers
                .into_iter()
                .map(|b| BrokerStatus {
                    id: b.broker_id.0,
                    endpoint: format!("{}:{}", b.host, b.port),
                    rack: b.rack.map(|r| r.to_string()),
                    fenced: (version >= 2).then_some(b.is_fenced),
                })
                .collect();
        }
        None => {
            status.brokers = metadata
                .brokers
                .into_iter()
                .map(|b| BrokerStatus {
                    id: b.node_id.0,
                    endpoint: format!("{}:{}", b.host, b.port),
                    rack: b.rack.map(|r| r.to_string()),
                    fenced: None,
                })
                .collect();
        }
    }
    status.brokers.sort_by_key(|b| b.id);
    status.topics = metadata
        .topics
        .into_iter()
        .map(|t| {
            let mut partitions: Vec<PartitionStatus> = t
                .partitions
                .into_iter()
                .map(|p| PartitionStatus {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|r| r.0).collect(),
                    isr: p.isr_nodes.iter().map(|r| r.0).collect(),
                    offline_replicas: p.offline_replicas.iter().map(|r| r.0).collect(),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            TopicStatus {
                name: t.name.map(|n| n.0.to_string()).unwrap_or_default(),
                id: t.topic_id.to_string(),
                error_code: t.error_code,
                partitions,
            }
        })
        .collect();
    status.topics.sort_by(|a, b| a.name.cmp(&b.name));
    status
}

fn ids(list: &[i32]) -> String {
    let parts: Vec<String> = list.iter().map(i32::to_string).collect();
    format!("[{}]", parts.join(","))
}

/// The human-readable report.
pub fn render(status: &ClusterStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let controller = match status.controller_id {
        id if id >= 0 => id.to_string(),
        _ => "none".to_string(),
    };
    let _ = writeln!(
        out,
        "cluster {}  controller {}",
        status.cluster_id.as_deref().unwrap_or("?"),
        controller
    );
    let _ = writeln!(out, "\nBROKER  ENDPOINT                 RACK      FENCED");
    for b in &status.brokers {
        let fenced = match b.fenced {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let marker = if b.id == status.controller_id {
            " (controller)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{:<7} {:<24} {:<9} {}{}",
            b.id,
            b.endpoint,
            b.rack.as_deref().unwrap_or("-"),
            fenced,
            marker
        );
    }
    for t in &status.topics {
        let _ = writeln!(
            out,
            "\ntopic {} (id {}, {} partitions){}",
            t.name,
            t.id,
            t.partitions.len(),
            if t.error_code != 0 {
                format!(" error code {}", t.error_code)
            } else {
                String::new()
            }
        );
        let _ = writeln!(out, "  PARTITION  LEADER  EPOCH  REPLICAS      ISR");
        for p in &t.partitions {
            let leader = if p.leader >= 0 {
                p.leader.to_string()
            } else {
                "offline".to_string()
            };
            let _ = writeln!(
                out,
                "  {:<10} {:<7} {:<6} {:<13} {}",
                p.partition,
                leader,
                p.leader_epoch,
                ids(&p.replicas),
                ids(&p.isr)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_brokers_controller_and_partitions() {
        let status = ClusterStatus {
            cluster_id: Some("abc".into()),
            controller_id: 2,
            brokers: vec![
                BrokerStatus {
                    id: 1,
                    endpoint: "127.0.0.1:9092".into(),
                    rack: None,
                    fenced: Some(true),
                },
                BrokerStatus {
                    id: 2,
                    endpoint: "127.0.0.1:9093".into(),
                    rack: Some("r1".into()),
                    fenced: Some(false),
                },
            ],
            topics: vec![TopicStatus {
                name: "orders".into(),
                id: "00000000-0000-0000-0000-000000000001".into(),
                error_code: 0,
                partitions: vec![PartitionStatus {
                    partition: 0,
                    leader: -1,
                    leader_epoch: 3,
                    replicas: vec![1, 2],
                    isr: vec![1],
                    offline_replicas: vec![1],
                }],
            }],
        };
        let text = render(&status);
        assert!(text.contains("cluster abc  controller 2"), "{text}");
        assert!(text.contains("127.0.0.1:9092"), "{text}");
        assert!(text.contains("r1        no (controller)"), "{text}");
        assert!(text.contains("offline"), "{text}");
        assert!(text.contains("[1,2]"), "{text}");
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["controller_id"], 2);
        assert_eq!(json["topics"][0]["partitions"][0]["isr"][0], 1);
    }
}
