//! Review reports: what in a stretch of the access log needs a reviewer's look, as the
//! Normen code of conduct asks of regular access-log review.
//!
//! - `off-team`: personnel acting on an episode while not on its care team at that moment;
//! - `after-hours`: personnel acting outside the configured working hours;
//! - `many-patients`: personnel touching more distinct patients in a day than configured;
//! - `refusal-bursts`: a principal refused many times within a few minutes;
//! - `dead-letters`: journal exports that went to a dead letter.
//!
//! Pure: a [`Reviewer`] is fed the window's records in time order and the care-team
//! history, and groups what it finds into [`Row`]s, each naming the records behind it.
//! [`run`] drives it over the database a page at a time, within a time limit.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use uuid::Uuid;

use super::{Action, Outcome, Stored};
use crate::storage::{StorageError, Store, TeamPeriod, WindowRecords};

/// The reports there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    OffTeam,
    AfterHours,
    ManyPatients,
    RefusalBursts,
    DeadLetters,
}

impl Kind {
    pub const ALL: [Self; 5] = [
        Self::OffTeam,
        Self::AfterHours,
        Self::ManyPatients,
        Self::RefusalBursts,
        Self::DeadLetters,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OffTeam => "off-team",
            Self::AfterHours => "after-hours",
            Self::ManyPatients => "many-patients",
            Self::RefusalBursts => "refusal-bursts",
            Self::DeadLetters => "dead-letters",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What the reports count as unusual; from `[audit.review]`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub time_zone: TimeZone,
    /// Working hours on weekdays, minutes after local midnight: `[start, end)`.
    pub day_start_minute: u16,
    pub day_end_minute: u16,
    pub distinct_patients_per_day: u32,
    pub refusals_per_burst: u32,
    pub burst_window_ms: i64,
    pub max_range_ms: i64,
    pub time_limit: Duration,
}

impl Settings {
    pub fn from_config(config: &icbt_config::ReviewConfig) -> Result<Self, String> {
        let time_zone = TimeZone::get(&config.time_zone)
            .map_err(|_| format!("`{}` is not a known time zone", config.time_zone))?;
        let (start, end) = icbt_config::working_hours(&config.working_hours)?;
        Ok(Self {
            time_zone,
            day_start_minute: start,
            day_end_minute: end,
            distinct_patients_per_day: config.distinct_patients_per_day,
            refusals_per_burst: config.refusals_per_burst,
            burst_window_ms: i64::from(config.burst_window_minutes) * 60_000,
            max_range_ms: i64::from(config.max_range_days) * 86_400_000,
            time_limit: Duration::from_millis(config.time_limit_ms),
        })
    }

    /// The local day (`YYYY-MM-DD`) of `at_ms`, and whether it falls outside working hours.
    fn local(&self, at_ms: i64) -> (String, bool) {
        let Ok(ts) = Timestamp::from_millisecond(at_ms) else {
            return (String::from("?"), true);
        };
        let local = self.time_zone.to_datetime(ts);
        let minute =
            u16::from(local.hour().unsigned_abs()) * 60 + u16::from(local.minute().unsigned_abs());
        let weekend = matches!(
            local.weekday(),
            jiff::civil::Weekday::Saturday | jiff::civil::Weekday::Sunday
        );
        let outside = weekend || minute < self.day_start_minute || minute >= self.day_end_minute;
        (local.date().to_string(), outside)
    }
}

/// How many record positions a row lists; `count` says how many there were.
pub const LISTED: usize = 20;

/// One thing for a reviewer to look at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Row {
    pub kind: Kind,
    /// HPR number, client id or national id number of whoever acted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub episode: Option<Uuid>,
    /// Local date in the configured time zone, for per-day reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    pub first_ms: i64,
    pub last_ms: i64,
    /// Records (or dead letters) behind the row.
    pub count: u64,
    /// Distinct patients, for `many-patients`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patients: Option<u64>,
    /// Tree positions of the first records behind it (at most [`LISTED`]).
    pub records: Vec<u64>,
    /// Outbox ids, for `dead-letters`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dead_letters: Vec<i64>,
    /// Why the row is here, for `dead-letters` the export's last error.
    pub detail: String,
}

impl Row {
    fn new(kind: Kind, at_ms: i64, detail: String) -> Self {
        Self {
            kind,
            principal: None,
            principal_kind: None,
            patient: None,
            episode: None,
            day: None,
            first_ms: at_ms,
            last_ms: at_ms,
            count: 0,
            patients: None,
            records: Vec::new(),
            dead_letters: Vec::new(),
            detail,
        }
    }

    fn add(&mut self, stored: &Stored) {
        self.count += 1;
        self.first_ms = self.first_ms.min(stored.record.recorded_at_ms);
        self.last_ms = self.last_ms.max(stored.record.recorded_at_ms);
        if self.records.len() < LISTED {
            self.records.extend(stored.leaf_index);
        }
    }
}

/// Personnel: whose accesses working hours, care teams and patient counts apply to.
fn personnel(stored: &Stored) -> Option<&str> {
    let r = &stored.record;
    (r.principal_kind == "clinician")
        .then_some(r.principal_id.as_deref())
        .flatten()
}

/// The care-team history of the episodes in a window, by episode.
#[derive(Debug, Default)]
pub struct Teams(HashMap<Uuid, Vec<TeamPeriod>>);

impl Teams {
    pub fn new(periods: Vec<TeamPeriod>) -> Self {
        let mut map: HashMap<Uuid, Vec<TeamPeriod>> = HashMap::new();
        for p in periods {
            map.entry(p.episode).or_default().push(p);
        }
        Self(map)
    }

    /// Whether `hpr` was on `episode`'s team at `at_ms`.
    pub fn on_team(&self, episode: Uuid, hpr: &str, at_ms: i64) -> bool {
        self.0.get(&episode).is_some_and(|periods| {
            periods.iter().any(|p| {
                p.hpr_number == hpr
                    && p.from_ms <= at_ms
                    && p.to_ms.is_none_or(|to| at_ms < to)
                    && p.until_ms.is_none_or(|until| at_ms < until)
            })
        })
    }
}

/// Groups one report's findings while the window's records are fed in time order.
#[derive(Debug)]
pub struct Reviewer<'a> {
    kind: Kind,
    settings: &'a Settings,
    teams: Teams,
    /// Rows keyed so that one principal's findings of a day (and episode) share a row.
    grouped: BTreeMap<(String, String, String), Row>,
    /// Distinct patients per (principal, day), for `many-patients`.
    patients: HashMap<(String, String), BTreeSet<String>>,
    /// The recent refusals of each principal, for `refusal-bursts`.
    refusals: HashMap<String, VecDeque<(i64, u64)>>,
    /// The burst row each principal is in, while it lasts.
    bursts: HashMap<String, Row>,
    done: Vec<Row>,
}

impl<'a> Reviewer<'a> {
    pub fn new(kind: Kind, settings: &'a Settings, teams: Teams) -> Self {
        Self {
            kind,
            settings,
            teams,
            grouped: BTreeMap::new(),
            patients: HashMap::new(),
            refusals: HashMap::new(),
            bursts: HashMap::new(),
            done: Vec::new(),
        }
    }

    /// The next record of the window, in time order.
    pub fn feed(&mut self, stored: &Stored) {
        if stored.pruned {
            return;
        }
        match self.kind {
            Kind::OffTeam => self.off_team(stored),
            Kind::AfterHours => self.after_hours(stored),
            Kind::ManyPatients => self.many_patients(stored),
            Kind::RefusalBursts => self.refusal_burst(stored),
            Kind::DeadLetters => {}
        }
    }

    fn group(&mut self, key: (String, String, String), stored: &Stored, detail: &str) -> &mut Row {
        let at = stored.record.recorded_at_ms;
        let kind = self.kind;
        let row = self.grouped.entry(key).or_insert_with(|| {
            let r = &stored.record;
            let mut row = Row::new(kind, at, detail.to_owned());
            row.principal.clone_from(&r.principal_id);
            row.principal_kind = Some(r.principal_kind.clone());
            row
        });
        row.add(stored);
        row
    }

    fn off_team(&mut self, stored: &Stored) {
        let r = &stored.record;
        let (Some(hpr), Some(episode)) = (personnel(stored), r.episode_id) else {
            return;
        };
        if r.action == Action::AuditRead || self.teams.on_team(episode, hpr, r.recorded_at_ms) {
            return;
        }
        let (day, _) = self.settings.local(r.recorded_at_ms);
        // Refused attempts are worth a look too, in rows of their own.
        let (outcome, detail) = match r.outcome {
            Outcome::Success => ("", "not on the episode's care team at the time"),
            Outcome::Refused => (
                ":refused",
                "tried while not on the episode's care team, and was refused",
            ),
        };
        let key = (hpr.to_owned(), day.clone(), format!("{episode}{outcome}"));
        let patient = r.patient.clone();
        let row = self.group(key, stored, detail);
        row.episode = Some(episode);
        row.day = Some(day);
        if row.patient.is_none() {
            row.patient = patient;
        }
    }

    fn after_hours(&mut self, stored: &Stored) {
        let Some(who) = personnel(stored) else {
            return;
        };
        let (day, outside) = self.settings.local(stored.record.recorded_at_ms);
        if outside {
            let key = (who.to_owned(), day.clone(), String::new());
            self.group(key, stored, "outside working hours").day = Some(day);
        }
    }

    fn many_patients(&mut self, stored: &Stored) {
        let (Some(who), Some(patient)) = (personnel(stored), stored.record.patient.as_deref())
        else {
            return;
        };
        let (day, _) = self.settings.local(stored.record.recorded_at_ms);
        self.patients
            .entry((who.to_owned(), day.clone()))
            .or_default()
            .insert(patient.to_owned());
        let key = (who.to_owned(), day.clone(), String::new());
        self.group(key, stored, "").day = Some(day);
    }

    fn refusal_burst(&mut self, stored: &Stored) {
        let r = &stored.record;
        if r.outcome != Outcome::Refused {
            return;
        }
        // Failed logins have no principal: group them by where they came from.
        let who = r
            .principal_id
            .clone()
            .unwrap_or_else(|| format!("source:{}", r.source.as_deref().unwrap_or("?")));
        let at = r.recorded_at_ms;
        let window = self.settings.burst_window_ms;
        let recent = self.refusals.entry(who.clone()).or_default();
        recent.push_back((at, stored.leaf_index.unwrap_or_default()));
        while recent.front().is_some_and(|(t, _)| at - t > window) {
            recent.pop_front();
        }
        let enough = recent.len() >= self.settings.refusals_per_burst as usize;
        let snapshot: Vec<(i64, u64)> = recent.iter().copied().collect();
        let open = self
            .bursts
            .get(&who)
            .is_some_and(|b| at - b.last_ms <= window);
        if !open && let Some(ended) = self.bursts.remove(&who) {
            self.done.push(ended);
        }
        if let Some(burst) = self.bursts.get_mut(&who) {
            burst.add(stored);
        } else if enough {
            let mut burst = Row::new(Kind::RefusalBursts, snapshot[0].0, String::new());
            burst.principal = r.principal_id.clone().or(Some(who.clone()));
            burst.principal_kind = Some(r.principal_kind.clone());
            burst.count = snapshot.len() as u64;
            burst.last_ms = at;
            burst.records = snapshot.iter().map(|(_, i)| *i).take(LISTED).collect();
            self.bursts.insert(who, burst);
        }
    }

    /// The rows, oldest first.
    pub fn finish(mut self) -> Vec<Row> {
        let threshold = u64::from(self.settings.distinct_patients_per_day);
        let window_minutes = self.settings.burst_window_ms / 60_000;
        let mut rows = std::mem::take(&mut self.done);
        rows.extend(self.bursts.into_values());
        for ((who, day, _), mut row) in self.grouped {
            if self.kind == Kind::ManyPatients {
                let distinct = self.patients.get(&(who, day)).map_or(0, |p| p.len() as u64);
                if distinct <= threshold {
                    continue;
                }
                row.patients = Some(distinct);
                row.detail =
                    format!("{distinct} distinct patients in a day (threshold {threshold})");
            }
            rows.push(row);
        }
        for row in &mut rows {
            if row.kind == Kind::RefusalBursts {
                row.detail = format!(
                    "{} refusals, at least {} within {window_minutes} min",
                    row.count, self.settings.refusals_per_burst
                );
            }
        }
        rows.sort_by(|a, b| (a.first_ms, &a.principal).cmp(&(b.first_ms, &b.principal)));
        rows
    }
}

/// Why a time range is refused: the field at fault and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeError {
    pub field: &'static str,
    pub detail: String,
}

/// Checks `[from_ms, to_ms)`: both set, in order, within the years 1970 to 9999, and no
/// longer than `max_range_ms`.
pub fn check_range(
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    max_range_ms: i64,
) -> Result<(i64, i64), RangeError> {
    let bad = |field, detail: &str| RangeError {
        field,
        detail: detail.to_owned(),
    };
    let from = from_ms.ok_or_else(|| bad("from_ms", "required: Unix milliseconds"))?;
    let to = to_ms.ok_or_else(|| bad("to_ms", "required: Unix milliseconds"))?;
    let years = 0..=253_402_300_799_999;
    if !years.contains(&from) {
        return Err(bad("from_ms", "a time between 1970 and 9999"));
    }
    if !years.contains(&to) {
        return Err(bad("to_ms", "a time between 1970 and 9999"));
    }
    if to <= from {
        return Err(bad("to_ms", "must be after from_ms"));
    }
    if to - from > max_range_ms {
        return Err(RangeError {
            field: "to_ms",
            detail: format!(
                "the range is longer than {} days (audit.review.max_range_days)",
                max_range_ms / 86_400_000
            ),
        });
    }
    Ok((from, to))
}

/// A report over `[from_ms, to_ms)`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub kind: Kind,
    pub from_ms: i64,
    pub to_ms: i64,
    /// False when the time limit ended the scan first: the rows cover up to `scanned_to_ms`.
    pub complete: bool,
    pub scanned_to_ms: i64,
    pub records_scanned: u64,
    pub rows: Vec<Row>,
}

/// The records a report (or a search) may show: every record, or a hospital auditor's.
#[derive(Clone, Debug, Default)]
pub enum Scope {
    #[default]
    Everything,
    /// Records about these episodes, or without an episode and made by someone acting
    /// for one of these organisations.
    Within {
        organisations: std::collections::HashSet<String>,
        episodes: std::collections::HashSet<Uuid>,
    },
}

impl Scope {
    /// The scope of an auditor, with the episodes of its clinics read now.
    pub async fn load(
        store: &Store,
        scope: &icbt_auth::policy::AuditScope,
    ) -> Result<Self, StorageError> {
        let icbt_auth::policy::AuditScope::Organisations(organisations) = scope else {
            return Ok(Self::Everything);
        };
        let organisations: Vec<String> = organisations
            .iter()
            .map(|o| o.as_str().to_owned())
            .collect();
        let episodes = store
            .episodes_of_clinics(&organisations)
            .await?
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        Ok(Self::Within {
            organisations: organisations.into_iter().collect(),
            episodes,
        })
    }

    pub fn contains(&self, record: &super::Record) -> bool {
        match self {
            Self::Everything => true,
            Self::Within {
                organisations,
                episodes,
            } => match record.episode_id {
                Some(episode) => episodes.contains(&episode),
                None => record
                    .principal_organisation
                    .as_ref()
                    .is_some_and(|o| organisations.contains(o)),
            },
        }
    }

    pub fn contains_episode(&self, episode: Uuid) -> bool {
        match self {
            Self::Everything => true,
            Self::Within { episodes, .. } => episodes.contains(&episode),
        }
    }
}

/// Records read per page of the scan.
const PAGE: i64 = 5_000;

/// Runs report `kind` over `[from_ms, to_ms)`, stopping at the settings' time limit.
pub async fn run(
    store: &Store,
    settings: &Settings,
    kind: Kind,
    (from_ms, to_ms): (i64, i64),
    scope: &Scope,
) -> Result<Report, StorageError> {
    let started = Instant::now();
    if kind == Kind::DeadLetters {
        let rows = store
            .dead_letters_between(from_ms, to_ms, 10_000)
            .await?
            .into_iter()
            .filter(|d| scope.contains_episode(d.episode.0))
            .map(|d| {
                let mut row = Row::new(
                    Kind::DeadLetters,
                    d.created_at_ms,
                    d.last_error.unwrap_or_default(),
                );
                row.episode = Some(d.episode.0);
                row.count = 1;
                row.dead_letters = vec![d.id];
                row.detail = format!("{} export: {}", d.kind.as_str(), row.detail);
                row
            })
            .collect();
        return Ok(Report {
            kind,
            from_ms,
            to_ms,
            complete: true,
            scanned_to_ms: to_ms,
            records_scanned: 0,
            rows,
        });
    }
    let teams = if kind == Kind::OffTeam {
        Teams::new(store.team_periods_between(from_ms, to_ms).await?)
    } else {
        Teams::default()
    };
    let mut reviewer = Reviewer::new(kind, settings, teams);
    let mut cursor: Option<(i64, u64)> = None;
    let mut scanned = 0u64;
    let mut complete = true;
    let mut scanned_to = from_ms;
    loop {
        if started.elapsed() > settings.time_limit {
            complete = false;
            break;
        }
        let only = if kind == Kind::RefusalBursts {
            WindowRecords::Refused
        } else {
            WindowRecords::Personnel
        };
        let page = store
            .audit_window(from_ms, to_ms, only, cursor, PAGE)
            .await?;
        for stored in page.iter().filter(|s| scope.contains(&s.record)) {
            reviewer.feed(stored);
        }
        scanned += page.len() as u64;
        let Some(last) = page.last() else {
            scanned_to = to_ms;
            break;
        };
        scanned_to = last.record.recorded_at_ms;
        cursor = Some((
            last.record.recorded_at_ms,
            last.leaf_index.unwrap_or_default(),
        ));
        if i64::try_from(page.len()).unwrap_or(i64::MAX) < PAGE {
            scanned_to = to_ms;
            break;
        }
    }
    Ok(Report {
        kind,
        from_ms,
        to_ms,
        complete,
        scanned_to_ms: scanned_to,
        records_scanned: scanned,
        rows: reviewer.finish(),
    })
}

/// CSV of report rows: a header line, then one line per row; fields quoted where needed.
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "kind,principal,principal_kind,patient,episode,day,first_ms,last_ms,count,patients,records,dead_letters,detail\n",
    );
    for r in rows {
        let fields = [
            r.kind.as_str().to_owned(),
            r.principal.clone().unwrap_or_default(),
            r.principal_kind.clone().unwrap_or_default(),
            r.patient.clone().unwrap_or_default(),
            r.episode.map(|e| e.to_string()).unwrap_or_default(),
            r.day.clone().unwrap_or_default(),
            r.first_ms.to_string(),
            r.last_ms.to_string(),
            r.count.to_string(),
            r.patients.map(|p| p.to_string()).unwrap_or_default(),
            r.records
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            r.dead_letters
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            r.detail.clone(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// A CSV field (RFC 4180), with a leading `=`, `+`, `-` or `@` defused so that a
/// spreadsheet does not run it as a formula.
fn csv_field(field: &str) -> String {
    let defused = if field.starts_with(['=', '+', '-', '@']) {
        format!("'{field}")
    } else {
        field.to_owned()
    };
    if defused.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::tests::sample;

    fn settings(change: impl FnOnce(&mut icbt_config::ReviewConfig)) -> Settings {
        let mut config = icbt_config::ReviewConfig::default();
        change(&mut config);
        Settings::from_config(&config).unwrap()
    }

    /// Unix ms of a wall-clock time in Oslo.
    fn oslo(text: &str) -> i64 {
        let civil: jiff::civil::DateTime = text.parse().unwrap();
        TimeZone::get("Europe/Oslo")
            .unwrap()
            .to_ambiguous_timestamp(civil)
            .compatible()
            .unwrap()
            .as_millisecond()
    }

    fn at(n: u32, ms: i64) -> Stored {
        let mut record = sample(n);
        record.recorded_at_ms = ms;
        Stored {
            record,
            leaf_index: Some(u64::from(n)),
            leaf_hash: None,
            content_hash: None,
            pruned: false,
        }
    }

    fn run(kind: Kind, settings: &Settings, teams: Teams, records: &[Stored]) -> Vec<Row> {
        let mut reviewer = Reviewer::new(kind, settings, teams);
        for r in records {
            reviewer.feed(r);
        }
        reviewer.finish()
    }

    #[test]
    fn a_hospital_scope_keeps_its_episodes_and_its_own_records_without_one() {
        let ours = Uuid::from_u128(1);
        let scope = Scope::Within {
            organisations: ["983974899".to_owned()].into(),
            episodes: [ours].into(),
        };
        let record = |episode: Option<Uuid>, organisation: Option<&str>| {
            let mut r = sample(1);
            r.episode_id = episode;
            r.principal_organisation = organisation.map(str::to_owned);
            r
        };
        assert!(
            scope.contains(&record(Some(ours), Some("983975240"))),
            "another's access to ours"
        );
        assert!(
            !scope.contains(&record(Some(Uuid::from_u128(2)), Some("983974899"))),
            "ours on another's episode"
        );
        assert!(scope.contains(&record(None, Some("983974899"))));
        assert!(!scope.contains(&record(None, Some("983975240"))));
        assert!(!scope.contains(&record(None, None)));
        assert!(Scope::Everything.contains(&record(None, None)));
        assert!(scope.contains_episode(ours) && !scope.contains_episode(Uuid::from_u128(2)));
    }

    #[test]
    fn after_hours_follows_oslo_time_with_summer_time_and_weekends() {
        let s = settings(|_| {});
        let records = [
            at(1, oslo("2026-11-30T10:00")), // Monday, inside
            at(2, oslo("2026-11-30T18:30")), // Monday evening
            at(3, oslo("2026-11-30T19:00")),
            at(4, oslo("2026-11-28T10:00")), // Saturday
            at(5, oslo("2026-07-01T06:30")), // summer time: 04:30 UTC, before the day
            at(6, oslo("2026-07-01T07:30")), // 05:30 UTC, inside
        ];
        let rows = run(Kind::AfterHours, &s, Teams::default(), &records);
        let found: Vec<(Option<&str>, u64, &[u64])> = rows
            .iter()
            .map(|r| (r.day.as_deref(), r.count, r.records.as_slice()))
            .collect();
        assert_eq!(
            found,
            vec![
                (Some("2026-07-01"), 1, &[5][..]),
                (Some("2026-11-28"), 1, &[4][..]),
                (Some("2026-11-30"), 2, &[2, 3][..]),
            ]
        );
        // Patients and systems are not held to working hours.
        let mut patient = at(7, oslo("2026-11-30T23:00"));
        patient.record.principal_kind = "patient".into();
        assert!(run(Kind::AfterHours, &s, Teams::default(), &[patient]).is_empty());
    }

    #[test]
    fn off_team_is_judged_by_the_team_at_the_moment_of_access() {
        let s = settings(|_| {});
        let episode = Uuid::from_u128(7);
        let teams = Teams::new(vec![TeamPeriod {
            episode,
            hpr_number: "565501872".into(),
            from_ms: 1_000,
            to_ms: Some(2_000),
            until_ms: None,
        }]);
        let mut audit_read = at(4, 5_000);
        audit_read.record.action = Action::AuditRead;
        let mut other = at(5, 1_500);
        other.record.principal_id = Some("100000001".into());
        let records = [at(3, 900), at(1, 1_500), other, at(2, 2_500), audit_read];
        let rows = run(Kind::OffTeam, &s, teams, &records);
        let found: Vec<(Option<&str>, &[u64])> = rows
            .iter()
            .map(|r| (r.principal.as_deref(), r.records.as_slice()))
            .collect();
        // Before joining and after leaving are flagged; while on the team, and reads of
        // the access log itself, are not.
        assert_eq!(
            found,
            vec![
                (Some("565501872"), &[3, 2][..]),
                (Some("100000001"), &[5][..])
            ]
        );
        assert_eq!(rows[0].episode, Some(episode));
        assert_eq!(rows[0].patient.as_deref(), Some("01018512345"));
        // A cover's own end counts too.
        let cover = Teams::new(vec![TeamPeriod {
            episode,
            hpr_number: "565501872".into(),
            from_ms: 1_000,
            to_ms: None,
            until_ms: Some(2_000),
        }]);
        assert!(cover.on_team(episode, "565501872", 1_999));
        assert!(!cover.on_team(episode, "565501872", 2_000));
    }

    #[test]
    fn many_patients_counts_distinct_patients_per_person_and_day() {
        let s = settings(|c| c.distinct_patients_per_day = 2);
        let day = oslo("2026-11-30T10:00");
        let mut records = Vec::new();
        for (n, patient) in [(1, "a"), (2, "b"), (3, "b"), (4, "c")] {
            let mut r = at(n, day + i64::from(n));
            r.record.patient = Some(patient.into());
            records.push(r);
        }
        let mut calm = at(5, day);
        calm.record.principal_id = Some("100000001".into());
        records.push(calm);
        let rows = run(Kind::ManyPatients, &s, Teams::default(), &records);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].patients, Some(3));
        assert_eq!(rows[0].count, 4);
        assert!(rows[0].detail.contains("threshold 2"), "{}", rows[0].detail);
    }

    #[test]
    fn refusal_bursts_are_grouped_and_a_slow_trickle_is_not_one() {
        let s = settings(|c| {
            c.refusals_per_burst = 3;
            c.burst_window_minutes = 10;
        });
        let minute = 60_000;
        let refused = |n: u32, m: i64| {
            let mut r = at(n, m * minute);
            r.record.outcome = Outcome::Refused;
            r
        };
        let records = [
            refused(1, 0),
            refused(2, 1),
            refused(3, 2), // a burst starts
            refused(4, 5), // and goes on
            refused(5, 40),
            refused(6, 60), // a trickle: no burst
            refused(7, 100),
            refused(8, 101),
            refused(9, 102), // a second burst
            at(10, 103),     // a success is no refusal
        ];
        let rows = run(Kind::RefusalBursts, &s, Teams::default(), &records);
        let found: Vec<(u64, &[u64])> = rows
            .iter()
            .map(|r| (r.count, r.records.as_slice()))
            .collect();
        assert_eq!(found, vec![(4, &[1, 2, 3, 4][..]), (3, &[7, 8, 9][..])]);
        // Failed logins have no principal: they are grouped by where they came from.
        let mut anonymous: Vec<Stored> = (11..14).map(|n| refused(n, 200)).collect();
        for r in &mut anonymous {
            r.record.principal_id = None;
            r.record.principal_kind = "unknown".into();
        }
        let rows = run(Kind::RefusalBursts, &s, Teams::default(), &anonymous);
        assert_eq!(rows[0].principal.as_deref(), Some("source:127.0.0.1"));
    }

    #[test]
    fn csv_quotes_what_needs_it_and_defuses_formulas() {
        let mut row = Row::new(
            Kind::DeadLetters,
            5,
            "=HYPERLINK(\"x\"), then \"more\"\nline".into(),
        );
        row.count = 1;
        row.dead_letters = vec![3, 4];
        let text = csv(&[row]);
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("kind,principal,"));
        let line = text.split_once('\n').unwrap().1;
        assert!(line.starts_with("dead-letters,,,,,,5,5,1,,,3 4,"), "{line}");
        assert!(
            line.ends_with("\"'=HYPERLINK(\"\"x\"\"), then \"\"more\"\"\nline\"\n"),
            "{line}"
        );
    }

    #[test]
    fn ranges_must_be_given_ordered_and_bounded() {
        let day = 86_400_000;
        assert_eq!(check_range(Some(0), Some(day), 2 * day), Ok((0, day)));
        for (from, to, field) in [
            (None, Some(day), "from_ms"),
            (Some(0), None, "to_ms"),
            (Some(day), Some(day), "to_ms"),
            (Some(0), Some(3 * day), "to_ms"),
            (Some(-1), Some(day), "from_ms"),
            (Some(0), Some(i64::MAX), "to_ms"),
        ] {
            assert_eq!(
                check_range(from, to, 2 * day).unwrap_err().field,
                field,
                "{from:?} {to:?}"
            );
        }
        assert!(
            Kind::ALL
                .iter()
                .all(|k| Kind::parse(k.as_str()) == Some(*k))
        );
    }
}
