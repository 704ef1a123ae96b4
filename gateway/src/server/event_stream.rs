//! A lean HTTP/1.1 path for long-lived event streams.
//!
//! An idle stream is most of what a gateway holds: one per patient or therapist with the
//! app open. Served by hyper, each keeps hyper's read buffer (8–16 KiB, sized for the
//! request head and never given back) and write buffer (8 KiB) for as long as it is open.
//! So the first request head of an HTTP/1.1 connection is read here, with `httparse`
//! (hyper's own parser): `GET /v1/stream` without a body is answered here, through the
//! same tower stack as every request, and its body is written as chunks straight to the
//! TLS stream with `Connection: close`. Anything else, including a head this path does
//! not take (bad, too large, HTTP/1.0, a body, HTTP/2 prior knowledge), goes to hyper
//! with the bytes already read put back in front, so hyper answers it as it always does.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody as _};
use bytes::{Buf, Bytes};
use http::{HeaderName, HeaderValue, Request, Response, Version, header};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

/// The path served here.
pub const STREAM_PATH: &str = "/v1/stream";
/// Request headers read at most (hyper's default as well).
const MAX_HEADERS: usize = 100;
/// A stream whose client takes no data for this long is closed: a reader that stopped
/// reading must not hold its connection (and its queue) for ever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the first request head of a connection turned out to be.
#[derive(Debug)]
pub enum First {
    /// `GET /v1/stream`: answer it here.
    Stream(Box<Request<Body>>),
    /// Anything else: hand the bytes read so far to hyper.
    Other(Vec<u8>),
    /// The client went away (or sent nothing in time) before a whole head arrived.
    Gone,
}

/// Reads until a whole request head has arrived (or it is clear this path won't take
/// it), reading at most `limit` bytes.
pub async fn read_first<IO: AsyncRead + Unpin>(io: &mut IO, limit: usize) -> First {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= limit {
                return First::Other(buf);
            }
            buf.reserve(buf.len().min(limit - buf.len()));
        }
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                return if buf.is_empty() {
                    First::Gone
                } else {
                    First::Other(buf)
                };
            }
            Ok(_) => {}
        }
        match parse(&buf) {
            Parsed::Partial => {}
            Parsed::Stream(request) => return First::Stream(request),
            Parsed::Other => return First::Other(buf),
        }
    }
}

enum Parsed {
    Partial,
    Stream(Box<Request<Body>>),
    Other,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let end = match head.parse(buf) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some("GET"), Some(target), Some(1)) = (head.method, head.path, head.version) else {
        return Parsed::Other;
    };
    // Exactly one head and nothing after it: a pipelined request is hyper's to answer.
    if end != buf.len() || target.split('?').next() != Some(STREAM_PATH) {
        return Parsed::Other;
    }
    let mut builder = Request::builder()
        .method(http::Method::GET)
        .uri(target)
        .version(Version::HTTP_11);
    for h in head.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::Other;
        };
        // A body, an upgrade or an expectation: not the simple GET this path serves.
        if name == header::CONTENT_LENGTH && h.value != b"0"
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT
        {
            return Parsed::Other;
        }
        let Ok(value) = HeaderValue::from_bytes(h.value) else {
            return Parsed::Other;
        };
        builder = builder.header(name, value);
    }
    builder
        .body(Body::empty())
        .map_or(Parsed::Other, |r| Parsed::Stream(Box::new(r)))
}

/// Writes `response` to `io` and closes the connection: a body of known length in one
/// piece, any other (the event stream) chunk by chunk as it comes, until it ends, the
/// client goes away, or `closing` turns true (shutdown: the stream ends cleanly and the
/// client resumes elsewhere with `Last-Event-ID`).
pub async fn answer<IO>(io: IO, response: Response<Body>, mut closing: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let exact = body.size_hint().exact();
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
        {
            continue;
        }
        line(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        line(&mut head, b"date", date.as_bytes());
    }
    line(&mut head, b"connection", b"close");
    let (mut reader, mut writer) = tokio::io::split(io);
    if let Some(length) = exact {
        line(&mut head, b"content-length", length.to_string().as_bytes());
        head.extend_from_slice(b"\r\n");
        if let Ok(collected) = body.collect().await {
            head.extend_from_slice(&collected.to_bytes());
            let _ = send(&mut writer, &head).await;
        }
        let _ = writer.shutdown().await;
        return;
    }
    line(&mut head, b"transfer-encoding", b"chunked");
    head.extend_from_slice(b"\r\n");
    if send(&mut writer, &head).await.is_err() {
        return;
    }
    drop(head);
    let mut probe = [0u8; 16];
    let finished = loop {
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if !data.is_empty() && send(&mut writer, &chunk(&data)).await.is_err() {
                        break false;
                    }
                }
                // The body failed: end without the last chunk, so the client sees a
                // broken stream rather than a finished one.
                Some(Err(_)) => break false,
                None => break true,
            },
            read = reader.read(&mut probe) => match read {
                // Anything the client sends after its one request is ignored; its end
                // (or an error) is the end of the stream.
                Ok(n) if n > 0 => {}
                _ => return,
            },
            changed = closing.changed() => if changed.is_err() || *closing.borrow() {
                break true;
            },
        }
    };
    if finished {
        let _ = send(&mut writer, b"0\r\n\r\n").await;
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.shutdown()).await;
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `data` as one chunk of a chunked body.
fn chunk(data: &[u8]) -> Vec<u8> {
    let size = format!("{:x}\r\n", data.len());
    let mut out = Vec::with_capacity(size.len() + data.len() + 2);
    out.extend_from_slice(size.as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, async {
        writer.write_all(bytes).await?;
        writer.flush().await
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// An IO that first yields `prefix` (what was read looking at the first head), then
/// reads from `inner`; writes go to `inner`. The prefix is freed once read.
#[derive(Debug)]
pub struct Prefixed<IO> {
    prefix: Bytes,
    inner: IO,
}

impl<IO> Prefixed<IO> {
    pub fn new(prefix: Vec<u8>, inner: IO) -> Self {
        Self {
            prefix: Bytes::from(prefix),
            inner,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if !self.prefix.has_remaining() {
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
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
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str) -> Parsed {
        parse(head.as_bytes())
    }

    #[test]
    fn a_plain_stream_request_is_taken_with_its_headers_and_query() {
        let Parsed::Stream(request) = parsed(
            "GET /v1/stream?after=1.2 HTTP/1.1\r\nhost: gw\r\nauthorization: DPoP x\r\nlast-event-id: 7\r\n\r\n",
        ) else {
            panic!("not taken");
        };
        assert_eq!(request.uri().path(), STREAM_PATH);
        assert_eq!(request.uri().query(), Some("after=1.2"));
        assert_eq!(request.headers()["authorization"], "DPoP x");
        assert_eq!(request.headers()["last-event-id"], "7");
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for head in [
            "GET /v1/episodes HTTP/1.1\r\nhost: gw\r\n\r\n",
            "GET /v1/streams HTTP/1.1\r\nhost: gw\r\n\r\n",
            "POST /v1/stream HTTP/1.1\r\nhost: gw\r\n\r\n",
            "GET /v1/stream HTTP/1.0\r\nhost: gw\r\n\r\n",
            "GET /v1/stream HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
            "GET /v1/stream HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET /v1/stream HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            "GET /v1/stream HTTP/1.1\r\n\r\nGET /v1/stream HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET /v1/stream HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert!(matches!(parsed(head), Parsed::Other), "{head:?}");
        }
        assert!(matches!(
            parsed("GET /v1/stream HTTP/1.1\r\nhost"),
            Parsed::Partial
        ));
    }

    #[tokio::test]
    async fn a_head_arriving_in_pieces_is_read_whole_and_a_long_one_is_handed_on() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for piece in ["GET /v1/str", "eam HTTP/1.1\r\nho", "st: gw\r\n\r\n"] {
                client.write_all(piece.as_bytes()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client
        });
        assert!(matches!(
            read_first(&mut server, 64 * 1024).await,
            First::Stream(_)
        ));
        let mut client = writer.await.unwrap();
        let long = format!("GET /v1/stream HTTP/1.1\r\nx: {}\r\n", "a".repeat(5000));
        let sent = long.clone();
        let _writer = tokio::spawn(async move { client.write_all(sent.as_bytes()).await });
        let First::Other(bytes) = read_first(&mut server, 4096).await else {
            panic!("a head over the limit must go to hyper");
        };
        assert!(bytes.len() >= 4096 && long.as_bytes().starts_with(&bytes));
    }

    #[tokio::test]
    async fn the_prefix_is_read_first_then_the_rest() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = Prefixed::new(b"hello".to_vec(), server);
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }

    #[tokio::test]
    async fn an_answer_of_known_length_has_it_and_a_stream_is_chunked_and_ends_on_closing() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (_closing_tx, closing) = watch::channel(false);
        let response = Response::builder()
            .status(401)
            .header("content-type", "application/problem+json")
            .body(Body::from("{}"))
            .unwrap();
        answer(server, response, closing).await;
        let mut text = String::new();
        let mut client = client;
        client.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("content-length: 2\r\n") && text.ends_with("\r\n\r\n{}"));
        assert!(text.contains("connection: close\r\n") && text.contains("date: "));

        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (closing_tx, closing) = watch::channel(false);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(4);
        let body = Body::from_stream(tokio_stream_of(rx));
        let response = Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap();
        let answering = tokio::spawn(answer(server, response, closing));
        tx.send(Ok(Bytes::from_static(b"data: one\n\n")))
            .await
            .unwrap();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("data: one") {
            let mut buf = [0u8; 256];
            let n = client.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
        closing_tx.send(true).unwrap();
        answering.await.unwrap();
        client.read_to_end(&mut seen).await.unwrap();
        let text = String::from_utf8(seen).unwrap();
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\nb\r\ndata: one\n\n\r\n0\r\n\r\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_stream_ends_when_its_client_goes_away() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (_closing_tx, closing) = watch::channel(false);
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(4);
        let response = Response::new(Body::from_stream(tokio_stream_of(rx)));
        let answering = tokio::spawn(answer(server, response, closing));
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), answering)
            .await
            .expect("the stream must end with its client")
            .unwrap();
    }

    fn tokio_stream_of(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
