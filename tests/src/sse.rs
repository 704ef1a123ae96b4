//! Event-stream subscribers for the benches, read by hand: the client's work per event
//! (find the message id) stays small, since it shares the machine's cores with the
//! gateway and would otherwise count in the latency it measures.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Gateway;

/// An open `GET /v1/stream` on its own HTTP/1.1 connection, authenticated by `headers`
/// (name, value), its response head read.
///
/// # Panics
/// If the gateway answers anything but 200.
pub async fn subscribe(
    gw: &Gateway,
    headers: &[(&str, String)],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let host = gw.url.trim_start_matches("https://");
    let mut head = format!("GET /v1/stream HTTP/1.1\r\nhost: {host}\r\n");
    for (name, value) in headers {
        head.push_str(&[name, ": ", value, "\r\n"].concat());
    }
    head.push_str("\r\n");
    let mut tls = gw.raw_tls().await;
    tls.write_all(head.as_bytes())
        .await
        .expect("send the request");
    let mut answer = Vec::new();
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = tls.read(&mut buf).await.expect("read the head");
        assert!(n > 0, "stream closed before its head");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    tls
}

/// The message id of each `data:` line complete in `buffer`, which keeps the rest.
///
/// # Panics
/// If an event names no message.
pub fn message_ids(buffer: &mut Vec<u8>) -> Vec<String> {
    let mut ids = Vec::new();
    let mut consumed = 0;
    while let Some(start) = find(&buffer[consumed..], b"data: ").map(|i| consumed + i + 6) {
        let Some(end) = buffer[start..].iter().position(|b| *b == b'\n') else {
            break;
        };
        let line = &buffer[start..start + end];
        let key = b"\"message\":{\"id\":\"";
        let at = find(line, key).expect("an event names its message") + key.len();
        ids.push(String::from_utf8_lossy(&line[at..at + 36]).into_owned());
        consumed = start + end + 1;
    }
    buffer.drain(..consumed);
    ids
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::message_ids;

    #[test]
    fn complete_events_are_read_and_a_partial_one_is_kept_for_the_next_read() {
        let first = "11111111-1111-4111-8111-111111111111";
        let second = "22222222-2222-4222-8222-222222222222";
        let mut buffer = format!(
            "id: 1.1\nevent: message\ndata: {{\"message\":{{\"id\":\"{first}\"}}}}\n\n: keep-alive\n\ndata: {{\"message\":{{\"id\":\"{second}"
        )
        .into_bytes();
        assert_eq!(message_ids(&mut buffer), vec![first.to_owned()]);
        buffer.extend_from_slice(b"\"}}\n\n");
        assert_eq!(message_ids(&mut buffer), vec![second.to_owned()]);
        assert!(message_ids(&mut buffer).is_empty());
    }
}
