//! Experiment behind the log's O_DSYNC group commit: 4 KiB durable-write latency through blocking
//! pwrite+fdatasync, glommio write+fdatasync, a glommio O_DSYNC write, and glommio write + a blocking
//! fdatasync, interleaved sample by sample. `cargo run --release -p chronik-bench --example
//! fsync_variants -- DIR [SAMPLES]` (`SAME=1` rewrites each block four times, as 1 KiB appends do;
//! `NORAW=1` leaves the blocking variant out: a blocking fdatasync on the executor thread slows the
//! io_uring variants that follow it).
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::time::Instant;

fn pct(v: &mut [u64], q: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0
}

/// A fresh DMA file with `flags`, preallocated to `len` and synced.
async fn preallocated(path: &std::path::Path, flags: i32, len: u64) -> glommio::io::DmaFile {
    let file = glommio::io::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(flags)
        .dma_open(path)
        .await
        .unwrap();
    file.pre_allocate(len, false).await.unwrap();
    file.fdatasync().await.unwrap();
    file
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    let n: usize = std::env::args().nth(2).map_or(2000, |s| s.parse().unwrap());
    let h = glommio::LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(move || async move {
            const SZ: u64 = 64 << 20;
            // raw blocking
            let p0 = dir.join("v-raw");
            let raw = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_DIRECT)
                .open(&p0)
                .unwrap();
            unsafe { libc::fallocate(raw.as_raw_fd(), 0, 0, SZ as i64) };
            raw.sync_all().unwrap();
            let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
            let rb =
                unsafe { std::slice::from_raw_parts_mut(std::alloc::alloc_zeroed(layout), 4096) };
            rb.fill(7);
            let dma = preallocated(&dir.join("v-dma"), 0, SZ).await;
            let ds = preallocated(&dir.join("v-dsync"), libc::O_DSYNC, SZ).await;
            // For write + a blocking fdatasync on glommio's blocking pool.
            let blk = preallocated(&dir.join("v-blk"), 0, SZ).await;
            let blk_fd = blk.as_raw_fd();
            let same = std::env::var("SAME").is_ok();
            let mut lat = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
            for i in 0..n as u64 {
                let pos = if same { (i / 4) * 4096 } else { i * 4096 };
                if std::env::var("NORAW").is_err() {
                    let t = Instant::now();
                    raw.write_all_at(rb, pos).unwrap();
                    unsafe { libc::fdatasync(raw.as_raw_fd()) };
                    lat[0].push(t.elapsed().as_nanos() as u64);
                } else {
                    lat[0].push(1);
                }

                let mut b = dma.alloc_dma_buffer(4096);
                b.as_bytes_mut().fill(7);
                let t = Instant::now();
                dma.write_at(b, pos).await.unwrap();
                dma.fdatasync().await.unwrap();
                lat[1].push(t.elapsed().as_nanos() as u64);

                let mut b = ds.alloc_dma_buffer(4096);
                b.as_bytes_mut().fill(7);
                let t = Instant::now();
                ds.write_at(b, pos).await.unwrap();
                lat[2].push(t.elapsed().as_nanos() as u64);

                let mut b = blk.alloc_dma_buffer(4096);
                b.as_bytes_mut().fill(7);
                let t = Instant::now();
                blk.write_at(b, pos).await.unwrap();
                glommio::executor()
                    .spawn_blocking(move || unsafe { libc::fdatasync(blk_fd) })
                    .await;
                lat[3].push(t.elapsed().as_nanos() as u64);
            }
            for (name, l) in [
                "raw blocking",
                "glommio write+fdatasync",
                "glommio O_DSYNC write",
                "glommio write+blocking fdatasync",
            ]
            .iter()
            .zip(lat.iter_mut())
            {
                println!(
                    "{name:36} p50 {:8.1} p99 {:8.1} p99.9 {:8.1}",
                    pct(l, 0.5),
                    pct(l, 0.99),
                    pct(l, 0.999)
                );
            }
            for p in [
                p0,
                dir.join("v-dma"),
                dir.join("v-dsync"),
                dir.join("v-blk"),
            ] {
                let _ = std::fs::remove_file(p);
            }
        })
        .unwrap();
    h.join().unwrap();
}
