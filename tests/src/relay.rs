//! A TCP relay in front of the gateway that loses an answer, as a dropped mobile
//! connection or a proxy timeout would: the request arrives and is committed, the client
//! never hears back.
//!
//! TLS stays end to end, so the relay sees only sizes: once more than `threshold` bytes
//! have gone from a client to the gateway since the gateway last wrote, that request is
//! the one whose answer is held back. Every later byte from the gateway is dropped until
//! [`LosingRelay::lose_answer`] closes every connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug)]
pub struct LosingRelay {
    /// `https://127.0.0.1:PORT`, to use in place of the gateway's URL.
    pub url: String,
    holding: Arc<AtomicBool>,
    close: watch::Sender<bool>,
}

impl LosingRelay {
    /// Relays to `gateway_url` (`https://HOST:PORT`).
    pub async fn start(gateway_url: &str, threshold: usize) -> Self {
        let upstream = gateway_url.trim_start_matches("https://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let holding = Arc::new(AtomicBool::new(false));
        let (close, closed) = watch::channel(false);
        let shared = holding.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(
                    client,
                    server,
                    threshold,
                    shared.clone(),
                    closed.clone(),
                ));
            }
        });
        Self {
            url,
            holding,
            close,
        }
    }

    /// Whether a request has gone through whose answer is being held back.
    pub fn holding(&self) -> bool {
        self.holding.load(Ordering::SeqCst)
    }

    /// Closes every connection: the held-back answer never arrives.
    pub fn lose_answer(&self) {
        self.close.send_replace(true);
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    threshold: usize,
    holding: Arc<AtomicBool>,
    mut closed: watch::Receiver<bool>,
) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let since_answer = AtomicUsize::new(0);
    let up = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = from_client.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            if since_answer.fetch_add(n, Ordering::SeqCst) + n > threshold {
                holding.store(true, Ordering::SeqCst);
            }
            to_server.write_all(&buffer[..n]).await?;
        }
    };
    let down = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = from_server.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            if holding.load(Ordering::SeqCst) {
                continue;
            }
            since_answer.store(0, Ordering::SeqCst);
            to_client.write_all(&buffer[..n]).await?;
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = closed.wait_for(|c| *c) => {}
    }
}
