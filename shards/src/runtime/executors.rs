//! Starting the shard executors: one glommio executor per CPU, pinned.

use std::future::Future;

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

/// How the shard executors are built.
#[derive(Clone, Debug)]
pub struct ShardSpec {
    /// CPU of each shard; shard `i` runs pinned on `cpus[i]` (with `pin`).
    pub cpus: Vec<usize>,
    /// Pin each shard to its CPU. Off when several brokers share the CPUs: the kernel must then be
    /// free to move a shard (and the io_uring worker that inherits its affinity) to an idle CPU.
    pub pin: bool,
    /// io_uring buffer memory per executor (see `log::SHARD_IO_MEMORY`). It is registered with the
    /// kernel only where the memlock limit or CAP_IPC_LOCK allows; otherwise used unregistered.
    pub io_memory: usize,
    /// Thread name prefix (`<prefix>-<shard>`).
    pub name: String,
}

/// Spawns one pinned executor per entry of `spec.cpus`, running
/// `shard_main(shard_index)` on it. Never spins before parking: shards flush,
/// and the io_uring worker doing the fdatasync runs on the same CPU.
pub fn spawn_shards<G, F>(
    spec: &ShardSpec,
    shard_main: G,
) -> std::io::Result<Vec<ExecutorJoinHandle<F::Output>>>
where
    G: Fn(usize) -> F + Clone + Send + 'static,
    F: Future + 'static,
    F::Output: Send + 'static,
{
    let mut handles = Vec::with_capacity(spec.cpus.len());
    for (shard, cpu) in spec.cpus.iter().copied().enumerate() {
        let shard_main = shard_main.clone();
        let placement = if spec.pin {
            Placement::Fixed(cpu)
        } else {
            Placement::Unbound
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("{}-{shard}", spec.name))
            .io_memory(spec.io_memory)
            .spawn(move || shard_main(shard))
            .map_err(|e| {
                std::io::Error::other(format!("starting shard {shard} on cpu {cpu}: {e}"))
            })?;
        handles.push(handle);
    }
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_affinity() -> Vec<usize> {
        super::super::available_cpus()
    }

    fn spec(pin: bool) -> ShardSpec {
        ShardSpec {
            cpus: super::super::available_cpus(),
            pin,
            io_memory: 1 << 20,
            name: "test-shard".into(),
        }
    }

    #[test]
    fn each_shard_runs_once_on_its_cpu() {
        let spec = spec(true);
        let cpus = spec.cpus.clone();
        let handles = spawn_shards(&spec, |shard| async move { (shard, own_affinity()) }).unwrap();
        let shards: Vec<(usize, Vec<usize>)> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let expected: Vec<(usize, Vec<usize>)> = cpus
            .iter()
            .enumerate()
            .map(|(i, c)| (i, vec![*c]))
            .collect();
        assert_eq!(shards, expected);
    }

    #[test]
    fn unpinned_shards_may_run_on_every_cpu() {
        let spec = spec(false);
        let cpus = spec.cpus.clone();
        let handles = spawn_shards(&spec, |_| async move { own_affinity() }).unwrap();
        for h in handles {
            assert_eq!(h.join().unwrap(), cpus);
        }
    }
}
