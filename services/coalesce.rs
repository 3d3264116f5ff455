//! One write per scheduler round on a connection: what lets a new HTTP/2 request leave in one
//! write instead of two.
//!
//! hyper's HTTP/2 client queues a new request's HEADERS and opens the stream only in its
//! connection task (h2 counts it against the peer's stream limit there); the request's DATA is
//! sent by a task of its own once the open stream has send capacity. So the connection task
//! writes the HEADERS alone, the body task then queues the DATA, and the connection task writes
//! again: two `writev`s for every request, and the server wakes for each (BENCHMARKS.md, "Hot
//! path", parts 18 and 20: the programmers slept and woke 2.45 times per dry run called by the
//! manager against 1.30 through a bare relay).
//!
//! [`Coalesced`] holds the first write of each burst back for one scheduler round: it wakes its
//! own task and answers `Pending`, the way a full socket would, so every task already woken (the
//! request's body among them) runs first and queues its frames; the connection task then writes
//! everything in one go. The burst ends with the writer's flush. Nothing waits on a timer: the
//! hold lasts only as long as the tasks ready at that moment take to run.
//!
//! The manager's client connections to its programmers use it (`channel::Dialer`), where it
//! paid: +6 % dispatch throughput, no change in a lone dispatch's latency. Servers' accepted
//! connections do not: there each hop's answer waited a round, and a lone dispatch through the
//! manager lost ~25 µs at p50 (measured and left out, part 21).

use std::io::{IoSlice, Result};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An I/O stream whose writes are held back for one scheduler round at the start of each burst
/// (see the module docs).
#[derive(Debug)]
pub struct Coalesced<T> {
    inner: T,
    /// The current burst already waited its round: writes go through until the flush.
    held: bool,
}

impl<T> Coalesced<T> {
    /// `inner`, its writes coalesced.
    pub fn new(inner: T) -> Self {
        Self { inner, held: false }
    }

    /// Holds the burst's first write back once: wakes the task to be polled again after the
    /// tasks already woken, and answers `Pending`.
    fn hold(&mut self, cx: &mut Context<'_>) -> bool {
        if self.held {
            return false;
        }
        self.held = true;
        cx.waker().wake_by_ref();
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<Result<usize>> {
        if self.hold(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<Result<usize>> {
        if self.hold(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() {
            self.held = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    /// Records the bytes of each write that reaches the socket.
    struct Recorded<T> {
        inner: T,
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Recorded<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<Result<usize>> {
            let written = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = written {
                self.writes.lock().unwrap().push(buf[..n].to_vec());
            }
            written
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// The HTTP/2 frames a client wrote, as (write number, frame type, stream id, flags), after
    /// the connection preface.
    fn frames(writes: &[Vec<u8>]) -> Vec<(usize, u8, u32, u8)> {
        const PREFACE: usize = 24;
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for write in writes {
            starts.push(bytes.len());
            bytes.extend_from_slice(write);
        }
        let write_at = |offset: usize| starts.iter().rposition(|&s| s <= offset).unwrap();
        let (mut at, mut out) = (PREFACE, Vec::new());
        while at + 9 <= bytes.len() {
            let len = usize::from(bytes[at]) << 16
                | usize::from(bytes[at + 1]) << 8
                | usize::from(bytes[at + 2]);
            let stream =
                u32::from_be_bytes([bytes[at + 5], bytes[at + 6], bytes[at + 7], bytes[at + 8]])
                    & 0x7fff_ffff;
            out.push((write_at(at), bytes[at + 3], stream, bytes[at + 4]));
            at += 9 + len;
        }
        out
    }

    /// A unary gRPC call over a channel whose writes are coalesced: the request's HEADERS and
    /// its DATA reach the socket in one write (hyper alone writes them in two: checked by
    /// running this test without [`Coalesced`]).
    #[tokio::test]
    async fn a_requests_headers_and_data_leave_in_one_write() {
        let (client_io, server_io) = tokio::io::duplex(64 << 10);
        let (_reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(server_io))),
        );
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (read, write) = tokio::io::split(client_io);
        let mut io = Some(tokio::io::join(
            read,
            Recorded {
                inner: write,
                writes: writes.clone(),
            },
        ));
        let channel = tonic::transport::Endpoint::from_static("http://coalesced.test")
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let io = io
                    .take()
                    .map(|io| hyper_util::rt::TokioIo::new(Coalesced::new(io)));
                async move { io.ok_or_else(|| std::io::Error::other("one connection only")) }
            }))
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        for _ in 0..3 {
            client
                .check(HealthCheckRequest::default())
                .await
                .expect("the server answers");
        }
        let frames = frames(&writes.lock().unwrap());
        const DATA: u8 = 0;
        const HEADERS: u8 = 1;
        let requests: Vec<_> = frames.iter().filter(|f| f.1 == HEADERS).collect();
        assert_eq!(requests.len(), 3, "{frames:?}");
        for &&(write, _, stream, _) in &requests {
            let data = frames
                .iter()
                .find(|f| f.1 == DATA && f.2 == stream)
                .expect("the request's message");
            assert_eq!(
                data.0, write,
                "stream {stream}: HEADERS and DATA in one write: {frames:?}"
            );
        }
    }
}
