//! What the review reports read: a time window of the access log in order, and the
//! care-team history of the episodes in it. The rules are in [`crate::audit::review`].

use uuid::Uuid;

use super::audit::{LEAVES, STORED_COLUMNS};
use super::{StorageError, Store, rows};
use crate::domain::audit::Stored;

/// One stretch of a member's place on an episode's care team (`care_team_periods`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamPeriod {
    pub episode: Uuid,
    pub hpr_number: String,
    pub from_ms: i64,
    /// When the team was next replaced; none while it holds.
    pub to_ms: Option<i64>,
    /// A cover's own end.
    pub until_ms: Option<i64>,
}

/// Which records of a window a report needs: the database leaves the rest out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowRecords {
    /// Records of health personnel (`principal_kind = 'clinician'`).
    Personnel,
    /// Refusals.
    Refused,
}

impl WindowRecords {
    fn condition(self) -> &'static str {
        match self {
            Self::Personnel => "r.principal_kind = 'clinician'",
            Self::Refused => "r.outcome = 'refused'",
        }
    }
}

/// `episode_id, hpr_number, from_ms, to_ms, until_ms`.
type PeriodRow = (String, String, i64, Option<i64>, Option<i64>);

impl Store {
    /// Up to `limit` sequenced records of `[from_ms, to_ms)` of the kind `only` names,
    /// after `after` (time, tree position), in that order. The `audit_leaves_time` index
    /// serves it.
    pub async fn audit_window(
        &self,
        from_ms: i64,
        to_ms: i64,
        only: WindowRecords,
        after: Option<(i64, u64)>,
        limit: i64,
    ) -> Result<Vec<Stored>, StorageError> {
        let (at, index) = after.map_or((from_ms, -1), |(at, i)| {
            (at, i64::try_from(i).unwrap_or(i64::MAX))
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {STORED_COLUMNS} FROM {LEAVES} \
             WHERE l.recorded_at_ms >= $1 AND l.recorded_at_ms < $2 \
             AND (l.recorded_at_ms > $3 OR (l.recorded_at_ms = $3 AND l.leaf_index > $4)) AND {} \
             ORDER BY l.recorded_at_ms, l.leaf_index LIMIT $5",
            only.condition()
        )))
        .bind(from_ms)
        .bind(to_ms)
        .bind(at)
        .bind(index)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::read::<Stored>).collect()
    }

    /// Ids of every episode of these clinics (a hospital auditor's scope).
    pub async fn episodes_of_clinics(
        &self,
        clinics: &[String],
    ) -> Result<std::collections::HashSet<String>, StorageError> {
        let mut ids = std::collections::HashSet::new();
        for clinic in clinics {
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT e.id FROM episodes e JOIN clinics c ON c.id = e.clinic_id \
                 WHERE c.org_number = $1",
            )
            .bind(clinic)
            .fetch_all(&self.pool)
            .await?;
            ids.extend(rows);
        }
        Ok(ids)
    }

    /// Every care-team stretch that overlaps `[from_ms, to_ms)`.
    pub async fn team_periods_between(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<TeamPeriod>, StorageError> {
        let rows: Vec<PeriodRow> = sqlx::query_as(
            "SELECT episode_id, hpr_number, from_ms, to_ms, until_ms FROM care_team_periods \
             WHERE from_ms < $1 AND (to_ms IS NULL OR to_ms > $2)",
        )
        .bind(to_ms)
        .bind(from_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(episode, hpr_number, from_ms, to_ms, until_ms)| {
                Ok(TeamPeriod {
                    episode: Uuid::parse_str(&episode)
                        .map_err(|_| StorageError::Corrupt("care_team_periods.episode_id"))?,
                    hpr_number,
                    from_ms,
                    to_ms,
                    until_ms,
                })
            })
            .collect()
    }
}
