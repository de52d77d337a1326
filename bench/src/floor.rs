//! The machine's floor: what the raw disk and the loopback network can do, measured the same way every
//! time so the log's and the broker's latencies are judged against the floor of the same run.
//!
//! All latency histograms are in nanoseconds.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

const ALIGN: usize = 4096;

/// A zeroed, 4096-aligned buffer for O_DIRECT I/O.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the buffer exclusively owns its allocation (no aliasing, no thread-bound state), like a
// `Vec<u8>`.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new(len: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(len.max(ALIGN), ALIGN)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "aligned allocation failed",
            ));
        }
        Ok(AlignedBuf { ptr, layout })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to layout.size() initialized (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// A fresh O_DIRECT file in `dir`, preallocated to `len` bytes (removed when dropped).
struct ScratchFile {
    file: File,
    path: std::path::PathBuf,
}

impl ScratchFile {
    fn create(dir: &Path, name: &str, len: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!(".chronik-floor-{}-{name}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        // SAFETY: plain fallocate on an owned fd.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        file.sync_all()?;
        Ok(ScratchFile { file, path })
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn fdatasync(f: &File) -> io::Result<()> {
    // SAFETY: plain syscall on an owned fd.
    if unsafe { libc::fdatasync(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Histogram for latencies from 1 ns to 60 s.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant histogram bounds are valid")
}

/// Raw O_DIRECT 4 KiB write + fdatasync on a preallocated file, one sample at a time, writing
/// sequentially through the file like a log does (64 MiB, reused cyclically). Taking samples one by one
/// lets a benchmark interleave them with what it compares against the floor, so both see the same
/// moments of the machine.
pub struct FsyncProbe {
    scratch: ScratchFile,
    buf: AlignedBuf,
    next: u64,
}

impl FsyncProbe {
    const BLOCKS: u64 = 16384;

    pub fn new(dir: &Path) -> io::Result<Self> {
        let scratch = ScratchFile::create(dir, "fsync", Self::BLOCKS * ALIGN as u64)?;
        let mut buf = AlignedBuf::new(ALIGN)?;
        buf.as_mut_slice().fill(0x5a);
        Ok(FsyncProbe {
            scratch,
            buf,
            next: 0,
        })
    }

    /// One write + fdatasync; its latency in ns.
    pub fn sample(&mut self) -> io::Result<u64> {
        let pos = (self.next % Self::BLOCKS) * ALIGN as u64;
        self.next += 1;
        let t = Instant::now();
        self.scratch.file.write_all_at(self.buf.as_slice(), pos)?;
        fdatasync(&self.scratch.file)?;
        Ok(t.elapsed().as_nanos() as u64)
    }
}

/// Raw O_DIRECT sequential writes of 1 MiB to a preallocated file, taken in rounds (each ending with
/// one fdatasync) so a benchmark can alternate them with what it compares, as `FsyncProbe` does for
/// latency: on a shared machine the disk's bandwidth drifts by tens of percent within seconds.
pub struct SeqWriteProbe {
    scratch: ScratchFile,
    buf: AlignedBuf,
    len: u64,
    next: u64,
}

impl SeqWriteProbe {
    const CHUNK: usize = 1 << 20;

    /// A probe writing through a file of `len` bytes (rounded up to 1 MiB), cyclically.
    pub fn new(dir: &Path, len: u64) -> io::Result<Self> {
        let len = len.div_ceil(Self::CHUNK as u64).max(1) * Self::CHUNK as u64;
        let scratch = ScratchFile::create(dir, "seq", len)?;
        let mut buf = AlignedBuf::new(Self::CHUNK)?;
        buf.as_mut_slice().fill(0xa5);
        Ok(SeqWriteProbe {
            scratch,
            buf,
            len,
            next: 0,
        })
    }

    /// Writes `bytes` (rounded up to 1 MiB) sequentially, then fdatasyncs; returns the bytes written and
    /// the time taken, the fdatasync included.
    pub fn round(&mut self, bytes: u64) -> io::Result<(u64, Duration)> {
        let chunks = bytes.div_ceil(Self::CHUNK as u64).max(1);
        let t = Instant::now();
        for _ in 0..chunks {
            let pos = self.next % self.len;
            self.next += Self::CHUNK as u64;
            self.scratch.file.write_all_at(self.buf.as_slice(), pos)?;
        }
        fdatasync(&self.scratch.file)?;
        Ok((chunks * Self::CHUNK as u64, t.elapsed()))
    }
}

/// Bytes per second over rounds of (bytes, time), as `SeqWriteProbe::round` returns them.
pub fn bandwidth(rounds: impl IntoIterator<Item = (u64, Duration)>) -> f64 {
    let (bytes, time) = rounds
        .into_iter()
        .fold((0u64, Duration::ZERO), |(b, t), (b2, t2)| (b + b2, t + t2));
    bytes as f64 / time.as_secs_f64()
}

/// TCP loopback round trips of a 100-byte message to an echo thread, one sample at a time (like
/// `FsyncProbe`), over one connection kept for the probe's life.
pub struct RttProbe {
    client: Option<TcpStream>,
    server: Option<std::thread::JoinHandle<io::Result<()>>>,
    buf: [u8; 100],
}

impl RttProbe {
    pub fn new() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = std::thread::Builder::new()
            .name("floor-echo".into())
            .spawn(move || -> io::Result<()> {
                let (mut s, _) = listener.accept()?;
                s.set_nodelay(true)?;
                let mut buf = [0u8; 100];
                loop {
                    match s.read_exact(&mut buf) {
                        Ok(()) => s.write_all(&buf)?,
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
            })?;
        let client = TcpStream::connect(addr)?;
        client.set_nodelay(true)?;
        Ok(RttProbe {
            client: Some(client),
            server: Some(server),
            buf: [7u8; 100],
        })
    }

    /// One round trip; its latency in ns.
    pub fn sample(&mut self) -> io::Result<u64> {
        let c = self
            .client
            .as_mut()
            .ok_or_else(|| io::Error::other("the round-trip probe is closed"))?;
        let t = Instant::now();
        c.write_all(&self.buf)?;
        c.read_exact(&mut self.buf)?;
        Ok(t.elapsed().as_nanos() as u64)
    }

    /// Closes the connection and reports whether the echo thread failed.
    pub fn close(mut self) -> io::Result<()> {
        self.shut()
    }

    fn shut(&mut self) -> io::Result<()> {
        drop(self.client.take());
        match self.server.take() {
            Some(server) => server
                .join()
                .map_err(|_| io::Error::other("loopback echo thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for RttProbe {
    fn drop(&mut self) {
        let _ = self.shut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_measure_something() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let mut fsync = FsyncProbe::new(dir.path()).unwrap();
        let h: Vec<u64> = (0..5).map(|_| fsync.sample().unwrap()).collect();
        assert_eq!(h.len(), 5);
        assert!(h.iter().all(|&ns| ns > 0));
        drop(fsync);
        let mut probe = SeqWriteProbe::new(dir.path(), 2 << 20).unwrap();
        for _ in 0..3 {
            let (bytes, took) = probe.round(3 << 20).unwrap();
            assert_eq!(bytes, 3 << 20);
            assert!(took > Duration::ZERO);
        }
        drop(probe);
        let mut rtt = RttProbe::new().unwrap();
        let h: Vec<u64> = (0..5).map(|_| rtt.sample().unwrap()).collect();
        assert_eq!(h.len(), 5);
        rtt.close().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
