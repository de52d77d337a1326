//! Turning off glommio's I/O completion polling for a data directory's device.
//!
//! glommio 0.9 sends O_DIRECT reads and writes to its poll ring (IOPOLL) whenever an IOPOLL read on the
//! device succeeds, and the kernel accepts one even on devices without poll queues (virtio-blk here).
//! An executor then cannot sleep while any such I/O is in flight: it spins on the ring. On dedicated
//! cores that is the point of thread-per-core; on a machine whose CPUs are shared (several brokers,
//! `--overprovisioned`) the spinning shard takes the CPU from the threads it waits for.
//!
//! glommio has no switch for it, but it probes once per device and thread and caches the answer, and a
//! probe whose read fails for any reason caches "not pollable". Opening a write-only DMA file first
//! makes that probe's read fail (EBADF), so every later DMA file on the device uses the interrupt-driven
//! main ring. glommio logs the failed probe at error level through the `log` crate; it is expected.

use std::path::Path;

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
