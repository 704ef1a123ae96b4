//! A lingering close. When the gateway answers a request before reading its body (a
//! refusal: no credentials, not allowed, too large) and then closes the connection, the
//! client may still be sending that body. Closing a socket with unread data makes the
//! kernel send a reset, and a reset discards what the client has not read yet: the answer.
//! So a shutdown here ends the gateway's side first (TLS `close_notify`, TCP FIN), then
//! reads and discards what still arrives until the client closes, for at most [`LINGER`]
//! and [`LINGER_BYTES`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long a closing connection reads on.
pub const LINGER: Duration = Duration::from_secs(2);
/// How much a closing connection reads on at most: a larger upload refused early loses
/// its answer to the reset rather than hold the connection for the whole body.
pub const LINGER_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug)]
enum State {
    Open,
    Draining {
        until: Pin<Box<Sleep>>,
        drained: usize,
    },
    Closed,
}

#[derive(Debug)]
pub struct Linger<IO> {
    inner: IO,
    state: State,
}

impl<IO> Linger<IO> {
    pub fn new(inner: IO) -> Self {
        Self {
            inner,
            state: State::Open,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Linger<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Linger<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Open => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    this.state = State::Draining {
                        until: Box::pin(tokio::time::sleep(LINGER)),
                        drained: 0,
                    };
                }
                State::Draining { until, drained } => {
                    if until.as_mut().poll(cx).is_ready() || *drained >= LINGER_BYTES {
                        this.state = State::Closed;
                        continue;
                    }
                    let mut discard = [0u8; 8192];
                    let mut buf = ReadBuf::new(&mut discard);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            *drained += buf.filled().len();
                        }
                        // The client closed too, or the connection broke: done.
                        Poll::Ready(_) => this.state = State::Closed,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_shutdown_reads_on_until_the_client_closes() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = Linger::new(server);
        let closing = tokio::spawn(async move {
            io.write_all(b"answer").await.unwrap();
            io.shutdown().await.unwrap();
        });
        // The client is still sending (more than the pipe holds) when the server closes.
        client.write_all(&vec![0u8; 64 * 1024]).await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer");
        drop(client);
        closing.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_never_closes_is_let_go_after_the_linger() {
        let (_client, server) = tokio::io::duplex(1024);
        let mut io = Linger::new(server);
        let started = std::time::Instant::now();
        io.shutdown().await.unwrap();
        assert!(started.elapsed() >= LINGER);
    }
}
