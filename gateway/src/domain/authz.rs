//! Changes to who may read what, as streams see them: a committed [`Change`] (a logout,
//! a device revoked, a care team changed) may end open event streams and long polls, and
//! an [`EndReason`] is what such a stream's last event tells its client.

use serde::Serialize;

use super::episode::CareTeamEntry;

/// The NOTIFY channel for authorization changes (PostgreSQL).
pub const CHANNEL: &str = "icbt_authz";

/// Why a stream or long poll ended, as its last event says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// The token or login session that opened it expired: re-authenticate.
    Expired,
    /// Its login session was logged out: log in again.
    LoggedOut,
    /// The device it was opened for was revoked.
    DeviceRevoked,
    /// The principal left the care team of one of its episodes: reconnect, and that
    /// episode's messages are no longer among those delivered.
    CareTeamLeft,
    /// A cover period of the principal ended: as `care-team-left`.
    CoverEnded,
    /// Changes may have been missed (this instance lost its notifications for a while):
    /// reconnect, and the new stream is authorized afresh.
    Recheck,
    /// The gateway is shutting down: reconnect (to another instance).
    Shutdown,
}

impl EndReason {
    /// The `data` of the stream's last event.
    pub fn event_data(self) -> String {
        serde_json::json!({ "reason": self }).to_string()
    }
}

/// A committed change that may end open streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The login session with this id hash ended.
    SessionEnded(String),
    /// The device was revoked.
    DeviceRevoked(String),
    /// The clinician lost access to an episode: removed from its team, or their cover
    /// shortened to now or earlier.
    CareTeamLeft(String),
    /// The clinician's care-team entries changed otherwise (added, extended, shortened to
    /// a later time): their streams look up when their next cover ends.
    CareTeamChanged(String),
    /// Changes may have been missed: every stream ends.
    Unknown,
}

impl Change {
    /// The NOTIFY payload.
    pub fn encode(&self) -> String {
        match self {
            Self::SessionEnded(id) => format!("session {id}"),
            Self::DeviceRevoked(id) => format!("device {id}"),
            Self::CareTeamLeft(hpr) => format!("left {hpr}"),
            Self::CareTeamChanged(hpr) => format!("changed {hpr}"),
            Self::Unknown => "unknown".into(),
        }
    }

    /// Reads a NOTIFY payload; anything unreadable counts as [`Change::Unknown`], which
    /// ends every stream rather than none.
    pub fn decode(payload: &str) -> Self {
        match payload.split_once(' ') {
            Some(("session", id)) => Self::SessionEnded(id.into()),
            Some(("device", id)) => Self::DeviceRevoked(id.into()),
            Some(("left", hpr)) => Self::CareTeamLeft(hpr.into()),
            Some(("changed", hpr)) => Self::CareTeamChanged(hpr.into()),
            _ => Self::Unknown,
        }
    }
}

/// What replacing an episode's care team `old` with `new` at `now_ms` changes for its
/// clinicians' streams: one change per clinician whose access ends now or whose entry
/// changes otherwise.
pub fn team_changes(old: &[CareTeamEntry], new: &[CareTeamEntry], now_ms: i64) -> Vec<Change> {
    let live = |team: &[CareTeamEntry], hpr: &str| {
        team.iter()
            .any(|m| m.hpr_number.as_str() == hpr && m.until_ms.is_none_or(|u| u > now_ms))
    };
    let entry = |team: &[CareTeamEntry], hpr: &str| {
        team.iter().find(|m| m.hpr_number.as_str() == hpr).cloned()
    };
    let mut hprs: Vec<&str> = old
        .iter()
        .chain(new)
        .map(|m| m.hpr_number.as_str())
        .collect();
    hprs.sort_unstable();
    hprs.dedup();
    hprs.into_iter()
        .filter_map(|hpr| {
            if live(old, hpr) && !live(new, hpr) {
                Some(Change::CareTeamLeft(hpr.to_owned()))
            } else if entry(old, hpr) != entry(new, hpr) {
                Some(Change::CareTeamChanged(hpr.to_owned()))
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(hpr: &str, until_ms: Option<i64>) -> CareTeamEntry {
        CareTeamEntry {
            hpr_number: icbt_auth::identity::HprNumber::parse(hpr).unwrap(),
            cover: until_ms.is_some(),
            until_ms,
        }
    }

    #[test]
    fn a_replaced_team_ends_the_access_of_whoever_left_or_was_cut_short() {
        let now = 1_000;
        let old = [
            member("1001", None),
            member("1002", Some(5_000)),
            member("1003", Some(5_000)),
            member("1004", None),
            member("1005", Some(500)),
        ];
        let new = [
            member("1001", None),
            member("1002", Some(now)),
            member("1003", Some(9_000)),
            member("1005", Some(8_000)),
            member("1006", None),
        ];
        assert_eq!(
            team_changes(&old, &new, now),
            [
                Change::CareTeamLeft("1002".into()),
                Change::CareTeamChanged("1003".into()),
                Change::CareTeamLeft("1004".into()),
                Change::CareTeamChanged("1005".into()),
                Change::CareTeamChanged("1006".into()),
            ]
        );
        assert!(team_changes(&old, &old, now).is_empty());
    }

    #[test]
    fn changes_round_trip_and_anything_unreadable_ends_every_stream() {
        for change in [
            Change::SessionEnded("abc_-".into()),
            Change::DeviceRevoked("thumb".into()),
            Change::CareTeamLeft("565501872".into()),
            Change::CareTeamChanged("565501872".into()),
            Change::Unknown,
        ] {
            assert_eq!(Change::decode(&change.encode()), change);
        }
        for odd in ["", "session", "bogus 1", "left"] {
            assert_eq!(Change::decode(odd), Change::Unknown, "{odd:?}");
        }
    }

    #[test]
    fn reasons_are_kebab_case_json() {
        assert_eq!(
            EndReason::CareTeamLeft.event_data(),
            r#"{"reason":"care-team-left"}"#
        );
        assert_eq!(
            EndReason::LoggedOut.event_data(),
            r#"{"reason":"logged-out"}"#
        );
    }
}
