//! Which shard owns a partition, and which CPUs the shards run on.

/// The shard that owns `partition` of the topic named `topic`.
///
/// Deterministic (FNV-1a over the topic name and partition index) so every
/// shard computes the same owner without asking anyone. The name (not the
/// topic id) is hashed: a partition's directory is named after the topic, so
/// a topic deleted and re-created under the same name lands on the same
/// shard, which retires the old directory before opening the new one.
pub fn owner_shard(topic: &[u8], partition: i32, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in topic.iter().chain(partition.to_be_bytes().iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

/// The CPUs this process may run on (its affinity mask), in ascending order.
pub fn available_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for pid 0
    // (this thread) and we only read it back through the libc accessors.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|cpu| libc::CPU_ISSET(*cpu, &set))
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_in_range() {
        let id = b"orders";
        for shards in 1..8 {
            for partition in 0..64 {
                let owner = owner_shard(id, partition, shards);
                assert!(owner < shards);
                assert_eq!(owner, owner_shard(id, partition, shards));
            }
        }
        assert_eq!(owner_shard(id, 5, 1), 0);
    }

    #[test]
    fn partitions_spread_over_shards() {
        let mut counts = [0usize; 4];
        for partition in 0..400 {
            counts[owner_shard(b"events", partition, 4)] += 1;
        }
        assert!(counts.iter().all(|c| *c > 50), "uneven spread: {counts:?}");
    }

    #[test]
    fn some_cpu_is_available() {
        assert!(!available_cpus().is_empty());
    }
}
