//! How the hub finds the streams a new message may go to without looking at every open
//! stream: each stream is filed under the routes of its filter, and each message is
//! offered only to the streams filed under its own routes. The filter itself still
//! decides ([`StreamFilter::matches`]); a route only narrows whom it is asked about.
//!
//! The rule that makes this safe: whenever a filter matches an entry, the filter and the
//! entry share at least one route. A patient's stream matches only their own episodes, a
//! therapist's only episodes whose care team lists them, a system's only its clinics'.

use std::fmt;

use crate::storage::CareTeamEntry;
use crate::storage::stream::{StreamEntry, StreamFilter};

/// A key streams are filed under.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) enum Route {
    /// A patient's national id: held in memory for routing, never shown.
    Patient(String),
    /// A therapist's HPR number.
    Therapist(String),
    /// A clinic's organisation number.
    Clinic(String),
    /// The instance's own readers that see everything.
    Everything,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Patient(_) => f.write_str("Patient(..)"),
            Self::Therapist(hpr) => write!(f, "Therapist({hpr})"),
            Self::Clinic(org) => write!(f, "Clinic({org})"),
            Self::Everything => f.write_str("Everything"),
        }
    }
}

/// The routes a stream with `filter` is filed under.
pub(super) fn of_filter(filter: &StreamFilter) -> Vec<Route> {
    match filter {
        StreamFilter::Patient(pid) => vec![Route::Patient(pid.expose().to_owned())],
        StreamFilter::CareTeam(hpr) => vec![Route::Therapist(hpr.as_str().to_owned())],
        StreamFilter::Clinics(orgs) => orgs
            .iter()
            .map(|o| Route::Clinic(o.as_str().to_owned()))
            .collect(),
        StreamFilter::Everything => vec![Route::Everything],
    }
}

/// The routes of `entry`, whose episode's care team is `team`: every stream that may see
/// it is filed under one of them.
pub(super) fn of_entry(entry: &StreamEntry, team: &[CareTeamEntry]) -> Vec<Route> {
    let mut routes = Vec::with_capacity(3 + team.len());
    routes.push(Route::Everything);
    routes.push(Route::Patient(entry.patient.clone()));
    routes.push(Route::Clinic(entry.organisation.clone()));
    routes.extend(
        team.iter()
            .map(|m| Route::Therapist(m.hpr_number.as_str().to_owned())),
    );
    routes
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::domain::episode::{EpisodeId, NationalId, OrgNumber};
    use crate::storage::StoredMessage;
    use crate::storage::stream::StreamPosition;
    use icbt_auth::identity::HprNumber;

    pub(in crate::push) const PATIENTS: [&str; 2] = ["01018512528", "01018512870"];
    const CLINICS: [&str; 2] = ["974589095", "983974899"];

    pub(in crate::push) fn entry(patient: &str, organisation: &str, audience: &str) -> StreamEntry {
        StreamEntry {
            position: StreamPosition { tx: 1, pos: 1 },
            episode: EpisodeId(uuid::Uuid::nil()),
            message: StoredMessage {
                id: uuid::Uuid::nil(),
                seq: 1,
                kind: "message".into(),
                sender_kind: "therapist".into(),
                sender_ref: "1".into(),
                sender_device: "d".into(),
                recipients: "[]".into(),
                content_type: "application/jose+json".into(),
                body: Vec::new(),
                attachments: "[]".into(),
                created_at_ms: 0,
                audience: audience.into(),
            },
            patient: patient.into(),
            organisation: organisation.into(),
        }
    }

    fn member(hpr: &str, until_ms: Option<i64>) -> CareTeamEntry {
        CareTeamEntry {
            hpr_number: HprNumber::parse(hpr).unwrap(),
            cover: until_ms.is_some(),
            until_ms,
        }
    }

    fn filters() -> Vec<StreamFilter> {
        let mut filters = vec![StreamFilter::Everything];
        for p in PATIENTS {
            filters.push(StreamFilter::Patient(NationalId::parse(p).unwrap()));
        }
        for h in ["100", "200", "300"] {
            filters.push(StreamFilter::CareTeam(HprNumber::parse(h).unwrap()));
        }
        let org = |o: &str| OrgNumber::parse(o).unwrap();
        filters.push(StreamFilter::Clinics(vec![org(CLINICS[0])]));
        filters.push(StreamFilter::Clinics(vec![
            org(CLINICS[1]),
            org(CLINICS[0]),
        ]));
        filters.push(StreamFilter::Clinics(Vec::new()));
        filters
    }

    #[test]
    fn every_stream_a_message_matches_is_filed_under_one_of_its_routes() {
        let teams = [
            vec![],
            vec![member("100", None)],
            vec![member("100", None), member("200", Some(50))],
            vec![member("300", Some(5_000))],
        ];
        let mut matched = 0;
        let mut narrowed = 0;
        for patient in PATIENTS {
            for clinic in CLINICS {
                for audience in ["all", "care-team"] {
                    let e = entry(patient, clinic, audience);
                    for team in &teams {
                        let offered = of_entry(&e, team);
                        for filter in filters() {
                            let shared = of_filter(&filter).iter().any(|r| offered.contains(r));
                            if filter.matches(&e, team, 100) {
                                matched += 1;
                                assert!(shared, "{filter:?} matches but shares no route");
                            } else if !shared {
                                narrowed += 1;
                            }
                        }
                    }
                }
            }
        }
        // Not vacuous: many pairs match, and many are never offered at all.
        assert!(matched > 50, "{matched}");
        assert!(narrowed > 100, "{narrowed}");
    }

    #[test]
    fn a_route_never_shows_a_national_id() {
        let route = of_filter(&StreamFilter::Patient(
            NationalId::parse(PATIENTS[0]).unwrap(),
        ));
        assert_eq!(format!("{route:?}"), "[Patient(..)]");
    }
}
