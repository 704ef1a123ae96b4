//! Storage round trips on SQLite and PostgreSQL, each test in its own database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code stops at the first surprise

use icbt_e2e::{Backend, backends, storage_for};
use icbt_gateway::episode::{ClinicId, EpisodeState, NationalId, OrgNumber};
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
        assert_eq!(
            store.episodes_of_patient(&p).await.unwrap(),
            vec![first, second],
            "{backend:?}"
        );
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
