//! hyper answers a few HTTP/1.1 requests itself, before any service sees them: a head it
//! cannot parse (400), one larger than its buffer (431). It writes those without a body
//! (`connection: close`, `content-length: 0`). Every answer of the gateway's own is a
//! problem document, so on HTTP/1.1 connections the bytes hyper writes pass through
//! [`ProblemAnswers`], which puts a problem document in place of such a bare 4xx.
//!
//! It can tell hyper's answers from the gateway's by their shape alone: the gateway never
//! answers a 4xx without a body. hyper writes each of these answers in one piece (the head
//! is all there is), which the wrapper makes sure of by not offering vectored writes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::http::errors::{CONTENT_TYPE, Problem, ProblemKind};

/// The problem for a status hyper answered itself.
fn kind_for(status: u16) -> ProblemKind {
    match status {
        431 => ProblemKind::RequestHeadTooLarge,
        408 => ProblemKind::RequestHeadTimeout,
        _ => ProblemKind::MalformedRequest,
    }
}

/// The whole answer, head and problem body, for `kind`; the connection closes after it.
pub fn problem_answer(kind: ProblemKind) -> Vec<u8> {
    let body = Problem::new(kind).body();
    let status = kind.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nconnection: close\r\ncontent-type: {CONTENT_TYPE}\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nx-content-type-options: nosniff\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// hyper's bare 4xx in `buf`, by its status, if that is what `buf` holds.
fn bare_status(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.1 4")?;
    let head = std::str::from_utf8(buf).ok()?;
    if !head.ends_with("\r\n\r\n") || head.matches("\r\n\r\n").count() != 1 {
        return None;
    }
    let lower = head.to_ascii_lowercase();
    if !lower.contains("\r\ncontent-length: 0\r\n") || !lower.contains("\r\nconnection: close\r\n")
    {
        return None;
    }
    let digits = rest.get(..2)?;
    let tail = std::str::from_utf8(digits).ok()?.parse::<u16>().ok()?;
    Some(400 + tail)
}

/// How long a connection that got a problem in place of hyper's answer is still read from
/// before it is closed, so that unread bytes of the refused request do not make the
/// kernel reset the connection and lose the answer on its way to the client.
const LINGER: Duration = Duration::from_secs(2);

/// An IO whose bare 4xx answers become problem documents.
#[derive(Debug)]
pub struct ProblemAnswers<IO: AsyncRead + Unpin + Send + 'static> {
    /// Always there until dropped.
    inner: Option<IO>,
    /// A replacement not yet written in full.
    pending: Vec<u8>,
    written: usize,
    /// A problem was written in place of hyper's answer: linger when dropped.
    replaced: bool,
}

impl<IO: AsyncRead + Unpin + Send + 'static> ProblemAnswers<IO> {
    pub fn new(inner: IO) -> Self {
        Self {
            inner: Some(inner),
            pending: Vec::new(),
            written: 0,
            replaced: false,
        }
    }

    fn io(&mut self) -> io::Result<&mut IO> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<IO: AsyncRead + Unpin + Send + 'static> Drop for ProblemAnswers<IO> {
    fn drop(&mut self) {
        let (true, Some(mut io), Ok(runtime)) = (
            self.replaced,
            self.inner.take(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        runtime.spawn(async move {
            let mut sink = [0u8; 8192];
            let _ = tokio::time::timeout(LINGER, async {
                while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> ProblemAnswers<IO> {
    /// Writes what is left of a replacement.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let (pending, written) = (std::mem::take(&mut self.pending), self.written);
            let result = match self.io() {
                Ok(io) => Pin::new(io).poll_write(cx, &pending[written..]),
                Err(e) => Poll::Ready(Err(e)),
            };
            self.pending = pending;
            let n = ready!(result)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin + Send + 'static> AsyncRead for ProblemAnswers<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for ProblemAnswers<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        if let Some(status) = bare_status(buf) {
            self.pending = problem_answer(kind_for(status));
            self.replaced = true;
            // The whole of hyper's buffer counts as written; the problem goes instead.
            return match self.drain(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        Pin::new(self.io()?).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(self.io()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(self.io()?).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_bare_431_becomes_a_problem_and_other_answers_pass_unchanged() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut out = ProblemAnswers::new(server);
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        out.write_all(ok).await.unwrap();
        // A problem of the gateway's own: a body, so not touched.
        let own = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n{}";
        out.write_all(own).await.unwrap();
        out.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 02:29:00 GMT\r\n\r\n")
            .await
            .unwrap();
        out.shutdown().await.unwrap();
        drop(out);
        let mut text = String::new();
        client.read_to_string(&mut text).await.unwrap();
        let mut answers = text.split("HTTP/1.1 ").skip(1);
        assert_eq!(
            answers.next().unwrap(),
            "200 OK\r\ncontent-length: 2\r\n\r\n{}"
        );
        assert!(
            answers
                .next()
                .unwrap()
                .starts_with("404 Not Found\r\ncontent-type")
        );
        let replaced = answers.next().unwrap();
        assert!(replaced.starts_with("431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-type: application/problem+json\r\n"), "{replaced}");
        let body = replaced.split_once("\r\n\r\n").unwrap().1;
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            problem["type"],
            "urn:icbt-gateway:problem:request-head-too-large"
        );
        assert_eq!(problem["status"], 431);
    }

    #[test]
    fn only_hyper_shaped_answers_are_recognised() {
        assert_eq!(
            bare_status(
                b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
            ),
            Some(400)
        );
        assert_eq!(
            bare_status(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
            None,
            "kept open: not hyper's"
        );
        assert_eq!(
            bare_status(
                b"HTTP/1.1 204 No Content\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
            ),
            None
        );
        assert_eq!(bare_status(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200"), None);
    }
}
