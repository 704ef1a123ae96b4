//! Storage round trips on SQLite and PostgreSQL, each test in its own database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code stops at the first surprise

use icbt_e2e::{Backend, backends, storage_for};
use icbt_gateway::domain::episode::{ClinicId, EpisodeState, NationalId, OrgNumber};
use icbt_gateway::storage::Store;

fn patient(n: u32) -> NationalId {
    (0..100)
        .find_map(|k| NationalId::with_check_digits(&format!("0101851{:02}", (n * 7 + k) % 100)))
        .unwrap()
}

#[tokio::test]
async fn clinic_and_episode_round_trip() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _db) = storage_for(backend, dir.path()).await;
        let store = Store::open(&config).await.unwrap();
        let org = OrgNumber::parse("974760673").unwrap();
        let clinic = store
            .insert_clinic("Nettbasert behandling", &org)
            .await
            .unwrap();
        assert_eq!(
            store.clinic(clinic.id).await.unwrap().as_ref(),
            Some(&clinic),
            "{backend:?}"
        );

        let p = patient(1);
        let first = store
            .insert_episode(clinic.id, &p, "panic-disorder-14w")
            .await
            .unwrap();
        let second = store
            .insert_episode(clinic.id, &p, "social-anxiety-14w")
            .await
            .unwrap();
        store
            .insert_episode(clinic.id, &patient(2), "panic-disorder-14w")
            .await
            .unwrap();
        let read = store.episode(first.id).await.unwrap().unwrap();
        assert_eq!(read, first);
        assert_eq!(read.state, EpisodeState::Planned);
        // Oldest first (episodes made in the same millisecond in either order).
        let listed = store.episodes_of_patient(&p).await.unwrap();
        assert!(
            listed
                .windows(2)
                .all(|w| w[0].created_at_ms <= w[1].created_at_ms),
            "{backend:?}"
        );
        let mut listed_ids: Vec<_> = listed.iter().map(|e| e.id.to_string()).collect();
        let mut expected: Vec<_> = [&first, &second].iter().map(|e| e.id.to_string()).collect();
        listed_ids.sort();
        expected.sort();
        assert_eq!(listed_ids, expected, "{backend:?}");
        assert!(
            store
                .clinic(ClinicId::new_random())
                .await
                .unwrap()
                .is_none()
        );
        store.close().await;
    }
}

#[tokio::test]
async fn constraints_are_enforced() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _db) = storage_for(backend, dir.path()).await;
        let store = Store::open(&config).await.unwrap();
        // Foreign key: an episode needs an existing clinic (SQLite enforces it only with
        // foreign_keys on).
        let orphan = store
            .insert_episode(ClinicId::new_random(), &patient(3), "p")
            .await;
        assert!(
            orphan.is_err(),
            "{backend:?}: episode without clinic accepted"
        );
        // Unique organisation number.
        let org = OrgNumber::parse("974760673").unwrap();
        store.insert_clinic("A", &org).await.unwrap();
        assert!(store.insert_clinic("B", &org).await.is_err(), "{backend:?}");
    }
}

#[tokio::test]
async fn migrations_apply_once_and_data_survives_reopen() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _db) = storage_for(backend, dir.path()).await;
        let store = Store::open(&config).await.unwrap();
        let clinic = store
            .insert_clinic("C", &OrgNumber::parse("974760673").unwrap())
            .await
            .unwrap();
        let readiness = store.readiness().await;
        assert!(
            readiness.reachable && readiness.migrations_applied,
            "{backend:?}: {readiness:?}"
        );
        store.close().await;

        let reopened = Store::open(&config).await.unwrap();
        assert_eq!(reopened.clinic(clinic.id).await.unwrap(), Some(clinic));
        assert!(reopened.readiness().await.migrations_applied);
        reopened.close().await;
    }
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode_in_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = storage_for(Backend::Sqlite, dir.path()).await;
    let store = Store::open(&config).await.unwrap();
    store
        .insert_clinic("W", &OrgNumber::parse("974760673").unwrap())
        .await
        .unwrap();
    assert!(config.sqlite_path().is_file());
    let wal = dir.path().join("icbt-gateway.sqlite3-wal");
    assert!(
        wal.is_file(),
        "a WAL file exists while the database is open"
    );
    store.close().await;
}

#[tokio::test]
async fn sessions_end_at_idle_and_absolute_timeouts() {
    use icbt_gateway::storage::SessionRecord;
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _db) = storage_for(backend, dir.path()).await;
        let store = Store::open(&config).await.unwrap();
        let session = |created: i64| SessionRecord {
            issuer: "idporten".into(),
            principal: "{}".into(),
            id_token: "id".into(),
            created_at: created,
            last_seen_at: created,
            idle_timeout: 100,
            absolute_expiry: created + 250,
        };
        store
            .insert_session("a", &session(1_000), &login_record())
            .await
            .unwrap();
        // Used within the idle time again and again: alive until the absolute end.
        for now in [1_090, 1_180, 1_240] {
            assert!(
                store.session("a", now).await.unwrap().is_some(),
                "{backend:?} at {now}"
            );
        }
        assert!(
            store.session("a", 1_250).await.unwrap().is_none(),
            "{backend:?}: absolute timeout"
        );
        assert!(
            store.session("a", 1_100).await.unwrap().is_none(),
            "an ended session stays ended"
        );

        store
            .insert_session("b", &session(2_000), &login_record())
            .await
            .unwrap();
        assert!(store.session("b", 2_050).await.unwrap().is_some());
        assert!(
            store.session("b", 2_151).await.unwrap().is_none(),
            "{backend:?}: idle timeout"
        );

        store
            .insert_session("c", &session(3_000), &login_record())
            .await
            .unwrap();
        assert!(
            store.delete_session("c").await.unwrap().is_some(),
            "revoked"
        );
        assert!(store.session("c", 3_001).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn login_attempts_are_single_use_and_expire() {
    use icbt_gateway::storage::LoginAttempt;
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _db) = storage_for(backend, dir.path()).await;
        let store = Store::open(&config).await.unwrap();
        let attempt = |state: &str, expires_at| LoginAttempt {
            state: state.into(),
            issuer: "idporten".into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            return_to: "/".into(),
            expires_at,
        };
        store
            .insert_login_attempt(&attempt("s1", 500))
            .await
            .unwrap();
        assert_eq!(
            store.take_login_attempt("s1", 100).await.unwrap(),
            Some(attempt("s1", 500))
        );
        assert_eq!(
            store.take_login_attempt("s1", 100).await.unwrap(),
            None,
            "{backend:?}: single use"
        );
        store
            .insert_login_attempt(&attempt("s2", 500))
            .await
            .unwrap();
        assert_eq!(
            store.take_login_attempt("s2", 600).await.unwrap(),
            None,
            "{backend:?}: expired"
        );
    }
}

fn login_record() -> icbt_gateway::audit::Record {
    icbt_gateway::audit::Access::default().anonymous(icbt_gateway::audit::Action::Login, "session")
}

/// Retention prunes the content of old records of its class only, and the pruned log
/// still verifies (and would not under a longer retention).
/// `audit verify` walks a live log: a sequencer batch committed while it walks (records
/// and their checkpoint in one transaction) must be wholly out of its view, or the
/// records would look covered by no checkpoint.
#[tokio::test]
async fn the_audit_snapshot_does_not_see_a_batch_sequenced_after_it_began() {
    use icbt_gateway::audit::sequencer::AuditLog;
    use icbt_gateway::audit::{Access, Action};
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _db) = storage_for(backend, dir.path()).await;
        let store = Store::open(&config).await.unwrap();
        let log = AuditLog::from_config(&icbt_config::AuditConfig::default(), dir.path()).unwrap();
        let record = || Access::default().anonymous(Action::Read, "messages");
        store.record_access(&[record(), record()]).await.unwrap();
        assert_eq!(log.sequence_all(&store).await.unwrap(), 2);

        let mut view = store.audit_snapshot().await.unwrap();
        let checkpoints = view.checkpoints().await.unwrap();
        assert_eq!(
            checkpoints.last().unwrap().checkpoint.size,
            2,
            "{backend:?}"
        );
        // A batch commits between the view's first read and its walk.
        store
            .record_access(&[record(), record(), record()])
            .await
            .unwrap();
        assert_eq!(log.sequence_all(&store).await.unwrap(), 3);
        let walked = view.scan(0, 100).await.unwrap();
        assert_eq!(walked.len(), 2, "{backend:?}: the walk saw a later batch");
        assert_eq!(view.pending().await.unwrap(), 0, "{backend:?}");
        view.close().await.unwrap();
        // Outside the view, the log has moved on.
        assert_eq!(store.audit_scan(0, 100).await.unwrap().len(), 5);
        assert_eq!(
            store
                .audit_checkpoints()
                .await
                .unwrap()
                .last()
                .unwrap()
                .checkpoint
                .size,
            5
        );
    }
}

#[tokio::test]
async fn pruning_keeps_the_access_log_verifiable() {
    use icbt_gateway::audit::sequencer::AuditLog;
    use icbt_gateway::audit::verify::Verifier;
    use icbt_gateway::audit::{Access, Action};
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _db) = storage_for(backend, dir.path()).await;
        let store = Store::open(&config).await.unwrap();
        let day = 86_400_000;
        let now = 1_800_000_000_000_i64;
        let mut records = Vec::new();
        for (i, action) in [Action::Read, Action::Create, Action::Read, Action::Login]
            .into_iter()
            .enumerate()
        {
            let mut r = Access::default().anonymous(action, "messages");
            r.patient = Some("01018512345".into());
            r.recorded_at_ms = now - 40 * day + i64::try_from(i).unwrap();
            records.push(r);
        }
        let mut recent = Access::default().anonymous(Action::Read, "messages");
        recent.recorded_at_ms = now - day;
        records.push(recent);
        store.record_access(&records).await.unwrap();
        let audit = icbt_config::AuditConfig {
            retention_days: icbt_config::RetentionConfig {
                access: Some(30),
                ..Default::default()
            },
            ..Default::default()
        };
        let log = AuditLog::from_config(&audit, dir.path()).unwrap();
        assert_eq!(log.sequence_all(&store).await.unwrap(), 5);
        assert_eq!(log.prune(&store, now).await.unwrap(), 2, "{backend:?}");

        let scan: Vec<_> = store
            .audit_scan(0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let pruned: Vec<_> = scan.iter().filter(|s| s.pruned).collect();
        assert_eq!(pruned.len(), 2);
        assert!(
            pruned
                .iter()
                .all(|s| s.record.action == Action::Read && s.record.patient.is_none())
        );
        let mut v = Verifier::new(
            store.audit_checkpoints().await.unwrap(),
            log.trusted.clone(),
            &log.retention,
            now,
        );
        for s in &scan {
            v.feed(s);
        }
        assert_eq!(v.finish().problem, None, "{backend:?}");
        let longer = icbt_config::RetentionConfig {
            access: Some(60),
            ..Default::default()
        };
        let mut v = Verifier::new(Vec::new(), log.trusted.clone(), &longer, now);
        for s in &scan {
            v.feed(s);
        }
        assert!(
            v.failed(),
            "a longer retention refuses the pruned records: {backend:?}"
        );
        store.close().await;
    }
}

/// Many sends at once: on PostgreSQL they share batch statements and commits. Every
/// send gets exactly its own outcome (new, a retry's original, a conflict, a closed
/// episode), sequence numbers stay gap-free per episode, and each new message has its
/// access record and an outbox row, the outbox in sequence order.
#[tokio::test]
async fn concurrent_appends_each_get_their_own_outcome() {
    use icbt_gateway::audit::{Access, Action};
    use icbt_gateway::storage::{Appended, EpisodeRefusal};
    use sqlx::Row;
    for backend in backends() {
        let (dir, db, store, clinic) = store_with_clinic(backend).await;
        let mut open = Vec::new();
        for n in 0..3 {
            open.push(
                store
                    .insert_episode(clinic.id, &patient(n), "p")
                    .await
                    .unwrap(),
            );
        }
        let closed = store
            .insert_episode(clinic.id, &patient(9), "p")
            .await
            .unwrap();
        let record = Access::default().anonymous(Action::Create, "messages");
        store
            .transition(closed.id, EpisodeState::Cancelled, &record)
            .await
            .unwrap();

        let sends = sends_to(&open, closed.id);
        let outcomes = append_all_at_once(&store, &sends, None).await;

        let mut created = std::collections::HashMap::new();
        for ((episode, id, _, hash), outcome) in sends.iter().zip(&outcomes) {
            match outcome {
                Ok(Appended::Created(p)) => {
                    assert!(
                        created
                            .insert(*id, (*episode, p.seq, hash.clone()))
                            .is_none(),
                        "{backend:?}: {id} created twice"
                    );
                }
                Ok(Appended::Replayed(_) | Appended::Conflict) => {}
                Ok(Appended::Stale) => panic!("{backend:?}: stale without a version"),
                Err(EpisodeRefusal::Closed(state)) => {
                    assert_eq!(*episode, closed.id, "{backend:?}");
                    assert_eq!(*state, "cancelled");
                }
                Err(e) => panic!("{backend:?}: {e}"),
            }
        }
        assert_eq!(created.len(), 120, "{backend:?}: one new message per id");
        for ((_, id, _, hash), outcome) in sends.iter().zip(&outcomes) {
            match outcome {
                Ok(Appended::Replayed(p)) => {
                    let (_, seq, original) = &created[id];
                    assert_eq!((p.seq, hash), (*seq, original), "{backend:?}: a retry");
                }
                Ok(Appended::Conflict) => {
                    assert_ne!(&created[id].2, hash, "{backend:?}: a conflict");
                }
                _ => {}
            }
        }
        let count = |wanted: fn(&Result<Appended, EpisodeRefusal>) -> bool| {
            outcomes.iter().filter(|o| wanted(o)).count()
        };
        assert_eq!(count(|o| matches!(o, Ok(Appended::Replayed(_)))), 10);
        assert_eq!(count(|o| matches!(o, Ok(Appended::Conflict))), 5);
        assert_eq!(count(Result::is_err), 5);

        let mut conn = icbt_e2e::connect_database(dir.path(), db.as_ref()).await;
        for episode in &open {
            let stored = store
                .messages_after(episode.id, 0, 1000, false)
                .await
                .unwrap();
            let seqs: Vec<i64> = stored.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "{backend:?}: gap-free");
            for m in &stored {
                let (episode_of, seq, _) = &created[&m.id];
                assert_eq!((episode_of, *seq), (&episode.id, m.seq), "{backend:?}");
            }
            let outbox = outbox_seqs(&mut conn, episode.id).await;
            assert_eq!(outbox, seqs, "{backend:?}: outbox in sequence order");
        }
        let records: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM audit_records WHERE resource_type = 'messages' AND action = 'create'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get("n");
        // One per new message, and the closed episode's transition.
        assert_eq!(records, 121, "{backend:?}");
        if backend == Backend::Postgres {
            assert!(
                store.messages_appended_in_batches() > 0,
                "sends queued together share a commit"
            );
        }
        store.close().await;
    }
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
async fn a_send_decided_on_a_kept_context_commits_only_while_nothing_it_read_has_changed() {
    use icbt_auth::identity::HprNumber;
    use icbt_gateway::audit::{Access, Action};
    use icbt_gateway::storage::{Appended, CareTeamEntry, Owner};
    for backend in backends() {
        let (dir, db, store, clinic) = store_with_clinic(backend).await;
        let episode = store
            .insert_episode(clinic.id, &patient(1), "p")
            .await
            .unwrap();
        let member = |hpr: &str| CareTeamEntry {
            hpr_number: HprNumber::parse(hpr).unwrap(),
            cover: false,
            until_ms: None,
        };
        let record = || Access::default().anonymous(Action::Update, "care-team");
        store
            .set_care_team(episode.id, &[member("565501872")], &record())
            .await
            .unwrap();
        let therapist = Owner {
            kind: "clinician",
            reference: "565501872".into(),
        };
        let messages = |n: usize| -> Vec<Send> {
            (0..n)
                .map(|i| {
                    let id = uuid::Uuid::new_v4();
                    (episode.id, id, format!("m{i}"), format!("h{id}"))
                })
                .collect()
        };
        let stored = || async {
            store
                .messages_after(episode.id, 0, 1000, false)
                .await
                .unwrap()
                .len()
        };

        let read_now = || async {
            store
                .send_context(episode.id, &therapist)
                .await
                .unwrap()
                .unwrap()
        };
        assert!(store.kept_send_context(episode.id, &therapist).is_none());
        let read = read_now().await;
        let kept = store.kept_send_context(episode.id, &therapist).unwrap();
        assert!(std::sync::Arc::ptr_eq(&read, &kept), "{backend:?}");
        let at = Some(kept.version);
        let outcomes = append_all_at_once(&store, &messages(8), at).await;
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Ok(Appended::Created(_)))),
            "{backend:?}: current, so committed: {outcomes:?}"
        );

        // The care team changes: nothing decided at the old version commits, alone or
        // in a batch, and the kept copy is gone.
        store
            .set_care_team(episode.id, &[member("100000001")], &record())
            .await
            .unwrap();
        let outcomes = append_all_at_once(&store, &messages(8), at).await;
        assert!(
            outcomes.iter().all(|o| matches!(o, Ok(Appended::Stale))),
            "{backend:?}: {outcomes:?}"
        );
        assert_eq!(
            stored().await,
            8,
            "{backend:?}: a stale send commits nothing"
        );
        assert!(store.kept_send_context(episode.id, &therapist).is_none());

        let read = read_now().await;
        assert!(read.version > kept.version, "{backend:?}");
        assert_eq!(read.team.len(), 1);
        assert_eq!(read.team[0].hpr_number.as_str(), "100000001");
        let outcomes = append_all_at_once(&store, &messages(1), Some(read.version)).await;
        assert!(
            matches!(outcomes[0], Ok(Appended::Created(_))),
            "{backend:?}"
        );

        // Any writer counts, not only the gateway's own code: a device revoked by hand.
        let mut conn = icbt_e2e::connect_database(dir.path(), db.as_ref()).await;
        sqlx::query(
            "INSERT INTO devices (device_id, owner_kind, owner_ref, signing_jwk, encryption_kid, \
             encryption_jwk, published_at_ms, expires_at_ms, publish_index) \
             VALUES ('d', 'clinician', '100000001', '{}', 'k', '{}', 0, 9999999999999, 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let read = read_now().await;
        assert_eq!(read.devices.len(), 1, "{backend:?}");
        sqlx::query("UPDATE devices SET revoked_at_ms = 0 WHERE device_id = 'd'")
            .execute(&mut conn)
            .await
            .unwrap();
        let outcomes = append_all_at_once(&store, &messages(1), Some(read.version)).await;
        assert!(matches!(outcomes[0], Ok(Appended::Stale)), "{backend:?}");
        assert!(
            read_now().await.devices.is_empty(),
            "{backend:?}: revoked, left out"
        );
        // Decided on fresh rows (no version), a send is appended as before.
        let outcomes = append_all_at_once(&store, &messages(1), None).await;
        assert!(
            matches!(outcomes[0], Ok(Appended::Created(_))),
            "{backend:?}"
        );
        assert_eq!(stored().await, 10, "{backend:?}");
        store.close().await;
    }
}

/// A store of its own on `backend` with one clinic; the directory and database live as
/// long as the caller keeps them.
async fn store_with_clinic(
    backend: Backend,
) -> (
    tempfile::TempDir,
    Option<icbt_e2e::TestDatabase>,
    Store,
    icbt_gateway::domain::episode::Clinic,
) {
    let dir = tempfile::tempdir().unwrap();
    let (config, db) = storage_for(backend, dir.path()).await;
    let store = Store::open(&config).await.unwrap();
    let org = OrgNumber::parse("974760673").unwrap();
    let clinic = store.insert_clinic("Klinikk", &org).await.unwrap();
    (dir, db, store, clinic)
}

type Send = (
    icbt_gateway::domain::episode::EpisodeId,
    uuid::Uuid,
    String,
    String,
);

/// Appends every (episode, id, body, hash) at once, as so many concurrent senders, each
/// decided at `context_version` (see `Store::kept_send_context`).
async fn append_all_at_once(
    store: &Store,
    sends: &[Send],
    context_version: Option<i64>,
) -> Vec<Result<icbt_gateway::storage::Appended, icbt_gateway::storage::EpisodeRefusal>> {
    use icbt_gateway::audit::{Access, Action};
    use icbt_gateway::storage::{Audience, NewMessage};
    let appends = sends.iter().map(|(episode, id, body, hash)| {
        let store = &store;
        async move {
            let message = NewMessage {
                episode: *episode,
                id: *id,
                kind: "message",
                sender_kind: "patient",
                sender_ref: "patient",
                sender_device: "device",
                recipients: "[]",
                content_type: "application/octet-stream",
                body: body.as_bytes(),
                attachments: "[]",
                request_hash: hash,
                audience: Audience::All,
                context_version,
            };
            let mut record = Access::default().anonymous(Action::Create, "messages");
            record.resource_id = Some(id.to_string());
            store.append_message(&message, &record).await
        }
    });
    futures_util::future::join_all(appends).await
}

/// (episode, message id, body, hash): 120 new messages spread over `open`; the first ten
/// sent twice alike (retries), the next five twice with another body (conflicts); five to
/// `closed`.
fn sends_to(
    open: &[icbt_gateway::domain::episode::Episode],
    closed: icbt_gateway::domain::episode::EpisodeId,
) -> Vec<Send> {
    let mut sends = Vec::new();
    for i in 0..120_usize {
        let episode = open[i % open.len()].id;
        let id = uuid::Uuid::new_v4();
        sends.push((episode, id, format!("m{i}"), format!("h{i}")));
        if i < 10 {
            sends.push((episode, id, format!("m{i}"), format!("h{i}")));
        } else if i < 15 {
            sends.push((episode, id, format!("other{i}"), format!("other{i}")));
        }
    }
    for i in 0..5 {
        sends.push((
            closed,
            uuid::Uuid::new_v4(),
            format!("c{i}"),
            format!("c{i}"),
        ));
    }
    sends
}

/// The message rows of `episode`'s outbox, by outbox id: the order the exporter takes them.
async fn outbox_seqs(
    conn: &mut sqlx::AnyConnection,
    episode: icbt_gateway::domain::episode::EpisodeId,
) -> Vec<i64> {
    use sqlx::Row;
    sqlx::query(
        "SELECT message_seq FROM outbox WHERE episode_id = $1 AND kind = 'message' ORDER BY id",
    )
    .bind(episode.to_string())
    .fetch_all(conn)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get("message_seq"))
    .collect()
}

/// DPoP proof ids checked at once (on PostgreSQL, recorded in shared batches): of
/// concurrent requests with one id, exactly one is a first use; an id recorded before
/// is a replay for all of them.
#[tokio::test]
async fn concurrent_proof_ids_are_each_first_used_once() {
    use icbt_auth::dpop::ReplayStore;
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let (config, _db) = storage_for(backend, dir.path()).await;
        let store = Store::open(&config).await.unwrap();
        let expires = icbt_auth::now_secs() + 120;
        for k in 0..20 {
            assert!(store.first_use(&format!("old{k}"), expires).await.unwrap());
        }
        // 200 fresh ids, each asked three times, and the 20 old ids once each.
        let mut keys: Vec<String> = (0..600).map(|i| format!("new{}", i / 3)).collect();
        keys.extend((0..20).map(|k| format!("old{k}")));
        let answers =
            futures_util::future::join_all(keys.iter().map(|key| store.first_use(key, expires)))
                .await;
        let mut firsts = std::collections::HashMap::new();
        for (key, answer) in keys.iter().zip(answers) {
            if answer.unwrap() {
                *firsts.entry(key.clone()).or_insert(0) += 1;
            }
        }
        assert_eq!(firsts.len(), 200, "{backend:?}: every new id once");
        assert!(firsts.keys().all(|k| k.starts_with("new")), "{backend:?}");
        assert!(firsts.values().all(|n| *n == 1), "{backend:?}: {firsts:?}");
        store.close().await;
    }
}

/// An access log as gateways of schema 17 kept it (each record row updated with its leaf)
/// moves to the leaves table at the next start: it verified before (checked here from its
/// rows, as that release's verify did), verifies after, and its waiting records and new
/// ones join the same tree.
#[tokio::test]
async fn an_access_log_of_schema_17_moves_to_the_leaves_table_and_still_verifies() {
    use icbt_gateway::audit::sequencer::AuditLog;
    use icbt_gateway::audit::verify::walk;
    use icbt_gateway::audit::{Access, Action};
    use icbt_gateway::storage::AuditFilter;
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let (config, db) = storage_for(backend, dir.path()).await;
        let audit = icbt_config::AuditConfig {
            signing_key_file: Some(icbt_e2e::audit_signing_key()),
            ..Default::default()
        };
        let log = AuditLog::from_config(&audit, dir.path()).unwrap();
        let now = icbt_gateway::domain::now_ms();
        let record = |n: i64| {
            let mut r = Access::default().anonymous(
                if n % 3 == 0 {
                    Action::Create
                } else {
                    Action::Read
                },
                "messages",
            );
            r.patient = Some(
                if n % 2 == 0 {
                    "01018512345"
                } else {
                    "02029012345"
                }
                .into(),
            );
            r.recorded_at_ms = now - 1000 + n;
            r
        };

        // Schema 17: sealed at its first start (nothing of format 1), then 12 records in
        // two checkpoints, and 5 waiting.
        let old = Store::open_at_schema(&config, 17).await.unwrap();
        assert_eq!(old.seal_legacy_leaves(&log.signer).await.unwrap(), Some(0));
        let mut conn = icbt_e2e::connect_database(dir.path(), db.as_ref()).await;
        old.record_access(&(0..6).map(record).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(icbt_e2e::tamper::sequence_as_schema_17(&mut conn).await, 6);
        old.record_access(&(6..12).map(record).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(icbt_e2e::tamper::sequence_as_schema_17(&mut conn).await, 12);
        old.record_access(&(12..17).map(record).collect::<Vec<_>>())
            .await
            .unwrap();
        let leaves = verified_as_schema_17(&mut conn, &old, &log.signer).await;
        assert_eq!(leaves.len(), 12, "{backend:?}");
        sqlx::Connection::close(conn).await.unwrap();
        old.close().await;

        // The next start migrates; verify passes with the 5 waiting.
        let store = Store::open(&config).await.unwrap();
        let (report, pending) = walk(&store, &log, Vec::new(), now).await.unwrap();
        assert_eq!(report.problem, None, "{backend:?}: after the migration");
        assert_eq!(pending, 5, "{backend:?}");
        assert_eq!(
            store.audit_leaf_hashes(12).await.unwrap(),
            leaves,
            "{backend:?}: the leaves are the ones signed"
        );
        // The waiting records and new ones join the same tree, after the old leaves.
        store
            .record_access(&(17..20).map(record).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(log.sequence_all(&store).await.unwrap(), 8, "{backend:?}");
        let (report, pending) = walk(&store, &log, Vec::new(), now).await.unwrap();
        assert_eq!(report.problem, None, "{backend:?}: after new leaves");
        assert_eq!(pending, 0);
        let indexes = |found: Vec<icbt_gateway::audit::Stored>| {
            found
                .iter()
                .map(|s| s.leaf_index.unwrap())
                .collect::<Vec<_>>()
        };
        let one_patient = AuditFilter {
            patient: Some("02029012345".into()),
            ..Default::default()
        };
        assert_eq!(
            indexes(store.audit_page(&one_patient, None, 100).await.unwrap()),
            (0..20).filter(|i| i % 2 == 1).collect::<Vec<u64>>(),
            "{backend:?}: searched by the leaves' copies, in tree order"
        );
    }
}

/// What the verify of schema 17 checked, from the rows: each stored leaf is its record's,
/// and the newest checkpoint is signed and is the root of those leaves. Returns the leaves.
async fn verified_as_schema_17(
    conn: &mut sqlx::AnyConnection,
    old: &Store,
    signer: &icbt_merkle::Signer,
) -> Vec<icbt_merkle::Hash> {
    use sqlx::Row as _;
    let rows = sqlx::query(
        "SELECT id, recorded_at_ms, action, outcome, reason, principal_kind, principal_id, \
         principal_organisation, issuer, client_id, token_jti, resource_type, resource_id, episode_id, \
         patient, request_id, source, leaf_hash FROM audit_records WHERE leaf_index IS NOT NULL \
         ORDER BY leaf_index",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let mut tree = icbt_merkle::Tree::new();
    let mut leaves = Vec::new();
    for row in &rows {
        let leaf = icbt_e2e::tamper::record_of(row).leaf_hash(tree.size());
        let stored: String = row.try_get("leaf_hash").unwrap();
        assert_eq!(icbt_merkle::to_hex(&leaf), stored);
        tree.push(leaf);
        leaves.push(leaf);
    }
    let newest = old.audit_checkpoint(None).await.unwrap().unwrap();
    assert_eq!(
        (newest.checkpoint.size, newest.checkpoint.root),
        (tree.size(), tree.root())
    );
    newest.verify(&[signer.public_key()]).unwrap();
    leaves
}

/// A PostgreSQL store and the test access log beside it, for the tests of what
/// concurrent transactions do to the log; `None` without PostgreSQL (SQLite writes one
/// transaction at a time).
struct PostgresLog {
    dir: tempfile::TempDir,
    db: Option<icbt_e2e::TestDatabase>,
    store: Store,
    log: std::sync::Arc<icbt_gateway::audit::sequencer::AuditLog>,
}

impl PostgresLog {
    /// A connection of its own to the store's database.
    async fn connect(&self) -> sqlx::AnyConnection {
        icbt_e2e::connect_database(self.dir.path(), self.db.as_ref()).await
    }
}

async fn postgres_log() -> Option<PostgresLog> {
    if !backends().contains(&Backend::Postgres) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (config, db) = storage_for(Backend::Postgres, dir.path()).await;
    let store = Store::open(&config).await.unwrap();
    let log = icbt_gateway::audit::sequencer::AuditLog::from_config(
        &icbt_config::AuditConfig::default(),
        dir.path(),
    )
    .unwrap();
    Some(PostgresLog {
        dir,
        db,
        store,
        log: std::sync::Arc::new(log),
    })
}

/// An anonymous read of messages, the record these tests write.
fn read_record() -> icbt_gateway::audit::Record {
    use icbt_gateway::audit::{Access, Action};
    Access::default().anonymous(Action::Read, "messages")
}

/// A record written by a transaction that began before another but commits after it has
/// the lower position: the sequencer must not pass it while that transaction runs, or it
/// would land behind the cursor and never join the tree (PostgreSQL; SQLite writes one
/// transaction at a time).
#[tokio::test]
async fn a_record_committed_late_by_an_older_transaction_still_joins_the_tree() {
    use icbt_gateway::audit::verify::walk;
    let Some(pg) = postgres_log().await else {
        return;
    };
    let (store, log, record) = (pg.store.clone(), pg.log.clone(), read_record);

    let mut older = pg.connect().await;
    let late = uuid::Uuid::new_v4().to_string();
    sqlx::query("BEGIN").execute(&mut older).await.unwrap();
    sqlx::query(
        "INSERT INTO audit_records (id, recorded_at_ms, action, outcome, principal_kind, resource_type) \
         VALUES ($1, 1, 'read', 'success', 'system', 'messages')",
    )
    .bind(&late)
    .execute(&mut older)
    .await
    .unwrap();
    store.record_access(&[record(), record()]).await.unwrap();
    assert_eq!(
        store.sequence_audit(&log.signer, 100).await.unwrap(),
        0,
        "nothing passes a transaction that still runs"
    );
    sqlx::query("COMMIT").execute(&mut older).await.unwrap();

    assert_eq!(log.sequence_all(&store).await.unwrap(), 3);
    let (report, pending) = walk(&store, &log, Vec::new(), icbt_gateway::domain::now_ms())
        .await
        .unwrap();
    assert_eq!((report.problem, pending), (None, 0));
    assert_eq!(
        store
            .audit_index_of(uuid::Uuid::parse_str(&late).unwrap())
            .await
            .unwrap(),
        Some(0),
        "the older transaction's record comes first"
    );
}

/// A sequencer batch that waits for another instance's batch holds nothing back: it has
/// no transaction id while it waits, so records (and messages) committed meanwhile are
/// below the horizon that streams and the sequencer read at (PostgreSQL). Writers of the
/// tree are still ordered: the batch waits for the lock, then sequences what was
/// committed meanwhile.
#[tokio::test]
async fn a_sequencer_batch_waiting_for_the_head_holds_back_no_new_record() {
    use icbt_gateway::audit::verify::walk;
    let Some(pg) = postgres_log().await else {
        return;
    };
    let (store, log, record) = (pg.store.clone(), pg.log.clone(), read_record);

    // Another instance's batch holds the head.
    let mut other = pg.connect().await;
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)::text")
        .bind(icbt_gateway::storage::AUDIT_HEAD_LOCK)
        .execute(&mut other)
        .await
        .unwrap();
    let waiting = {
        let (store, log) = (store.clone(), log.clone());
        tokio::spawn(async move { store.sequence_audit(&log.signer, 100).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the batch waits for the head");

    let first = record();
    store
        .record_access(std::slice::from_ref(&first))
        .await
        .unwrap();
    let mut reader = pg.connect().await;
    // The horizon is the whole cluster's: a transaction of another test running at the
    // same moment holds it back too, until it ends. The waiting batch would hold it back
    // for as long as it waits, which outlasts this deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let below = loop {
        let (below,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM audit_records \
             WHERE id = $1 AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
        )
        .bind(first.id.to_string())
        .fetch_one(&mut reader)
        .await
        .unwrap();
        if below == 1 || std::time::Instant::now() >= deadline {
            break below;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(!waiting.is_finished(), "the batch still waits for the head");
    assert_eq!(
        below, 1,
        "a record committed while the batch waits is not held back"
    );

    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    assert_eq!(
        waiting.await.unwrap().unwrap(),
        1,
        "then it sequences that record"
    );
    store.record_access(&[record()]).await.unwrap();
    assert_eq!(log.sequence_all(&store).await.unwrap(), 1);
    let (report, pending) = walk(&store, &log, Vec::new(), icbt_gateway::domain::now_ms())
        .await
        .unwrap();
    assert_eq!((report.problem, pending), (None, 0));
    assert_eq!(store.audit_index_of(first.id).await.unwrap(), Some(0));
}

/// A stream catching up near the present reads the messages after its position, not the
/// whole history of the caller's episodes, even through a prepared statement's generic
/// plan on tables that were never analysed (PostgreSQL; SQLite reads by rowid). Before
/// migration 20 such a read walked every message of a therapist's episodes: a reconnect
/// storm held every pooled connection for seconds and requests were refused with 503.
#[tokio::test]
async fn a_stream_catching_up_near_the_present_reads_only_what_is_new() {
    use icbt_auth::identity::HprNumber;
    use icbt_gateway::audit::{Access, Action};
    use icbt_gateway::storage::CareTeamEntry;
    use icbt_gateway::storage::stream::{StreamFilter, StreamPosition, catch_up_statement};
    use sqlx::Executor as _;
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let (dir, db, store, clinic) = store_with_clinic(Backend::Postgres).await;
    let hpr = HprNumber::parse("565501872").unwrap();
    let team = [CareTeamEntry {
        hpr_number: hpr.clone(),
        cover: false,
        until_ms: None,
    }];
    let record = || Access::default().anonymous(Action::Update, "care-team");
    for n in 0..20 {
        let episode = store
            .insert_episode(clinic.id, &patient(n + 1), "p")
            .await
            .unwrap();
        store
            .set_care_team(episode.id, &team, &record())
            .await
            .unwrap();
    }
    let mut conn = icbt_e2e::connect_database(dir.path(), db.as_ref()).await;
    // 200 messages in each of the therapist's 20 episodes: a history of 4 000.
    conn.execute(
        "INSERT INTO messages (episode_id, seq, id, kind, sender_kind, sender_ref, \
         sender_device, recipients, content_type, body, request_hash, created_at_ms, \
         attachments, audience) \
         SELECT e.id, s, gen_random_uuid()::text, 'message', 'clinician', '565501872', 'd', \
         '[]', 'application/octet-stream', '\\x00'::bytea, 'h', 0, '[]', 'all' \
         FROM episodes e, generate_series(1, 200) s",
    )
    .await
    .unwrap();
    let now = icbt_gateway::domain::now_ms();
    let filter = StreamFilter::CareTeam(hpr.clone());

    // What a stream reads is unchanged: all of it from the start, in order; nothing new
    // at the present.
    let from_start = store
        .stream_after(&filter, StreamPosition { tx: 0, pos: 0 }, now, 100)
        .await
        .unwrap();
    assert_eq!(from_start.len(), 100);
    assert!(from_start.windows(2).all(|w| w[0].position < w[1].position));
    let head = store.stream_head().await.unwrap();
    assert!(
        store
            .stream_after(&filter, head, now, 100)
            .await
            .unwrap()
            .is_empty()
    );

    // The rows of `messages` a catch-up at the present visits, read from the plan the
    // prepared statement gets once PostgreSQL settles on a generic one.
    let (sql, values) =
        catch_up_statement(icbt_gateway::storage::Backend::Postgres, &filter).unwrap();
    assert_eq!(values, vec![hpr.as_str().to_owned()]);
    conn.execute("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!("PREPARE catch_up AS {sql}")))
        .await
        .unwrap();
    // The plan as text: the Any driver reads no `json` column.
    conn.execute(
        "CREATE FUNCTION pg_temp.plan_of(q text) RETURNS text LANGUAGE plpgsql AS $$ \
         DECLARE p json; BEGIN EXECUTE 'EXPLAIN (ANALYZE, FORMAT JSON) ' || q INTO p; \
         RETURN p::text; END $$",
    )
    .await
    .unwrap();
    let plan: String = sqlx::query_scalar("SELECT pg_temp.plan_of($1)")
        .bind(format!(
            "EXECUTE catch_up({}, {}, {now}, '{}', 100)",
            head.tx,
            head.pos,
            hpr.as_str()
        ))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    let visited = rows_visited(&plan[0]["Plan"], "messages");
    assert!(
        visited < 50.0,
        "a catch-up at the present visited {visited} of 4 000 messages:\n{plan:#}"
    );
    drop((conn, store, db, dir));
}

/// Rows a plan's scans of `table` returned or filtered out, over every loop.
fn rows_visited(node: &serde_json::Value, table: &str) -> f64 {
    let own = if node["Relation Name"] == table {
        let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
        let per_loop = node["Actual Rows"].as_f64().unwrap_or(0.0)
            + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0)
            + node["Rows Removed by Index Recheck"]
                .as_f64()
                .unwrap_or(0.0);
        per_loop * loops
    } else {
        0.0
    };
    own + node["Plans"].as_array().map_or(0.0, |plans| {
        plans.iter().map(|p| rows_visited(p, table)).sum()
    })
}
