//! What a send is decided on: the episode with its clinic and care team, and the devices
//! of everyone the message may be sealed to or sent from. Read in one round trip, and
//! kept in memory between sends of the same caller in the same episode.
//!
//! A kept copy is trusted only as far as the commit. Every change to these rows, by any
//! writer on any instance, bumps `send_context_version` in its own transaction (database
//! triggers, migration 19), and the read returns the version it saw. A send decided on a
//! kept copy carries that version into its append, which commits nothing and answers
//! [`Appended::Stale`](super::Appended::Stale) if the version has moved; the sender then
//! decides again on rows read fresh. So a kept copy never lets through a send that the
//! rows at commit time would refuse: a therapist taken off the care team, or a revoked
//! device, stops sending at once, on every instance.
//!
//! The version is one number for the whole database: a change anywhere drops every kept
//! copy. Changes are rare beside sends (a device published, a care team edited), and a
//! dropped copy costs one read, what every send cost before copies were kept.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use sqlx::FromRow as _;

use super::devices::{COLUMNS, DeviceRecord};
use super::rows;
use super::{StorageError, Store};
use crate::domain::episode::{CareTeamEntry, Clinic, Episode, EpisodeId};
use crate::domain::participants::Owner;

/// The current version, as a subquery: every append of a send decided on a kept copy
/// compares the copy's version with it in the statement that bumps the episode's
/// sequence, so a moved version bumps nothing and appends nothing.
pub(super) const CURRENT_VERSION: &str = "(SELECT version FROM send_context_version WHERE id = 1)";

/// Copies kept at most. One is a few KiB (mostly public keys), so this bounds the
/// memory at about 10 MiB; past it, an arbitrary copy makes room.
const KEPT: usize = 4096;

/// What [`Store::send_context`] reads.
#[derive(Debug)]
pub struct EpisodeForSend {
    pub episode: Episode,
    pub clinic: Clinic,
    pub team: Vec<CareTeamEntry>,
    pub devices: Vec<DeviceRecord>,
    /// `send_context_version` as the read saw it.
    pub version: i64,
}

/// The copies kept, all read at one version.
#[derive(Clone, Default)]
pub(super) struct SendContexts(Arc<Mutex<Kept>>);

#[derive(Default)]
struct Kept {
    version: i64,
    copies: HashMap<(EpisodeId, Owner), Arc<EpisodeForSend>>,
}

// By hand: the keys name callers, some by national id.
impl std::fmt::Debug for SendContexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.0.lock().map(|k| (k.version, k.copies.len()));
        f.debug_struct("SendContexts")
            .field("version_and_copies", &kept.ok())
            .finish()
    }
}

impl SendContexts {
    fn get(&self, episode: EpisodeId, caller: &Owner) -> Option<Arc<EpisodeForSend>> {
        let kept = self.0.lock().ok()?;
        kept.copies.get(&(episode, caller.clone())).cloned()
    }

    /// Keeps a copy read at its version: a newer version drops every older copy, and an
    /// older one is not kept.
    fn keep(&self, caller: &Owner, context: &Arc<EpisodeForSend>) {
        let Ok(mut kept) = self.0.lock() else {
            return;
        };
        if context.version > kept.version {
            kept.version = context.version;
            kept.copies.clear();
        }
        if context.version < kept.version {
            return;
        }
        if kept.copies.len() >= KEPT
            && let Some(any) = kept.copies.keys().next().cloned()
        {
            kept.copies.remove(&any);
        }
        kept.copies
            .insert((context.episode.id, caller.clone()), context.clone());
    }

    /// The version has moved past `version`: copies read at it (or before) go.
    pub(super) fn moved_past(&self, version: i64) {
        if let Ok(mut kept) = self.0.lock()
            && kept.version <= version
        {
            kept.copies.clear();
        }
    }
}

impl Store {
    /// The copy kept from an earlier send of `caller` in episode `id`, if any. What is
    /// decided on it must be appended with its version (see the module's notes).
    pub fn kept_send_context(&self, id: EpisodeId, caller: &Owner) -> Option<Arc<EpisodeForSend>> {
        self.send_contexts.get(id, caller)
    }

    /// What a send is decided on, read now in one round trip, and kept for the next
    /// send: the episode with its clinic and care team (as [`Store::episode_with_team`]),
    /// and the devices of the patient, of each care-team member (ended cover included),
    /// of the clinic's journal and of `caller` that are active now, oldest first. A
    /// device revoked or expired stays so, so those are left out: what is kept is
    /// bounded by the active devices an owner may have, however many they revoked.
    pub async fn send_context(
        &self,
        id: EpisodeId,
        caller: &Owner,
    ) -> Result<Option<Arc<EpisodeForSend>>, StorageError> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            let nulls = |list: &str| {
                list.split(", ")
                    .map(|column| {
                        let (name, ty) = column.split_once(':').unwrap_or((column, "TEXT"));
                        format!("CAST(NULL AS {ty}) AS {name}")
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let device_nulls = nulls(
                "device_id, owner_kind, owner_ref, signing_jwk, encryption_kid, encryption_jwk, \
                 published_at_ms:BIGINT, expires_at_ms:BIGINT, revoked_at_ms:BIGINT, \
                 publish_index:BIGINT, revoke_index:BIGINT",
            );
            let episode_nulls = nulls(
                "id, clinic_id, patient_nin, programme, state, created_at_ms:BIGINT, \
                 updated_at_ms:BIGINT, c_id, c_name, c_org_number, c_created_at_ms:BIGINT, \
                 t_hpr_number, t_role, t_until_ms:BIGINT",
            );
            let devices = COLUMNS
                .split(", ")
                .map(|c| format!("d.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            // One statement, so the version is the one its rows were read at.
            format!(
                "WITH o (kind, ref) AS ( \
                   SELECT 'patient', patient_nin FROM episodes WHERE id = $1 \
                   UNION SELECT 'clinician', hpr_number FROM care_team WHERE episode_id = $1 \
                   UNION SELECT 'journal', c.org_number FROM episodes e \
                     JOIN clinics c ON c.id = e.clinic_id WHERE e.id = $1 \
                   UNION SELECT $2, $3) \
                 SELECT 0 AS part, v.version AS context_version, {columns}, {device_nulls} \
                   FROM {joins} CROSS JOIN send_context_version v WHERE e.id = $1 \
                 UNION ALL SELECT 1, CAST(NULL AS BIGINT), {episode_nulls}, {devices} \
                   FROM devices d JOIN o ON d.owner_kind = o.kind AND d.owner_ref = o.ref \
                   WHERE d.revoked_at_ms IS NULL AND d.expires_at_ms > $4 \
                 ORDER BY part, t_hpr_number, publish_index",
                columns = super::EPISODE_WITH_TEAM_COLUMNS,
                joins = super::EPISODE_WITH_TEAM_JOINS,
            )
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
            .bind(id.to_string())
            .bind(caller.kind)
            .bind(caller.reference.as_str())
            .bind(super::now_ms())
            .fetch_all(&self.pool)
            .await?;
        let mut found: Option<EpisodeForSend> = None;
        for r in &rows {
            let part = rows::PartRow::from_row(r)?;
            if part.part == 0 {
                let mut row = rows::EpisodeWithTeamRow::from_row(r)?;
                let member = row.member()?;
                if found.is_none() {
                    let (episode, clinic) = row.episode()?;
                    found = Some(EpisodeForSend {
                        episode,
                        clinic,
                        team: Vec::new(),
                        devices: Vec::new(),
                        version: part
                            .context_version
                            .ok_or(StorageError::Corrupt("send_context_version"))?,
                    });
                }
                if let Some(f) = found.as_mut() {
                    f.team.extend(member);
                }
            } else if let Some(f) = found.as_mut() {
                f.devices.push(rows::read::<DeviceRecord>(r)?);
            }
        }
        let Some(found) = found.map(Arc::new) else {
            return Ok(None);
        };
        self.send_contexts.keep(caller, &found);
        Ok(Some(found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::episode::{ClinicId, EpisodeState, NationalId, OrgNumber};

    fn context(episode: EpisodeId, version: i64) -> Arc<EpisodeForSend> {
        Arc::new(EpisodeForSend {
            episode: Episode {
                id: episode,
                clinic_id: ClinicId(uuid::Uuid::nil()),
                patient: NationalId::parse("01018512447").unwrap(),
                programme: "p".into(),
                state: EpisodeState::Active,
                created_at_ms: 0,
                updated_at_ms: 0,
            },
            clinic: Clinic {
                id: ClinicId(uuid::Uuid::nil()),
                name: "Klinikk".into(),
                org_number: OrgNumber::parse("974760673").unwrap(),
                created_at_ms: 0,
            },
            team: Vec::new(),
            devices: Vec::new(),
            version,
        })
    }

    fn caller() -> Owner {
        Owner {
            kind: "clinician",
            reference: "565501872".into(),
        }
    }

    #[test]
    fn copies_of_an_older_version_are_dropped_and_not_kept() {
        let kept = SendContexts::default();
        let (a, b) = (
            EpisodeId(uuid::Uuid::new_v4()),
            EpisodeId(uuid::Uuid::new_v4()),
        );
        kept.keep(&caller(), &context(a, 5));
        assert!(kept.get(a, &caller()).is_some());
        kept.keep(&caller(), &context(b, 6));
        assert!(kept.get(a, &caller()).is_none(), "read at 5, dropped at 6");
        kept.keep(&caller(), &context(a, 5));
        assert!(
            kept.get(a, &caller()).is_none(),
            "a late read at 5 is not kept"
        );
        kept.moved_past(5);
        assert!(
            kept.get(b, &caller()).is_some(),
            "6 is newer than what moved"
        );
        kept.moved_past(6);
        assert!(kept.get(b, &caller()).is_none());
    }

    #[test]
    fn copies_are_kept_per_caller_and_bounded() {
        let kept = SendContexts::default();
        let a = EpisodeId(uuid::Uuid::new_v4());
        kept.keep(&caller(), &context(a, 1));
        let other = Owner {
            kind: "clinician",
            reference: "100000001".into(),
        };
        assert!(kept.get(a, &other).is_none());
        for _ in 0..KEPT + 10 {
            kept.keep(&caller(), &context(EpisodeId(uuid::Uuid::new_v4()), 1));
        }
        assert_eq!(kept.0.lock().unwrap().copies.len(), KEPT);
    }
}
