//! Whether a shard busy-polls for O_DIRECT completions, and turning that off.
//!
//! glommio 0.9 sends O_DIRECT reads and writes to its poll ring (IOPOLL) whenever an IOPOLL read on the
//! device succeeds, and the kernel accepts one even on devices without poll queues (virtio-blk, NVMe
//! without `poll_queues`): completions then still arrive by interrupt, but the executor cannot sleep
//! while any such I/O is in flight and spins. That costs a CPU, and worse, a completion that needs
//! kernel work on that CPU first (an O_DSYNC write's journal commit runs from a workqueue) waits until
//! the spinning thread is preempted: a scheduler tick, 4 ms, measured on 16 KiB appends
//! (bench/RESULTS.md, session 3). Polling pays only where the device polls its own queues
//! (`queue/io_poll` is 1) and the shard has its core to itself.
//!
//! glommio has no switch for it, but it probes once per device and thread and caches the answer, and a
//! probe whose read fails for any reason caches "not pollable". Opening a write-only DMA file first
//! makes that probe's read fail (EBADF), so every later DMA file on the device uses the interrupt-driven
//! main ring. glommio logs the failed probe at error level through the `log` crate; it is expected.

use std::path::Path;

/// Whether the block device holding `dir` polls its own completion queues (sysfs `queue/io_poll`; a
/// partition's is its disk's). False when it cannot be told (not a block device, no sysfs).
pub fn device_polls(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let Ok(node) = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")) else {
        return false;
    };
    let disk = if node.join("partition").exists() {
        node.parent().map(Path::to_path_buf).unwrap_or(node)
    } else {
        node
    };
    std::fs::read_to_string(disk.join("queue/io_poll")).is_ok_and(|v| v.trim() == "1")
}

/// Decides for this executor thread and `dir`'s device: polling stays on only where `allowed` (the
/// shard has its core to itself) and the device polls its queues; otherwise it is turned off. Returns
/// whether it polls. Must run before the thread opens any DMA file on that device.
pub async fn choose(dir: &Path, allowed: bool) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    if allowed && device_polls(dir) {
        return Ok(true);
    }
    disable_io_polling(dir).await?;
    Ok(false)
}

/// Makes this executor thread use interrupt-driven completions for O_DIRECT files on `dir`'s device.
/// Must run before the thread opens any DMA file on that device.
pub async fn disable_io_polling(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(
        ".chronik-iopoll-off-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = glommio::io::OpenOptions::new()
        .write(true)
        .create(true)
        .dma_open(&path)
        .await;
    let removed = std::fs::remove_file(&path);
    file?.close().await?;
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_polls_reads_sysfs_without_failing() {
        // On this project's machines the disk has no poll queues; elsewhere either answer is right.
        let _ = device_polls(Path::new(env!("CARGO_MANIFEST_DIR")));
        assert!(!device_polls(Path::new("/nonexistent/dir")));
        // /proc is not on a block device.
        assert!(!device_polls(Path::new("/proc")));
    }

    /// After `disable_io_polling`, DMA writes on the directory's device complete through the main ring,
    /// never the poll ring (with polling left on, which ring is used depends on the device).
    #[test]
    fn dma_writes_go_to_the_main_ring() {
        // Not tmpfs: O_DIRECT needs a real filesystem.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().to_path_buf();
        let (main, poll) = glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(move || async move {
                disable_io_polling(&path).await.unwrap();
                // Read-write, as the log opens segments (a write-only open would itself fail the probe).
                let file = glommio::io::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .dma_open(path.join("f"))
                    .await
                    .unwrap();
                let before = glommio::executor().io_stats();
                for i in 0..4u64 {
                    let mut buf = file.alloc_dma_buffer(4096);
                    buf.as_bytes_mut().fill(7);
                    file.write_at(buf, i * 4096).await.unwrap();
                }
                let after = glommio::executor().io_stats();
                file.close().await.unwrap();
                (
                    after.main_ring.file_writes().0 - before.main_ring.file_writes().0,
                    after.poll_ring.file_writes().0 - before.poll_ring.file_writes().0,
                )
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(poll, 0, "a write went through the poll ring");
        assert_eq!(main, 4);
        // The probe file is gone.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }
}
