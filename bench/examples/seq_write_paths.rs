//! Experiment: sequential 1 MiB O_DIRECT write bandwidth, blocking pwrite versus glommio DmaFile at
//! several queue depths, rounds interleaved so machine drift hits every path alike.
//! `cargo run --release -p chronik-bench --example seq_write_paths -- DIR [MIB_PER_ROUND] [ROUNDS]`
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("DIR"));
    let mib: u64 = args.next().map_or(256, |s| s.parse().expect("MIB"));
    let rounds: usize = args.next().map_or(3, |s| s.parse().expect("ROUNDS"));
    let h = glommio::LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(move || async move {
            let size = mib << 20;
            let layout = std::alloc::Layout::from_size_align(1 << 20, 4096).expect("layout");
            // SAFETY: non-zero size; freed at exit.
            let rb = unsafe {
                std::slice::from_raw_parts_mut(std::alloc::alloc_zeroed(layout), 1 << 20)
            };
            rb.fill(7);
            let mut results: Vec<(String, Vec<f64>)> = Vec::new();
            for round in 0..rounds {
                let mut row = 0;
                let mut put = |name: String, v: f64| {
                    if results.len() <= row {
                        results.push((name, Vec::new()));
                    }
                    results[row].1.push(v);
                    row += 1;
                };
                // blocking
                let p = dir.join(format!("sw-raw-{round}"));
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&p)
                    .expect("open");
                // SAFETY: plain syscall.
                unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as i64) };
                f.sync_all().expect("sync");
                let t = Instant::now();
                for i in 0..mib {
                    f.write_all_at(rb, i << 20).expect("write");
                }
                // SAFETY: plain syscall.
                unsafe { libc::fdatasync(f.as_raw_fd()) };
                put(
                    "blocking QD1".into(),
                    mib as f64 / t.elapsed().as_secs_f64(),
                );
                drop(f);
                let _ = std::fs::remove_file(&p);
                for qd in [1usize, 4, 8, 16] {
                    let p = dir.join(format!("sw-dma-{round}-{qd}"));
                    let f = Rc::new(
                        glommio::io::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create(true)
                            .truncate(true)
                            .dma_open(&p)
                            .await
                            .expect("open"),
                    );
                    f.pre_allocate(size, false).await.expect("prealloc");
                    f.fdatasync().await.expect("sync");
                    let t = Instant::now();
                    let mut inflight = std::collections::VecDeque::new();
                    for i in 0..mib {
                        let mut b = f.alloc_dma_buffer(1 << 20);
                        b.as_bytes_mut().copy_from_slice(rb);
                        let f2 = f.clone();
                        inflight.push_back(glommio::spawn_local(async move {
                            f2.write_at(b, i << 20).await.expect("write")
                        }));
                        if inflight.len() >= qd {
                            if let Some(t) = inflight.pop_front() {
                                t.await;
                            }
                        }
                    }
                    while let Some(t) = inflight.pop_front() {
                        t.await;
                    }
                    f.fdatasync().await.expect("sync");
                    put(
                        format!("glommio QD{qd} (with copy)"),
                        mib as f64 / t.elapsed().as_secs_f64(),
                    );
                    let _ = std::fs::remove_file(&p);
                }
            }
            for (name, v) in results {
                let s: Vec<String> = v.iter().map(|x| format!("{x:7.0}")).collect();
                println!("{name:26} MiB/s: {}", s.join(" "));
            }
        })
        .expect("executor");
    h.join().expect("join");
}
