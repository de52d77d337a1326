//! One client connection: read frames, hand each to the Kafka dispatcher in
//! arrival order, write the answers back in the same order.
//!
//! Clients pipeline requests, so reading does not wait for answers: the
//! reader runs each request's ordered part (decode, append) and queues its
//! pending answer; the writer awaits the answers one by one, in order. A
//! bounded queue limits how far a client can run ahead.

use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::{AsyncRead, FutureExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use tracing::{debug, warn};

use crate::kafka::{self, frame::MAX_REQUEST_BYTES, Outcome, PendingResponse};
use crate::server::shard::Shard;

/// Requests a connection may have in flight before reading pauses.
const MAX_IN_FLIGHT: usize = 128;
/// Reads of small frames and of what follows them go through a scratch
/// buffer of this size (copied out: cheap); a frame body at least this large
/// is read straight into place (no copy).
const READ_CHUNK: usize = 16 * 1024;
/// Frames at least this large are read into a buffer of their own (`FrameReader::read_own`).
const OWN_BUFFER_BYTES: usize = chronik_shards::log::ZERO_COPY_BYTES;

/// Serves one connection until the peer closes it, it misbehaves, or the
/// broker shuts down (then in-flight requests are answered first).
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    // A leader broker's replication link arrives on the Kafka listener too.
    if let Some(hello) = crate::replication::follower::peek_hello(&shard, &stream).await {
        return crate::replication::follower::accept(shard, stream, hello).await;
    }
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, "set_nodelay: {e}");
    }
    let (reader, writer) = futures_lite::io::split(stream);
    let (queue_tx, queue_rx) = local_channel::new_bounded::<PendingResponse>(MAX_IN_FLIGHT);

    let writer_peer = peer.clone();
    let writer_task = glommio::spawn_local(async move {
        let mut writer = writer;
        while let Some(pending) = queue_rx.recv().await {
            let segments = match pending.await {
                Ok(segments) => segments,
                // Unanswerable (encoding failed, logged): the client would
                // wait forever for this correlation id, so close instead.
                Err(_) => break,
            };
            for segment in segments {
                if let Err(e) = writer.write_all(&segment).await {
                    debug!(peer = %writer_peer, "write failed: {e}");
                    return;
                }
            }
        }
        let _ = writer.close().await;
    });

    let mut frames = FrameReader::new(reader);
    let shutdown = shard.shutdown.clone();
    loop {
        let next = async { Some(frames.next().await) }
            .or(async {
                shutdown.wait().await;
                None
            })
            .await;
        let frame = match next {
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
                if queue_tx.send(pending).await.is_err() {
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

/// Splits the byte stream into frames (without the length prefix). Reads
/// ahead into one buffer; each frame is a zero-copy slice of it.
struct FrameReader<R> {
    reader: R,
    buf: BytesMut,
    scratch: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(reader: R) -> Self {
        FrameReader {
            reader,
            buf: BytesMut::new(),
            scratch: Vec::new(),
        }
    }

    /// The next frame, `None` at a clean end of stream, or why the stream is unusable.
    async fn next(&mut self) -> Result<Option<Bytes>, String> {
        if !self.fill(4).await? {
            return if self.buf.is_empty() {
                Ok(None)
            } else {
                Err("connection closed inside a length prefix".into())
            };
        }
        let len = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let len = usize::try_from(len).map_err(|_| format!("negative frame length {len}"))?;
        if len > MAX_REQUEST_BYTES {
            return Err(format!(
                "frame length {len} exceeds socket.request.max.bytes ({MAX_REQUEST_BYTES})"
            ));
        }
        if len >= OWN_BUFFER_BYTES {
            return self.read_own(len).await.map(Some);
        }
        if !self.fill(4 + len).await? {
            return Err(format!("connection closed inside a {len}-byte frame"));
        }
        let mut frame = self.buf.split_to(4 + len);
        let _ = frame.split_to(4);
        Ok(Some(frame.freeze()))
    }

    /// A large frame's body, in a buffer of its own (what was read ahead is copied in, the rest read in
    /// place): slices of it then share no allocation with other frames, so the log can keep a
    /// produce request's records as received (`PartitionLog::append_bytes`).
    async fn read_own(&mut self, len: usize) -> Result<Bytes, String> {
        self.buf.advance(4);
        let ahead = self.buf.len().min(len);
        let mut body = BytesMut::with_capacity(len);
        body.extend_from_slice(&self.buf[..ahead]);
        self.buf.advance(ahead);
        body.resize(len, 0);
        let mut have = ahead;
        while have < len {
            match self.reader.read(&mut body[have..]).await {
                Ok(0) => return Err(format!("connection closed inside a {len}-byte frame")),
                Ok(n) => have += n,
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
        Ok(body.freeze())
    }

    /// Reads until the buffer holds `want` bytes; false if the stream ended first.
    async fn fill(&mut self, want: usize) -> Result<bool, String> {
        while self.buf.len() < want {
            let have = self.buf.len();
            let n = if want - have >= READ_CHUNK {
                // A large frame body: read exactly the rest of it in place.
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

    fn frames_of(input: Vec<u8>) -> Vec<Result<Option<Bytes>, String>> {
        futures_lite::future::block_on(async move {
            let mut reader = FrameReader::new(futures_lite::io::Cursor::new(input));
            let mut out = Vec::new();
            loop {
                let next = reader.next().await;
                let done = !matches!(next, Ok(Some(_)));
                out.push(next);
                if done {
                    return out;
                }
            }
        })
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
        let huge = ((MAX_REQUEST_BYTES + 1) as i32).to_be_bytes().to_vec();
        assert!(frames_of(huge)[0].is_err());
        assert!(frames_of((-5i32).to_be_bytes().to_vec())[0].is_err());
        let mut cut = 10i32.to_be_bytes().to_vec();
        cut.extend_from_slice(b"abc");
        assert!(frames_of(cut)[0].is_err());
        assert!(frames_of(vec![0, 0])[0].is_err());
    }
}
