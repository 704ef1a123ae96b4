//! Push: Server-Sent Events with exact resumption, the long-poll inbox, and delivery
//! across two gateway processes on one PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)] // test code stops at the first surprise

use std::time::Duration;

use icbt_e2e::idp::{Actor, CLINIC_ORG, IdentityProviders};
use icbt_e2e::sealed::Sealer;
use icbt_e2e::{Backend, EventStream, Gateway, GatewayOptions, SYNTHETIC_FNR, backends};
use icbt_envelope::DeviceKeys;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const THERAPIST_HPR: &str = "565501872";
const THERAPIST_PID: &str = "01018512528";

async fn gateway(backend: Backend) -> Gateway {
    let idps = IdentityProviders::shared();
    Gateway::start_with(
        backend,
        GatewayOptions {
            config_toml: Some(idps.gateway_config()),
            ..Default::default()
        },
    )
    .await
}

/// A gateway without rate limits, a stream cap or per-address caps, for scenarios that
/// send or open many at once.
async fn unlimited_gateway(backend: Backend) -> Gateway {
    let idps = IdentityProviders::shared();
    Gateway::start_with(
        backend,
        GatewayOptions {
            config_toml: Some(idps.gateway_config()),
            env: vec![
                ("ICBT_SERVER__RATE_LIMIT_PER_MINUTE".into(), "0".into()),
                ("ICBT_SERVER__STREAMS_PER_PRINCIPAL".into(), "0".into()),
                // Every client connects from 127.0.0.1, many at once.
                ("ICBT_SERVER__HANDSHAKES_PER_ADDRESS".into(), "0".into()),
                (
                    "ICBT_SERVER__UNAUTHENTICATED_PER_ADDRESS".into(),
                    "0".into(),
                ),
            ],
            ..Default::default()
        },
    )
    .await
}

async fn episode(gw: &Gateway, platform: &Actor) -> Uuid {
    let http = gw.client();
    let id = Uuid::new_v4();
    let body = json!({ "patient": SYNTHETIC_FNR, "organisation": CLINIC_ORG, "programme": "social-anxiety-14w" });
    assert_eq!(
        platform
            .call(
                &http,
                Method::PUT,
                &format!("{}/v1/episodes/{id}", gw.url),
                Some(&body)
            )
            .await
            .status(),
        201
    );
    let team = json!({ "members": [{ "hpr_number": THERAPIST_HPR, "role": "therapist" }] });
    assert_eq!(
        platform
            .call(
                &http,
                Method::PUT,
                &format!("{}/v1/episodes/{id}/care-team", gw.url),
                Some(&team)
            )
            .await
            .status(),
        200
    );
    id
}

/// The clinic's journal key and the therapist's device (the reader here), published.
async fn keys(
    gw: &Gateway,
    platform: &Actor,
    therapist: &Actor,
) -> (Sealer, std::sync::Arc<DeviceKeys>) {
    let sealer = Sealer::new(&gw.url, &gw.client(), platform, CLINIC_ORG).await;
    let reader = sealer.device(therapist).await;
    (sealer, reader)
}

/// Everyone a scenario here needs: a patient and a therapist in one episode, each with a
/// published device, and the therapist's keys to open what arrives.
struct Cast {
    patient: Actor,
    therapist: Actor,
    episode: Uuid,
    sealer: Sealer,
    reader: std::sync::Arc<DeviceKeys>,
}

async fn cast(gw: &Gateway) -> Cast {
    let platform = Actor::system("icbt-platform").await;
    let patient = Actor::patient(SYNTHETIC_FNR).await;
    let therapist = Actor::therapist(THERAPIST_PID, THERAPIST_HPR).await;
    let episode = episode(gw, &platform).await;
    let (sealer, reader) = keys(gw, &platform, &therapist).await;
    Cast {
        patient,
        therapist,
        episode,
        sealer,
        reader,
    }
}

/// A page of `who`'s inbox; `query` is what follows `/v1/inbox`.
async fn inbox(gw: &Gateway, who: &Actor, query: &str) -> Value {
    let url = format!("{}/v1/inbox{query}", gw.url);
    who.call(&gw.client(), Method::GET, &url, None)
        .await
        .json()
        .await
        .unwrap()
}

async fn send(gw: &Gateway, sealer: &Sealer, who: &Actor, episode: Uuid, text: &str) -> Uuid {
    let id = Uuid::new_v4();
    let path = format!("/v1/episodes/{episode}/messages/{id}");
    let body = sealer.body(who, &path, "message", text).await;
    let url = format!("{}{path}", gw.url);
    let response = who.call(&gw.client(), Method::PUT, &url, Some(&body)).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    id
}

/// A stream over HTTP/1.1, the way browsers' `EventSource` and most apps open one.
async fn open_stream(gw: &Gateway, who: &Actor, last_event_id: Option<&str>) -> EventStream {
    open_stream_over(gw, b"http/1.1", who, last_event_id).await
}

/// A stream over the protocol `alpn` names.
async fn open_stream_over(
    gw: &Gateway,
    alpn: &[u8],
    who: &Actor,
    last_event_id: Option<&str>,
) -> EventStream {
    let url = format!("{}/v1/stream", gw.url);
    EventStream::new(
        stream_request(gw, alpn, &url, &who.credentials("GET", &url), last_event_id).await,
    )
}

/// `GET url` over the protocol `alpn` names, with `credentials`, for a stream.
async fn stream_request(
    gw: &Gateway,
    alpn: &[u8],
    url: &str,
    credentials: &[(&'static str, String)],
    last_event_id: Option<&str>,
) -> reqwest::Response {
    // No overall timeout, unlike the harness's default client: a stream stays open.
    let mut tls = gw.tls_config();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let mut request = http.get(url);
    for (name, value) in credentials {
        request = request.header(*name, value);
    }
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.unwrap()
}

/// The text of a delivered message, opened by `reader`.
fn text(sealer: &Sealer, reader: &DeviceKeys, event: &Value) -> String {
    sealer.open(reader, &event["message"])
}

#[tokio::test]
async fn stream_delivers_and_resumes_exactly_after_last_event_id() {
    for backend in backends() {
        let gw = gateway(backend).await;
        let Cast {
            patient,
            therapist,
            episode,
            sealer,
            reader,
        } = cast(&gw).await;

        let mut stream = open_stream(&gw, &therapist, None).await;
        send(&gw, &sealer, &patient, episode, "one").await;
        let first = stream
            .next(Duration::from_secs(3))
            .await
            .expect("pushed, not found by the one-minute re-check");
        assert_eq!(text(&sealer, &reader, &first.data), "one", "{backend:?}");
        assert_eq!(first.data["episode"], episode.to_string());
        assert_eq!(first.data["position"], first.id);
        drop(stream);

        // Missed while disconnected.
        send(&gw, &sealer, &patient, episode, "two").await;
        send(&gw, &sealer, &patient, episode, "three").await;
        let mut resumed = open_stream(&gw, &therapist, Some(&first.id)).await;
        let two = resumed.next(Duration::from_secs(10)).await.unwrap();
        let three = resumed.next(Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            (
                text(&sealer, &reader, &two.data),
                text(&sealer, &reader, &three.data)
            ),
            ("two".into(), "three".into()),
            "{backend:?}"
        );
        assert!(
            resumed.next(Duration::from_millis(300)).await.is_none(),
            "{backend:?}: nothing replayed twice"
        );
        send(&gw, &sealer, &patient, episode, "four").await;
        assert_eq!(
            text(
                &sealer,
                &reader,
                &resumed.next(Duration::from_secs(10)).await.unwrap().data
            ),
            "four"
        );

        // Someone else's stream sees none of it.
        let stranger = Actor::patient("01018512447").await;
        let mut theirs = open_stream(&gw, &stranger, Some("0.0")).await;
        assert!(
            theirs.next(Duration::from_millis(300)).await.is_none(),
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn a_stream_over_http2_delivers_and_resumes_too() {
    let gw = gateway(Backend::Sqlite).await;
    let Cast {
        patient,
        therapist,
        episode,
        sealer,
        reader,
    } = cast(&gw).await;
    let mut stream = open_stream_over(&gw, b"h2", &therapist, None).await;
    send(&gw, &sealer, &patient, episode, "over h2").await;
    let first = stream.next(Duration::from_secs(3)).await.unwrap();
    assert_eq!(text(&sealer, &reader, &first.data), "over h2");
    drop(stream);
    send(&gw, &sealer, &patient, episode, "missed").await;
    let mut resumed = open_stream_over(&gw, b"h2", &therapist, Some(&first.id)).await;
    let missed = resumed.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(text(&sealer, &reader, &missed.data), "missed");
}

/// A stream opened at the present says first where that is (an event with an `id` and no
/// data), so a client whose connection drops before its first message resumes there and
/// gets what was sent meanwhile, on HTTP/1.1 (the lean path) and HTTP/2 (hyper's).
#[tokio::test]
async fn a_stream_dropped_before_its_first_message_resumes_where_it_began() {
    for backend in backends() {
        let gw = gateway(backend).await;
        let Cast {
            patient,
            therapist,
            episode,
            sealer,
            reader,
        } = cast(&gw).await;
        for alpn in [&b"http/1.1"[..], b"h2"] {
            let mut stream = open_stream_over(&gw, alpn, &therapist, None).await;
            assert!(stream.next(Duration::from_millis(500)).await.is_none());
            let began = stream
                .last_id()
                .expect("the stream's first event names where it began")
                .to_owned();
            drop(stream);

            send(&gw, &sealer, &patient, episode, "while away").await;
            let mut resumed = open_stream_over(&gw, alpn, &therapist, Some(&began)).await;
            let missed = resumed
                .next(Duration::from_secs(10))
                .await
                .expect("resumed where the stream began");
            assert_eq!(
                text(&sealer, &reader, &missed.data),
                "while away",
                "{backend:?}"
            );
            let position = |p: &str| -> (i64, i64) {
                let (tx, pos) = p.split_once('.').unwrap();
                (tx.parse().unwrap(), pos.parse().unwrap())
            };
            assert!(
                position(&missed.id) > position(&began),
                "{backend:?}: {} after {began}",
                missed.id
            );
        }
    }
}

#[tokio::test]
async fn on_sigterm_an_open_stream_ends_cleanly_and_the_gateway_exits_at_once() {
    // HTTP/1.1 streams take the lean path; HTTP/2 ones are hyper's.
    for alpn in [b"http/1.1".as_slice(), b"h2"] {
        let mut gw = gateway(Backend::Sqlite).await;
        let Cast {
            patient,
            therapist,
            episode,
            sealer,
            ..
        } = cast(&gw).await;
        let mut stream = open_stream_over(&gw, alpn, &therapist, None).await;
        send(&gw, &sealer, &patient, episode, "before the end").await;
        assert!(stream.next(Duration::from_secs(3)).await.is_some());
        let (status, clean) = tokio::join!(
            gw.stop_with("TERM"),
            stream.ends_cleanly(Duration::from_secs(10))
        );
        let protocol = String::from_utf8_lossy(alpn);
        assert!(status.success(), "{protocol}: {status:?}");
        assert!(
            clean,
            "{protocol}: the stream ends with its last chunk, not broken off"
        );
        // Not after the grace period: the client resumes elsewhere with Last-Event-ID.
        let logs = gw.logs().join("\n");
        assert!(
            logs.contains("all connections drained"),
            "{protocol}: {logs}"
        );
        assert!(!logs.contains("grace period over"), "{protocol}: {logs}");
    }
}

#[tokio::test]
async fn long_poll_inbox_answers_when_a_message_arrives() {
    for backend in backends() {
        let gw = gateway(backend).await;
        let Cast {
            patient,
            therapist,
            episode,
            sealer,
            reader,
        } = cast(&gw).await;
        send(&gw, &sealer, &patient, episode, "before").await;

        // A short wait, not none: on PostgreSQL a reader sees a commit once every older
        // transaction has ended (the stream's horizon), so a read at once may come a few
        // milliseconds early under load. It answers as soon as the message is there.
        let page = inbox(&gw, &therapist, "?wait=5").await;
        let entries = page["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{backend:?}: {page}");
        let after = page["next_after"].as_str().unwrap().to_owned();

        let waiting = format!("?after={after}&wait=10");
        let (page, ()) = tokio::join!(inbox(&gw, &therapist, &waiting), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            send(&gw, &sealer, &patient, episode, "during the wait").await;
        });
        assert_eq!(
            page["entries"].as_array().unwrap().len(),
            1,
            "{backend:?}: {page}"
        );
        assert_eq!(
            text(&sealer, &reader, &page["entries"][0]),
            "during the wait"
        );
    }
}

#[tokio::test]
async fn a_message_written_through_one_instance_reaches_a_subscriber_on_another() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let a = gateway(Backend::Postgres).await;
    let b = a.another_instance();
    let Cast {
        patient,
        therapist,
        episode,
        sealer,
        reader,
    } = cast(&a).await;
    let mut on_b = open_stream(&b, &therapist, None).await;
    send(&a, &sealer, &patient, episode, "across instances").await;
    let event = on_b
        .next(Duration::from_secs(10))
        .await
        .expect("delivered through PostgreSQL NOTIFY");
    assert_eq!(text(&sealer, &reader, &event.data), "across instances");
}

#[tokio::test]
async fn a_stream_that_falls_behind_catches_up_without_gaps_or_repeats() {
    for backend in backends() {
        let gw = unlimited_gateway(backend).await;
        let Cast {
            patient,
            therapist,
            episode,
            sealer,
            reader,
        } = cast(&gw).await;

        // The therapist's stream is open but not read while far more arrives than its
        // queue and the socket's buffers hold.
        let mut stream = open_stream(&gw, &therapist, None).await;
        let count = 600;
        let mut sent = Vec::new();
        for i in 0..count {
            // Large enough that the socket's buffers fill long before the last one.
            sent.push(send(&gw, &sealer, &patient, episode, &format!("{i:>16000}")).await);
        }
        let mut received = Vec::new();
        while received.len() < count {
            let event = stream
                .next(Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("{backend:?}: only {} of {count}", received.len()));
            received.push(text(&sealer, &reader, &event.data));
        }
        let expected: Vec<String> = (0..count).map(|i| format!("{i:>16000}")).collect();
        assert_eq!(
            received, expected,
            "{backend:?}: in order, none missing, none twice"
        );
        assert!(
            gw.logged(|l| l.contains("stream fell behind")).await,
            "{backend:?}: the stream did fall behind"
        );
        assert_eq!(sent.len(), count);
    }
}

/// The present end of `who`'s stream, as the inbox gives it.
async fn next_after(gw: &Gateway, who: &Actor) -> String {
    inbox(gw, who, "").await["next_after"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A transaction with an id, left running on the gateway's database (PostgreSQL):
/// readers stop below it, and its end (`COMMIT` on the connection) announces nothing.
async fn older_transaction(gw: &Gateway) -> sqlx::AnyConnection {
    let mut db = icbt_e2e::connect_database(gw.data_dir.path(), gw.database()).await;
    sqlx::query("BEGIN").execute(&mut db).await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()::text")
        .execute(&mut db)
        .await
        .unwrap();
    db
}

#[tokio::test]
async fn a_message_held_back_by_an_older_open_transaction_arrives_when_it_ends() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let gw = gateway(Backend::Postgres).await;
    let Cast {
        patient,
        therapist,
        episode,
        sealer,
        reader,
    } = cast(&gw).await;
    let mut stream = open_stream(&gw, &therapist, None).await;
    let after = next_after(&gw, &therapist).await;
    let mut db = older_transaction(&gw).await;
    let waiting = format!("?after={after}&wait=20");
    let (page, ()) = tokio::join!(inbox(&gw, &therapist, &waiting), async {
        send(&gw, &sealer, &patient, episode, "held back").await;
        assert!(
            stream.next(Duration::from_millis(500)).await.is_none(),
            "not readable while the older transaction runs"
        );
        sqlx::query("COMMIT").execute(&mut db).await.unwrap();
    });
    let ended = std::time::Instant::now();

    // Nothing else is sent: neither waits for the next message nor the periodic re-read.
    let event = stream
        .next(Duration::from_secs(5))
        .await
        .expect("delivered once the older transaction ended");
    assert_eq!(text(&sealer, &reader, &event.data), "held back");
    assert_eq!(page["entries"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(text(&sealer, &reader, &page["entries"][0]), "held back");
    assert!(ended.elapsed() < Duration::from_secs(5));
}

/// The resuming stream's own catch-up finds nothing while the message is held back, and
/// the message's announcement came while no stream was open: the stream still gets it
/// when the older transaction ends, not at the next periodic re-read a minute later.
#[tokio::test]
async fn a_stream_resumed_while_a_sent_message_is_held_back_gets_it_when_that_ends() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let gw = gateway(Backend::Postgres).await;
    let Cast {
        patient,
        therapist,
        episode,
        sealer,
        reader,
    } = cast(&gw).await;
    let after = next_after(&gw, &therapist).await;
    let mut db = older_transaction(&gw).await;
    send(&gw, &sealer, &patient, episode, "sent before the stream").await;
    let mut stream = open_stream(&gw, &therapist, Some(&after)).await;
    assert!(
        stream.next(Duration::from_millis(500)).await.is_none(),
        "not readable while the older transaction runs"
    );
    sqlx::query("COMMIT").execute(&mut db).await.unwrap();

    let event = stream
        .next(Duration::from_secs(5))
        .await
        .expect("delivered once the older transaction ended");
    assert_eq!(
        text(&sealer, &reader, &event.data),
        "sent before the stream"
    );
}

#[tokio::test]
async fn each_of_many_streams_gets_the_message_and_each_delivery_is_in_the_access_log() {
    for backend in backends() {
        let gw = unlimited_gateway(backend).await;
        let Cast {
            patient,
            therapist,
            episode,
            sealer,
            reader,
        } = cast(&gw).await;
        // More streams than the hub records in one transaction.
        let count = 120;
        let mut streams = Vec::new();
        for _ in 0..count {
            streams.push(open_stream(&gw, &therapist, None).await);
        }
        send(&gw, &sealer, &patient, episode, "to everyone").await;
        for stream in &mut streams {
            let event = stream.next(Duration::from_secs(10)).await.unwrap();
            assert_eq!(text(&sealer, &reader, &event.data), "to everyone");
        }

        let auditor = Actor::auditor("01018512870", "100000002").await;
        let url = format!(
            "{}/v1/audit/records?episode={episode}&principal={THERAPIST_HPR}&action=read&limit=500",
            gw.url
        );
        let page: Value = auditor
            .call(&gw.client(), Method::GET, &url, None)
            .await
            .json()
            .await
            .unwrap();
        let mut requests: Vec<&str> = page["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["resource_type"] == "messages")
            .filter_map(|r| r["request_id"].as_str())
            .collect();
        requests.sort_unstable();
        requests.dedup();
        assert_eq!(requests.len(), count, "{backend:?}: one read per stream");
    }
}

/// Each reader's view of one episode: the sequence numbers in the order they arrived.
fn sequences_by_episode(entries: &[Value]) -> std::collections::BTreeMap<String, Vec<i64>> {
    let mut by_episode = std::collections::BTreeMap::<String, Vec<i64>>::new();
    for entry in entries {
        by_episode
            .entry(entry["episode"].as_str().unwrap().to_owned())
            .or_default()
            .push(entry["message"]["seq"].as_i64().unwrap());
    }
    by_episode
}

/// Every episode's messages 1..=n, each once, in sequence order.
fn assert_in_sequence_order(what: &str, entries: &[Value], per_episode: usize) {
    let expected: Vec<i64> = (1..=i64::try_from(per_episode).unwrap()).collect();
    for (episode, seqs) in sequences_by_episode(entries) {
        assert_eq!(seqs, expected, "{what}: episode {episode} out of order");
    }
}

#[tokio::test]
async fn bursts_of_concurrent_sends_reach_every_reader_in_sequence_order() {
    const EPISODES: usize = 3;
    const ROUNDS: usize = 40;
    const BURST: usize = 24;
    for backend in backends() {
        let first = unlimited_gateway(backend).await;
        let mut instances = vec![];
        if backend == Backend::Postgres {
            instances.push(first.another_instance());
            instances.push(first.another_instance());
        }
        instances.insert(0, first);
        let platform = Actor::system("icbt-platform").await;
        let patient = Actor::patient(SYNTHETIC_FNR).await;
        let therapist = Actor::therapist(THERAPIST_PID, THERAPIST_HPR).await;
        let mut episodes = Vec::new();
        for _ in 0..EPISODES {
            episodes.push(episode(&instances[0], &platform).await);
        }
        let (sealer, _) = keys(&instances[0], &platform, &therapist).await;
        let mut streams = Vec::new();
        for gw in &instances {
            streams.push(open_stream(gw, &therapist, None).await);
        }
        let start = inbox(&instances[0], &therapist, "").await["next_after"]
            .as_str()
            .unwrap()
            .to_owned();

        // Bursts of unsynchronised sends, spread over the episodes and the instances.
        for round in 0..ROUNDS {
            let mut requests = Vec::new();
            for i in 0..BURST {
                let gw = &instances[i % instances.len()];
                let episode = episodes[i % EPISODES];
                let path = format!("/v1/episodes/{episode}/messages/{}", Uuid::new_v4());
                let body = sealer
                    .body(&patient, &path, "message", &format!("{round}.{i}"))
                    .await;
                requests.push((gw, path, body));
            }
            let patient = &patient;
            let statuses = futures_util::future::join_all(requests.iter().map(
                |(gw, path, body)| async move {
                    let url = format!("{}{path}", gw.url);
                    patient
                        .call(&gw.client(), Method::PUT, &url, Some(body))
                        .await
                        .status()
                },
            ))
            .await;
            assert!(
                statuses.iter().all(|s| *s == 201),
                "{backend:?}: {statuses:?}"
            );
        }
        let total = ROUNDS * BURST;
        let per_episode = total / EPISODES;

        for (gw, stream) in instances.iter().zip(&mut streams) {
            // The live stream.
            let mut events = Vec::new();
            while events.len() < total {
                let event = stream
                    .next(Duration::from_secs(20))
                    .await
                    .unwrap_or_else(|| {
                        panic!("{backend:?}: only {} of {total} arrived", events.len())
                    });
                events.push(event);
            }
            let live: Vec<Value> = events.iter().map(|e| e.data.clone()).collect();
            assert_in_sequence_order(&format!("{backend:?} live stream"), &live, per_episode);

            // Resumed half-way, on the same instance.
            let half = total / 2;
            let mut resumed = open_stream(gw, &therapist, Some(&events[half - 1].id)).await;
            let mut rest = Vec::new();
            while rest.len() < total - half {
                rest.push(resumed.next(Duration::from_secs(20)).await.unwrap().data);
            }
            assert_eq!(
                rest.iter()
                    .map(|e| e["position"].clone())
                    .collect::<Vec<_>>(),
                live[half..]
                    .iter()
                    .map(|e| e["position"].clone())
                    .collect::<Vec<_>>(),
                "{backend:?}: a resumed stream continues exactly where it left off"
            );

            // The long poll, a page at a time.
            let mut polled = Vec::new();
            let mut after = start.clone();
            loop {
                let page = inbox(gw, &therapist, &format!("?after={after}&limit=37")).await;
                let entries = page["entries"].as_array().unwrap();
                if entries.is_empty() {
                    break;
                }
                polled.extend(entries.iter().cloned());
                after = page["next_after"].as_str().unwrap().to_owned();
            }
            assert_eq!(polled.len(), total, "{backend:?}");
            assert_in_sequence_order(&format!("{backend:?} long poll"), &polled, per_episode);
        }
    }
}

/// A principal holds at most `server.streams_per_principal` event streams and long polls;
/// one more is 429 with Retry-After, on HTTP/1.1 and HTTP/2 alike, and a place frees as
/// soon as a stream closes. Other principals and plain inbox pages are not affected.
#[tokio::test]
async fn open_streams_per_principal_are_capped_and_freed_when_one_closes() {
    let idps = IdentityProviders::shared();
    let gw = Gateway::start_with(
        Backend::Sqlite,
        GatewayOptions {
            config_toml: Some(idps.gateway_config()),
            env: vec![("ICBT_SERVER__STREAMS_PER_PRINCIPAL".into(), "2".into())],
            ..Default::default()
        },
    )
    .await;
    let c = cast(&gw).await;
    let first = open_stream(&gw, &c.patient, None).await;
    let _second = open_stream_over(&gw, b"h2", &c.patient, None).await;

    let url = format!("{}/v1/stream", gw.url);
    for alpn in [b"http/1.1".as_slice(), b"h2"] {
        let mut tls = gw.tls_config();
        tls.alpn_protocols = vec![alpn.to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap();
        let mut request = http.get(&url);
        for (name, value) in c.patient.credentials("GET", &url) {
            request = request.header(name, value);
        }
        let refused = request.send().await.unwrap();
        assert_eq!(refused.headers()["retry-after"], "5");
        icbt_e2e::expect_problem(refused, 429, "too-many-streams").await;
    }
    let polled = c
        .patient
        .call(
            &gw.client(),
            Method::GET,
            &format!("{}/v1/inbox?wait=5", gw.url),
            None,
        )
        .await;
    icbt_e2e::expect_problem(polled, 429, "too-many-streams").await;
    let page = inbox(&gw, &c.patient, "?limit=1").await;
    assert!(
        page["entries"].is_array(),
        "a page that does not wait: {page}"
    );
    let _theirs = open_stream(&gw, &c.therapist, None).await;

    // Closing one frees its place.
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        let response = c
            .patient
            .call(
                &gw.client(),
                Method::GET,
                &format!("{}/v1/inbox?wait=1", gw.url),
                None,
            )
            .await;
        if response.status() == 200 {
            reopened = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened.is_some(), "the closed stream's place was freed");
}

const PROTOCOLS: [&[u8]; 2] = [b"http/1.1", b"h2"];

/// The clock skew the gateway allows past a token's `exp` (its default).
const CLOCK_SKEW_SECONDS: i64 = 30;

/// A patient's bearer token that the gateway takes for `seconds` more (its `exp` is
/// within the allowed clock skew of now), signed by the ID-porten test provider's key.
fn patient_token_expiring_in(seconds: i64) -> String {
    IdentityProviders::shared().patient_token(SYNTHETIC_FNR, seconds - CLOCK_SKEW_SECONDS)
}

#[tokio::test]
async fn streams_and_long_polls_end_when_their_token_expires_and_resume_with_a_new_one() {
    for backend in backends() {
        let gw = gateway(backend).await;
        let c = cast(&gw).await;
        let url = format!("{}/v1/stream", gw.url);
        for alpn in PROTOCOLS {
            let what = format!("{backend:?} {}", String::from_utf8_lossy(alpn));
            let short = [(
                "authorization",
                format!("Bearer {}", patient_token_expiring_in(3)),
            )];
            let mut stream = EventStream::new(stream_request(&gw, alpn, &url, &short, None).await);
            let before = send(&gw, &c.sealer, &c.therapist, c.episode, "before").await;
            let seen = stream.next(Duration::from_secs(10)).await.unwrap();
            assert_eq!(seen.data["message"]["id"], before.to_string(), "{what}");
            assert_eq!(
                stream.end_reason(Duration::from_secs(10)).await.as_deref(),
                Some("expired"),
                "{what}: ends with its token, with a last event that says why"
            );
            // Sent after the end: the client re-authenticates and misses nothing.
            let after = send(&gw, &c.sealer, &c.therapist, c.episode, "after").await;
            let mut resumed = open_stream_over(&gw, alpn, &c.patient, Some(&seen.id)).await;
            let next = resumed.next(Duration::from_secs(10)).await.unwrap();
            assert_eq!(next.data["message"]["id"], after.to_string(), "{what}");
        }
        // A long poll waiting for a message answers when its token expires.
        let head = inbox(&gw, &c.patient, "?limit=200").await["next_after"]
            .as_str()
            .unwrap()
            .to_owned();
        let started = std::time::Instant::now();
        let page: Value = gw
            .client()
            .get(format!("{}/v1/inbox?after={head}&wait=25", gw.url))
            .bearer_auth(patient_token_expiring_in(2))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["end"], "expired", "{backend:?}: {page}");
        assert_eq!(page["entries"], json!([]), "{backend:?}");
        assert!(started.elapsed() < Duration::from_secs(15), "{backend:?}");
    }
}

#[tokio::test]
async fn a_clinicians_stream_ends_when_they_leave_the_care_team_or_their_cover_ends() {
    const COVER_HPR: &str = "100000001";
    const OTHER_HPR: &str = "100000002";
    for backend in backends() {
        let gw = gateway(backend).await;
        let c = cast(&gw).await;
        let platform = Actor::system("icbt-platform").await;
        let cover = Actor::therapist("01018512609", COVER_HPR).await;
        let team_url = format!("{}/v1/episodes/{}/care-team", gw.url, c.episode);
        for alpn in PROTOCOLS {
            let what = format!("{backend:?} {}", String::from_utf8_lossy(alpn));
            let team = |members: Value| json!({ "members": members });
            let therapist = json!({ "hpr_number": THERAPIST_HPR, "role": "therapist" });
            let put_team = |body: Value| {
                let (platform, http, url) = (&platform, gw.client(), team_url.clone());
                async move {
                    let status = platform
                        .call(&http, Method::PUT, &url, Some(&body))
                        .await
                        .status();
                    assert_eq!(status, 200);
                }
            };
            put_team(team(json!([therapist]))).await;
            c.sealer.forget_recipients();

            // A cover added while the cover therapist's stream is open, ending shortly.
            let mut theirs = open_stream_over(&gw, alpn, &cover, None).await;
            let mut mine = open_stream_over(&gw, alpn, &c.therapist, None).await;
            let until = icbt_auth::now_secs() * 1000 + 2_000;
            put_team(team(
                json!([therapist, { "hpr_number": COVER_HPR, "role": "cover", "until_ms": until }]),
            ))
            .await;
            let during = send(&gw, &c.sealer, &c.patient, c.episode, "during cover").await;
            let seen = theirs.next(Duration::from_secs(10)).await.unwrap();
            assert_eq!(seen.data["message"]["id"], during.to_string(), "{what}");
            assert_eq!(
                theirs.end_reason(Duration::from_secs(10)).await.as_deref(),
                Some("cover-ended"),
                "{what}"
            );
            assert!(
                icbt_auth::now_secs() * 1000 >= until - 1_000,
                "{what}: not before the cover ends"
            );
            let mine_seen = mine.next(Duration::from_secs(10)).await.unwrap();
            assert_eq!(
                mine_seen.data["message"]["id"],
                during.to_string(),
                "{what}"
            );

            // The therapist is replaced: their stream ends, and that episode's messages
            // no longer reach them when they reconnect.
            put_team(team(
                json!([{ "hpr_number": OTHER_HPR, "role": "therapist" }]),
            ))
            .await;
            c.sealer.forget_recipients();
            assert_eq!(
                mine.end_reason(Duration::from_secs(10)).await.as_deref(),
                Some("care-team-left"),
                "{what}"
            );
            send(&gw, &c.sealer, &c.patient, c.episode, "to the new team").await;
            let mut again = open_stream_over(&gw, alpn, &c.therapist, Some(&mine_seen.id)).await;
            assert!(
                again.next(Duration::from_millis(800)).await.is_none(),
                "{what}: nothing of the episode they left"
            );
            let mut cover_again = open_stream_over(&gw, alpn, &cover, Some(&seen.id)).await;
            assert!(
                cover_again.next(Duration::from_millis(300)).await.is_none(),
                "{what}"
            );
        }
    }
}

#[tokio::test]
async fn a_stream_for_a_device_ends_when_the_device_is_revoked() {
    for backend in backends() {
        let gw = gateway(backend).await;
        let c = cast(&gw).await;
        for alpn in PROTOCOLS {
            let what = format!("{backend:?} {}", String::from_utf8_lossy(alpn));
            // A device of the therapist's own, published for this stream.
            let device = icbt_envelope::DeviceKeys::generate().unwrap();
            let id = device.device_id();
            let publish = format!("{}/v1/devices/{id}", gw.url);
            let body = icbt_e2e::sealed::device_body(&device);
            let status = c
                .therapist
                .call(&gw.client(), Method::PUT, &publish, Some(&body))
                .await
                .status();
            assert_eq!(status, 201, "{what}");
            let url = format!("{}/v1/stream?device={id}", gw.url);
            let mut stream = EventStream::new(
                stream_request(&gw, alpn, &url, &c.therapist.credentials("GET", &url), None).await,
            );
            // Someone else cannot name it.
            let theirs =
                stream_request(&gw, alpn, &url, &c.patient.credentials("GET", &url), None).await;
            icbt_e2e::expect_problem(theirs, 422, "invalid-field").await;

            let revoke = format!("{}/v1/devices/{id}", gw.url);
            let status = c
                .therapist
                .call(&gw.client(), Method::DELETE, &revoke, None)
                .await
                .status();
            assert_eq!(status, 200, "{what}");
            assert_eq!(
                stream.end_reason(Duration::from_secs(10)).await.as_deref(),
                Some("device-revoked"),
                "{what}"
            );
            let again =
                stream_request(&gw, alpn, &url, &c.therapist.credentials("GET", &url), None).await;
            icbt_e2e::expect_problem(again, 422, "invalid-field").await;
        }
    }
}

/// An instance whose notification listener was cut off may have missed a logout or a
/// revocation on another instance: once it listens again, every open stream ends with
/// `recheck`, and its client reconnects and is authorized afresh.
#[tokio::test]
async fn streams_end_for_a_recheck_when_the_listener_was_cut_off() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let gw = gateway(Backend::Postgres).await;
    let c = cast(&gw).await;
    let mut stream = open_stream_over(&gw, b"h2", &c.therapist, None).await;
    let mut db = icbt_e2e::connect_database(gw.data_dir.path(), gw.database()).await;
    let cut = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert!(!cut.is_empty(), "the gateway was listening");
    assert_eq!(
        stream.end_reason(Duration::from_secs(20)).await.as_deref(),
        Some("recheck")
    );
    // The client reconnects and gets what was sent meanwhile.
    let sent = send(&gw, &c.sealer, &c.patient, c.episode, "after the recheck").await;
    let mut again = open_stream_over(&gw, b"h2", &c.therapist, Some("0.0")).await;
    let seen = again.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(seen.data["message"]["id"], sent.to_string());
}

/// A long poll gives its place among the requests the gateway works on back while it
/// waits: with room for one request at a time, a waiting poll does not refuse the next.
#[tokio::test]
async fn a_waiting_long_poll_holds_no_place_among_the_requests_in_progress() {
    let idps = IdentityProviders::shared();
    let gw = Gateway::start_with(
        Backend::Sqlite,
        GatewayOptions {
            config_toml: Some(idps.gateway_config()),
            env: vec![("ICBT_SERVER__CONCURRENCY_LIMIT".into(), "1".into())],
            ..Default::default()
        },
    )
    .await;
    let patient = Actor::patient(SYNTHETIC_FNR).await;
    let poll = {
        let (http, url, patient) = (
            gw.client(),
            format!("{}/v1/inbox?wait=3", gw.url),
            Actor::patient(SYNTHETIC_FNR).await,
        );
        tokio::spawn(async move { patient.call(&http, Method::GET, &url, None).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "the poll waits");
    let me = patient
        .call(
            &gw.client(),
            Method::GET,
            &format!("{}/v1/me", gw.url),
            None,
        )
        .await;
    assert_eq!(me.status(), 200, "answered while the poll waits");
    assert_eq!(poll.await.unwrap().status(), 200);
}
