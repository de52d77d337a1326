//! Partition directories that no topic in the metadata claims any more.
//!
//! A crash between a topic's deletion (committed) and the removal of its
//! directories leaves them behind; a topic created later under the same name
//! must not pick up that old data. At start-up, before any log is opened,
//! such directories are renamed aside (not deleted: if the metadata itself
//! were lost, the data stays recoverable) with a warning.

use std::path::Path;

use tracing::warn;

use crate::control::MetadataImage;

/// Suffix of a directory set aside.
const ORPHAN_SUFFIX: &str = ".orphaned";

/// Renames every `<topic>-<partition>` directory under `data_dir` whose topic
/// or partition is not in `image`. Returns how many were set aside.
pub fn set_aside(data_dir: &Path, image: &MetadataImage) -> usize {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return 0;
    };
    let mut moved = 0;
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some((topic, partition)) = parse_partition_dir(name) else {
            continue;
        };
        let claimed = image
            .topics
            .get(topic)
            .is_some_and(|t| t.partitions.iter().any(|p| p.index == partition));
        if claimed {
            continue;
        }
        let millis = crate::replication::clock::wall_ms();
        let target = data_dir.join(format!("{name}{ORPHAN_SUFFIX}-{millis}"));
        match std::fs::rename(entry.path(), &target) {
            Ok(()) => {
                moved += 1;
                warn!(
                    "partition directory {name} belongs to no topic in the metadata; moved to {} (remove it once you are sure it is not needed)",
                    target.display()
                );
            }
            Err(e) => warn!("cannot set aside orphaned partition directory {name}: {e}"),
        }
    }
    moved
}

/// `orders-3` -> ("orders", 3); anything else (the control plane's `meta`,
/// set-aside directories) -> None.
fn parse_partition_dir(name: &str) -> Option<(&str, i32)> {
    if name.contains(ORPHAN_SUFFIX) {
        return None;
    }
    let (topic, partition) = name.rsplit_once('-')?;
    if topic.is_empty() || partition.is_empty() || !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((topic, partition.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{PartitionInfo, TopicInfo};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[test]
    fn parses_partition_directories() {
        assert_eq!(parse_partition_dir("orders-3"), Some(("orders", 3)));
        assert_eq!(
            parse_partition_dir("my-topic.v2-10"),
            Some(("my-topic.v2", 10))
        );
        assert_eq!(parse_partition_dir("meta"), None);
        assert_eq!(parse_partition_dir("x-"), None);
        assert_eq!(parse_partition_dir("-1"), None);
        assert_eq!(parse_partition_dir("a-1.orphaned-123"), None);
    }

    #[test]
    fn sets_aside_only_unclaimed_directories() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["kept-0", "kept-1", "gone-0", "meta"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let mut image = MetadataImage::default();
        image.topics.insert(
            "kept".into(),
            Arc::new(TopicInfo {
                id: uuid::Uuid::from_u128(1),
                name: "kept".into(),
                configs: BTreeMap::new(),
                partitions: vec![PartitionInfo {
                    index: 0,
                    replicas: vec![1],
                    leader: 1,
                    leader_epoch: 0,
                    isr: vec![1],
                }],
            }),
        );
        assert_eq!(set_aside(dir.path(), &image), 2);
        assert!(dir.path().join("kept-0").exists());
        assert!(dir.path().join("meta").exists());
        assert!(!dir.path().join("kept-1").exists());
        assert!(!dir.path().join("gone-0").exists());
        assert_eq!(set_aside(dir.path(), &image), 0);
    }
}
