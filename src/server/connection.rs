//! One client connection: read frames, hand each to the Kafka dispatcher in
//! arrival order, write the answers back in the same order.
//!
//! Clients pipeline requests, so reading does not wait for answers: the
//! reader runs each request's ordered part (decode, append) and queues its
//! pending answer; the writer awaits the answers one by one, in order. A
//! bounded queue limits how far a client can run ahead.
//!
//! Everything a peer can make a connection hold is bounded (`server::limits`): a frame's bytes come
//! from the shard's request memory before they are read, and go back once its answer is written; a
//! frame must arrive within its read deadline; a client that does not take its answers within the
//! write timeout is disconnected; after shutdown begins, answers get a short grace and no more.

use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::{AsyncRead, AsyncWrite, FutureExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use tracing::{debug, warn};

use crate::kafka::{self, Outcome, PendingResponse};
use crate::server::limits::{Limits, MemoryPermit, RequestMemory, SHUTDOWN_WRITE_GRACE};
use crate::server::shard::Shard;
use chronik_shards::runtime::Shutdown;

/// Requests a connection may have in flight before reading pauses.
const MAX_IN_FLIGHT: usize = 128;
/// Reads of small frames and of what follows them go through a scratch
/// buffer of this size (copied out: cheap); a frame body at least this large
/// is read straight into place (no copy).
const READ_CHUNK: usize = 16 * 1024;
/// How long closing the socket may take once everything is written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames at least this large are read into a buffer of their own (`FrameReader::read_own`).
const OWN_BUFFER_BYTES: usize = chronik_shards::log::ZERO_COPY_BYTES;

/// Serves one connection until the peer closes it, it misbehaves, or the
/// broker shuts down (then in-flight requests are answered first, within a grace).
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    // A leader broker's replication link arrives on the Kafka listener too. A peer that connects
    // and sends nothing is an idle connection.
    let idle = shard.limits.connections_max_idle;
    let hello = async { Ok(crate::replication::follower::peek_hello(&shard, &stream).await) }
        .or(async {
            glommio::timer::sleep(idle).await;
            Err(())
        })
        .await;
    match hello {
        Ok(Some(hello)) => return crate::replication::follower::accept(shard, stream, hello).await,
        Ok(None) => {}
        Err(()) => {
            debug!("closing a connection that sent nothing for {idle:?}");
            return;
        }
    }
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, "set_nodelay: {e}");
    }
    let (reader, writer) = futures_lite::io::split(stream);
    let (queue_tx, queue_rx) =
        local_channel::new_bounded::<(PendingResponse, MemoryPermit)>(MAX_IN_FLIGHT);
    // Closed when the writer ends, so the reader stops too (a client that does not read).
    let (writer_alive, writer_gone) = local_channel::new_bounded::<()>(1);

    let writer_task = glommio::spawn_local(write_answers(
        writer,
        queue_rx,
        writer_alive,
        shard.limits.response_write_timeout,
        shard.shutdown.clone(),
        peer.clone(),
    ));

    let mut frames = FrameReader::new(reader, shard.request_memory.clone(), &shard.limits);
    let shutdown = shard.shutdown.clone();
    loop {
        let next = async { Some(frames.next().await) }
            .or(async {
                shutdown.wait().await;
                None
            })
            .or(async {
                let _ = writer_gone.recv().await;
                Some(Err("the client stopped taking its answers".to_string()))
            })
            .await;
        let (frame, permit) = match next {
            None => break, // shutting down: answer what is queued, read nothing more
            Some(Ok(Some(frame))) => frame,
            Some(Ok(None)) => break, // peer closed
            // A socket error (a client that resets instead of closing) is the
            // peer's business, not a broker problem; a bad frame is worth a warning.
            Some(Err(reason)) if reason.starts_with("read failed") => {
                debug!(%peer, "closing connection: {reason}");
                break;
            }
            Some(Err(reason)) => {
                warn!(%peer, "closing connection: {reason}");
                break;
            }
        };
        match kafka::handle_frame(&shard, frame).await {
            Outcome::Respond(pending) => {
                // A full queue's sender is not woken when the receiver goes (glommio 0.9): the
                // writer's end is watched separately.
                let queued = async { queue_tx.send((pending, permit)).await.is_ok() }
                    .or(async {
                        let _ = writer_gone.recv().await;
                        false
                    })
                    .await;
                if !queued {
                    break; // writer gone: the peer stopped reading
                }
            }
            Outcome::NoResponse => {}
            Outcome::Close(reason) => {
                warn!(%peer, "closing connection: {reason}");
                break;
            }
        }
    }
    drop(queue_tx);
    writer_task.await;
}

/// Writes the answers in order. Each answer's request memory goes back once it is written. Ends
/// when the reader is done and everything queued is written, when a write fails or makes no
/// progress for `write_timeout`, or `SHUTDOWN_WRITE_GRACE` after shutdown began.
async fn write_answers<W: AsyncWrite + Unpin>(
    mut writer: W,
    queue: local_channel::LocalReceiver<(PendingResponse, MemoryPermit)>,
    alive: local_channel::LocalSender<()>,
    write_timeout: Duration,
    shutdown: Shutdown,
    peer: String,
) {
    let grace_over = || {
        let shutdown = shutdown.clone();
        async move {
            shutdown.wait().await;
            glommio::timer::sleep(SHUTDOWN_WRITE_GRACE).await;
        }
    };
    while let Some((pending, permit)) = queue.recv().await {
        let answer = async { Some(pending.await) }
            .or(async {
                grace_over().await;
                None
            })
            .await;
        let segments = match answer {
            Some(Ok(segments)) => segments,
            // Unanswerable (encoding failed, logged): the client would
            // wait forever for this correlation id, so close instead.
            Some(Err(_)) => break,
            None => {
                debug!(%peer, "shutting down with an answer still pending");
                break;
            }
        };
        for segment in segments {
            let written = write_with_progress(&mut writer, &segment, write_timeout)
                .or(async {
                    grace_over().await;
                    Err("shutting down".to_string())
                })
                .await;
            if let Err(reason) = written {
                warn!(%peer, "closing connection: {reason}");
                drop(alive);
                return;
            }
        }
        drop(permit);
    }
    drop(alive);
    let _ = async { writer.close().await }
        .or(async {
            glommio::timer::sleep(CLOSE_TIMEOUT).await;
            Ok(())
        })
        .await;
}

/// Writes all of `bytes`, failing if the peer takes none of them for `timeout` (a slow client that
/// keeps taking bytes keeps its connection; one that stopped reading loses it).
async fn write_with_progress<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mut bytes: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    while !bytes.is_empty() {
        let n = async {
            writer
                .write(bytes)
                .await
                .map_err(|e| format!("write failed: {e}"))
        }
        .or(async {
            glommio::timer::sleep(timeout).await;
            Err(format!("the client took no answer bytes for {timeout:?}"))
        })
        .await?;
        if n == 0 {
            return Err("write failed: connection closed".into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Splits the byte stream into frames (without the length prefix). Reads
/// ahead into one buffer; each small frame is a zero-copy slice of it. Every frame's bytes are
/// taken from the shard's request memory before they are read.
struct FrameReader<R> {
    reader: R,
    buf: BytesMut,
    scratch: Vec<u8>,
    memory: RequestMemory,
    max_frame: usize,
    limits: Limits,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(reader: R, memory: RequestMemory, limits: &Limits) -> Self {
        FrameReader {
            reader,
            buf: BytesMut::new(),
            scratch: Vec::new(),
            memory,
            max_frame: limits.socket_request_max_bytes,
            limits: limits.clone(),
        }
    }

    /// The next frame with the request memory it holds, `None` at a clean end of stream, or why
    /// the stream is unusable.
    async fn next(&mut self) -> Result<Option<(Bytes, MemoryPermit)>, String> {
        let idle = self.limits.connections_max_idle;
        let prefixed = async { self.fill(4).await }
            .or(async {
                glommio::timer::sleep(idle).await;
                Err(format!("idle for {idle:?} (connections.max.idle.ms)"))
            })
            .await?;
        if !prefixed {
            return if self.buf.is_empty() {
                Ok(None)
            } else {
                Err("connection closed inside a length prefix".into())
            };
        }
        let len = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let len = usize::try_from(len).map_err(|_| format!("negative frame length {len}"))?;
        if len > self.max_frame {
            return Err(format!(
                "frame length {len} exceeds socket.request.max.bytes ({})",
                self.max_frame
            ));
        }
        let deadline = self.limits.frame_read_deadline(len);
        async { self.read_frame(len).await.map(Some) }
            .or(async {
                glommio::timer::sleep(deadline).await;
                Err(format!(
                    "a {len}-byte frame did not arrive within {deadline:?}"
                ))
            })
            .await
    }

    async fn read_frame(&mut self, len: usize) -> Result<(Bytes, MemoryPermit), String> {
        if len >= OWN_BUFFER_BYTES {
            return self.read_own(len).await;
        }
        let permit = self.take_memory(len).await?;
        if !self.fill(4 + len).await? {
            return Err(format!("connection closed inside a {len}-byte frame"));
        }
        let mut frame = self.buf.split_to(4 + len);
        let _ = frame.split_to(4);
        Ok((frame.freeze(), permit))
    }

    async fn take_memory(&self, bytes: usize) -> Result<MemoryPermit, String> {
        self.memory
            .acquire(bytes)
            .await
            .ok_or_else(|| "request memory closed".to_string())
    }

    /// A large frame's body, in a buffer of its own (what was read ahead is copied in, the rest read in
    /// place): slices of it then share no allocation with other frames, so the log can keep a
    /// produce request's records as received (`PartitionLog::append_bytes`).
    ///
    /// The buffer grows with the bytes that arrive, never ahead of them by more than what arrived
    /// already (or 64 KiB): a peer that announces 100 MiB and sends a trickle holds a trickle of
    /// memory. Each step's memory is taken from the budget before it is read into.
    async fn read_own(&mut self, len: usize) -> Result<(Bytes, MemoryPermit), String> {
        self.buf.advance(4);
        let mut permit = MemoryPermit::default();
        let mut body = BytesMut::new();
        let mut filled = 0;
        while filled < len {
            if filled == body.len() {
                let step = (len - filled).min(filled.max(OWN_BUFFER_BYTES));
                permit.merge(self.take_memory(step).await?);
                body.resize(filled + step, 0);
                if filled == 0 {
                    let ahead = self.buf.len().min(step);
                    body[..ahead].copy_from_slice(&self.buf[..ahead]);
                    self.buf.advance(ahead);
                    filled = ahead;
                    continue;
                }
            }
            match self.reader.read(&mut body[filled..]).await {
                Ok(0) => return Err(format!("connection closed inside a {len}-byte frame")),
                Ok(n) => filled += n,
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
        Ok((body.freeze(), permit))
    }

    /// Reads until the buffer holds `want` bytes; false if the stream ended first.
    async fn fill(&mut self, want: usize) -> Result<bool, String> {
        while self.buf.len() < want {
            let have = self.buf.len();
            let n = if want - have >= READ_CHUNK {
                // A frame body (under 64 KiB, its memory taken): read exactly the rest in place.
                self.buf.resize(want, 0);
                let n = self.reader.read(&mut self.buf[have..]).await;
                self.buf.truncate(have + *n.as_ref().unwrap_or(&0));
                n
            } else {
                if self.scratch.is_empty() {
                    self.scratch = vec![0; READ_CHUNK];
                }
                let n = self.reader.read(&mut self.scratch).await;
                if let Ok(n) = n {
                    self.buf.extend_from_slice(&self.scratch[..n]);
                }
                n
            };
            match n {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
        Ok(true)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a glommio executor (the reader's timers need one).
    fn on_executor<T: Send + 'static>(
        f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
    ) -> T {
        glommio::LocalExecutorBuilder::default()
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn read_all(
        input: Vec<u8>,
        limits: Limits,
        memory: usize,
    ) -> Vec<Result<Option<Bytes>, String>> {
        on_executor(move || {
            Box::pin(async move {
                let memory = RequestMemory::new(memory);
                let mut reader = FrameReader::new(
                    futures_lite::io::Cursor::new(input),
                    memory.clone(),
                    &limits,
                );
                let mut out = Vec::new();
                loop {
                    let next = reader.next().await;
                    let done = !matches!(next, Ok(Some(_)));
                    if let Ok(Some((frame, permit))) = &next {
                        // The frame's bytes are held from the budget until its answer is written.
                        assert!(permit.bytes() >= frame.len().min(memory.capacity()));
                    }
                    out.push(next.map(|f| f.map(|(frame, _)| frame)));
                    if done {
                        return out;
                    }
                }
            })
        })
    }

    fn frames_of(input: Vec<u8>) -> Vec<Result<Option<Bytes>, String>> {
        read_all(input, Limits::default(), 256 << 20)
    }

    #[test]
    fn splits_frames() {
        let mut input = Vec::new();
        let big = vec![7u8; 3 * READ_CHUNK + 5];
        let own = vec![9u8; OWN_BUFFER_BYTES + 3];
        for body in [&b"abc"[..], b"", &big, &own, b"hello world"] {
            input.extend_from_slice(&(body.len() as i32).to_be_bytes());
            input.extend_from_slice(body);
        }
        let mut frames = frames_of(input);
        assert_eq!(frames.len(), 6);
        assert_eq!(frames[0].as_ref().unwrap().as_deref(), Some(&b"abc"[..]));
        assert_eq!(frames[1].as_ref().unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(frames[2].as_ref().unwrap().as_deref(), Some(&big[..]));
        assert_eq!(frames[3].as_ref().unwrap().as_deref(), Some(&own[..]));
        assert_eq!(
            frames[4].as_ref().unwrap().as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(frames[5], Ok(None));
        // The large frame owns its buffer: nothing else (the reader, other frames) shares it.
        let own_frame = frames.remove(3).unwrap().unwrap();
        drop(frames);
        assert!(own_frame.try_into_mut().is_ok());
    }

    #[test]
    fn rejects_oversized_negative_and_truncated_frames() {
        let huge = ((Limits::default().socket_request_max_bytes + 1) as i32)
            .to_be_bytes()
            .to_vec();
        assert!(frames_of(huge)[0].is_err());
        assert!(frames_of((-5i32).to_be_bytes().to_vec())[0].is_err());
        let mut cut = 10i32.to_be_bytes().to_vec();
        cut.extend_from_slice(b"abc");
        assert!(frames_of(cut)[0].is_err());
        assert!(frames_of(vec![0, 0])[0].is_err());
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    /// A reader whose peer announced a frame and then sends nothing more.
    struct Stalled(Vec<u8>);

    impl AsyncRead for Stalled {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.0.is_empty() {
                return std::task::Poll::Pending;
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn an_announced_frame_takes_memory_only_as_its_bytes_arrive() {
        let held = glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let memory = RequestMemory::new(256 << 20);
                let limits = Limits {
                    request_read_timeout: Duration::from_millis(50),
                    ..Limits::default()
                };
                // 100 MiB announced, 1 KB sent.
                let mut input = (100i32 << 20).to_be_bytes().to_vec();
                input.extend_from_slice(&[7u8; 1000]);
                let mut reader = FrameReader::new(Stalled(input), memory.clone(), &limits);
                let read = glommio::spawn_local(async move { reader.next().await.map(|_| ()) });
                glommio::timer::sleep(Duration::from_millis(20)).await;
                let held = memory.capacity() - memory.available();
                // The frame is dropped once its read deadline (plus 1 s per MiB) passes... here the
                // deadline is 100 s away, so stop looking.
                drop(read);
                held
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(held, OWN_BUFFER_BYTES, "one 64 KiB step, not 100 MiB");
    }

    #[test]
    fn a_frame_that_does_not_arrive_in_time_closes_the_connection() {
        let result = glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let memory = RequestMemory::new(1 << 20);
                let limits = Limits {
                    request_read_timeout: Duration::from_millis(30),
                    ..Limits::default()
                };
                let mut input = 500i32.to_be_bytes().to_vec();
                input.extend_from_slice(&[1u8; 10]);
                let mut reader = FrameReader::new(Stalled(input), memory.clone(), &limits);
                let result = reader.next().await.map(|_| ());
                (result, memory.available())
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(result.0.unwrap_err().contains("did not arrive within"));
        assert_eq!(result.1, 1 << 20, "its memory went back");
    }

    #[test]
    fn a_frame_waits_for_memory_instead_of_allocating() {
        let waited = glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let memory = RequestMemory::new(1000);
                let taken = memory.acquire(900).await.unwrap();
                let mut input = 500i32.to_be_bytes().to_vec();
                input.extend_from_slice(&[1u8; 500]);
                let mut reader = FrameReader::new(
                    futures_lite::io::Cursor::new(input),
                    memory.clone(),
                    &Limits::default(),
                );
                let read = glommio::spawn_local(async move {
                    reader.next().await.map(|f| f.map(|(frame, _)| frame.len()))
                });
                glommio::timer::sleep(Duration::from_millis(20)).await;
                let still_waiting = memory.available() == 100;
                drop(taken);
                (still_waiting, read.await)
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(waited.0);
        assert_eq!(waited.1, Ok(Some(500)));
    }

    /// A writer whose peer never reads.
    struct Blocked;

    impl AsyncWrite for Blocked {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Pending
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_client_that_takes_no_answer_bytes_is_dropped_after_the_write_timeout() {
        let result = glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                write_with_progress(&mut Blocked, b"answer", Duration::from_millis(20)).await
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(result.unwrap_err().contains("took no answer bytes"));
    }
}
