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
