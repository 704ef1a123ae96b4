//! The journal exporter: takes outbox rows in order per episode, opens what they point at
//! with the clinic journal key, maps it to FHIR and sends a transaction bundle whose
//! entries are conditional, so a retry never duplicates.
//!
//! Owns: the export loop, retries with exponential back-off and jitter, dead letters, the
//! export audit records. Must not know about: HTTP routes of the gateway, FHIR details
//! beyond choosing which bundle to build (the mapping crate owns those).
//!
//! Routing: each clinic's records go by its [`Route`] (its hospital's EPJ, summary record
//! and HelseID client). Every route has its own claim loops, claiming only its clinics'
//! rows, and its own rest after failing, so one EPJ down or slow holds up no other.
//!
//! Failure rules: a row that cannot be mapped (no journal key of its clinic among its
//! recipients, bad signature, not the content format) or that the EPJ refuses with a
//! 4xx and an OperationOutcome is dead at once. A pass in which nothing got through and
//! every attempt failed on the way to the EPJ (down, 5xx, time-outs, token trouble)
//! charges no row: the route rests (`backoff_base_ms · 2^passes`, capped, jittered) and
//! its rows wait untouched, so an EPJ away for a weekend dead-letters nothing. Otherwise
//! a row that failed is retried after `backoff_base_ms · 2^attempts` until
//! `max_attempts`, then dead. Nothing expires silently: dead rows stay until an operator
//! replays them (`icbt-gateway export dead-letters`), and they are counted in the logs
//! and in `export status`. Other episodes keep flowing meanwhile.

mod alert;
pub mod epj;
pub mod records;
pub mod route;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

use icbt_config::ExportConfig;
use icbt_fhir_mapping::content::Content;
use icbt_fhir_mapping::export::{episode_bundle, message_bundle, questionnaire_bundle};
use icbt_fhir_mapping::summary::{
    DocumentCodes, Score, SummaryRecord, document_query, provide_document_bundle,
};
use ring::rand::SecureRandom as _;
use serde_json::Value;

use crate::audit::{Action, Outcome, Record};
use crate::storage::{Finish, OutboxKind, OutboxRow, Store};
use epj::CallError;
use records::{ClinicKeys, EpisodeFacts, Systems, Unready};
pub use route::Route;

/// The exporter's settings, resolved from configuration (the same for every route).
#[derive(Debug)]
pub struct Settings {
    pub systems: Systems,
    pub codes: DocumentCodes,
    pub batch_size: i64,
    pub rows_per_episode: i64,
    pub poll_interval: Duration,
    pub max_attempts: i64,
    /// Claim loops on PostgreSQL, shared out among the routes (at least one each), so
    /// the EPJ works while a loop commits.
    pub workers: usize,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl Settings {
    pub fn from_config(config: &ExportConfig) -> Self {
        Self {
            systems: Systems::under(&config.identifier_base),
            codes: DocumentCodes {
                system: config.document_code_system.clone(),
                type_code: config.document_type_code.clone(),
                type_display: config.document_type_display.clone(),
                category_code: config.document_category_code.clone(),
                category_display: config.document_category_display.clone(),
                confidentiality: config.document_confidentiality.clone(),
            },
            batch_size: i64::from(config.batch_size),
            rows_per_episode: i64::from(config.rows_per_episode),
            poll_interval: Duration::from_millis(config.poll_interval_ms),
            max_attempts: i64::from(config.max_attempts),
            workers: usize::try_from(config.workers).unwrap_or(1),
            backoff_base_ms: config.backoff_base_ms,
            backoff_max_ms: config.backoff_max_ms,
        }
    }
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub claimed: usize,
    pub done: usize,
    pub retried: usize,
    pub dead: usize,
}

pub struct Exporter {
    store: Store,
    routes: Vec<Arc<Route>>,
    keys: ClinicKeys,
    settings: Settings,
    /// Wakes this process's push hub after an alert (the exporter inside `serve`; across
    /// processes PostgreSQL's NOTIFY does it).
    wake: Option<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("routes", &self.routes)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What the rows of one run share: the episode as it is now, its messages read ahead,
/// the senders' signing keys.
struct RunContext {
    facts: EpisodeFacts,
    messages: std::collections::HashMap<i64, crate::storage::StoredMessage>,
    senders: records::Senders,
}

/// How one row's attempt ended, and whether it failed on the way to the EPJ.
struct Attempt {
    finish: Finish,
    unreachable: bool,
}

/// Why an attempt did not deliver.
enum Failed {
    Storage(crate::storage::StorageError),
    Unmappable(String),
    Call(CallError),
}

impl From<Unready> for Failed {
    fn from(u: Unready) -> Self {
        match u {
            Unready::Storage(e) => Self::Storage(e),
            Unready::Unmappable(reason) => Self::Unmappable(reason),
        }
    }
}

impl From<CallError> for Failed {
    fn from(e: CallError) -> Self {
        Self::Call(e)
    }
}

impl From<icbt_fhir_mapping::MappingError> for Failed {
    fn from(e: icbt_fhir_mapping::MappingError) -> Self {
        Self::Unmappable(e.to_string())
    }
}

/// The delay before attempt `attempts + 1`: `base · 2^attempts`, capped at `max`, the upper
/// half jittered ("equal jitter"), so exporters that failed together do not return together.
pub fn backoff_ms(attempts: i64, base: u64, max: u64, random: u64) -> u64 {
    let exp = u32::try_from(attempts.clamp(0, 32)).unwrap_or(32);
    let full = base.saturating_mul(1_u64 << exp.min(40)).min(max).max(1);
    let half = full / 2;
    half + random % (full - half + 1)
}

fn random_u64() -> u64 {
    let mut bytes = [0_u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

impl Exporter {
    pub fn new(store: Store, routes: Vec<Route>, keys: ClinicKeys, settings: Settings) -> Self {
        Self {
            store,
            routes: routes.into_iter().map(Arc::new).collect(),
            keys,
            settings,
            wake: None,
        }
    }

    /// Calls `wake` after appending an alert.
    #[must_use]
    pub fn waking(mut self, wake: impl Fn() + Send + Sync + 'static) -> Self {
        self.wake = Some(Box::new(wake));
        self
    }

    /// Runs until `stop` resolves: per route, its share of `workers` claim loops (one on
    /// SQLite), each waiting `poll_interval` when idle and resting while its EPJ is away;
    /// besides them one loop screening questionnaire responses for risk, whatever the
    /// EPJs do.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let per_route = match self.store.backend() {
            crate::storage::Backend::Postgres => {
                (self.settings.workers / self.routes.len().max(1)).max(1)
            }
            crate::storage::Backend::Sqlite => 1,
        };
        for route in &self.routes {
            tracing::info!(route = %route.name, loops = per_route, "export route started");
        }
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        let mut tasks: Vec<_> = self
            .routes
            .iter()
            .flat_map(|route| std::iter::repeat_n(route, per_route))
            .map(|route| tokio::spawn(self.clone().work(route.clone(), stopped.clone())))
            .collect();
        tasks.push(tokio::spawn(self.clone().screening(stopped.clone())));
        stop.await;
        let _ = stopping.send(true);
        for task in tasks {
            let _ = task.await;
        }
        tracing::info!("exporter stopped");
    }

    async fn screening(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        while !*stop.borrow() {
            if let Err(e) = self.screen().await {
                tracing::warn!(error = %e, "risk screening failed; trying again");
            }
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    async fn work(
        self: Arc<Self>,
        route: Arc<Route>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        while !*stop.borrow() {
            let wait = match route.resting() {
                Some(rest) => Some(rest),
                None => match self.pass(&route).await {
                    Ok(pass) => (pass.claimed == 0).then_some(self.settings.poll_interval),
                    Err(e) => {
                        tracing::warn!(route = %route.name, error = %e, "export pass failed; trying again");
                        Some(self.settings.poll_interval)
                    }
                },
            };
            if let Some(wait) = wait {
                tokio::select! {
                    _ = stop.changed() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }

    /// Claims due rows of `route`'s clinics (a run of consecutive rows per episode),
    /// attempts the episodes concurrently and each run in order, records the outcomes
    /// and commits. When nothing got through and every attempt failed on the way to the
    /// EPJ, the rows go back untouched and the route rests.
    pub async fn pass(&self, route: &Route) -> Result<Pass, crate::storage::StorageError> {
        let mut claim = self
            .store
            .claim_outbox(
                self.settings.batch_size,
                self.settings.rows_per_episode,
                route.clinics.as_deref(),
            )
            .await?;
        let rows = claim.rows.clone();
        let runs: Vec<&[OutboxRow]> = rows.chunk_by(|a, b| a.episode == b.episode).collect();
        let attempts =
            futures_util::future::join_all(runs.iter().map(|run| self.attempt_run(route, run)))
                .await;
        let mut pass = Pass {
            claimed: rows.len(),
            ..Pass::default()
        };
        if !attempts.is_empty() && attempts.iter().flatten().all(|a| a.unreachable) {
            self.store.release_claim(claim).await?;
            self.rest(route, &attempts);
            pass.retried = rows.len();
            return Ok(pass);
        }
        let failures = route.delivered();
        if failures > 0 {
            tracing::info!(route = %route.name, failed_passes = failures, "export route reachable again");
        }
        let mut done = Vec::new();
        let attempted = runs
            .iter()
            .zip(attempts)
            .flat_map(|(run, attempts)| run.iter().zip(attempts));
        for (row, Attempt { finish, .. }) in attempted {
            match &finish {
                Finish::Done { audit } => {
                    pass.done += 1;
                    done.push((row.id, audit.clone()));
                    continue;
                }
                Finish::Retry { error, at_ms } => {
                    pass.retried += 1;
                    tracing::info!(route = %route.name, row = row.id, kind = row.kind.as_str(), attempts = row.attempts + 1, error = %error,
                        retry_in_ms = at_ms - crate::storage::now_ms(), "export attempt failed; will retry");
                }
                Finish::Dead { error, .. } => {
                    pass.dead += 1;
                    tracing::error!(route = %route.name, row = row.id, kind = row.kind.as_str(), attempts = row.attempts + 1, error = %error,
                        "export dead-lettered; an operator must look (icbt-gateway export dead-letters)");
                }
            }
            self.store.finish_outbox(&mut claim, row, &finish).await?;
        }
        self.store.finish_done(&mut claim, &done).await?;
        self.store.commit_claim(claim).await?;
        Ok(pass)
    }

    /// Puts `route` to rest after a pass that reached nothing.
    fn rest(&self, route: &Route, attempts: &[Vec<Attempt>]) {
        let s = &self.settings;
        let (pause, first) = route.failed(|failures| {
            Duration::from_millis(backoff_ms(
                i64::from(failures),
                s.backoff_base_ms,
                s.backoff_max_ms,
                random_u64(),
            ))
        });
        let error = attempts
            .iter()
            .flatten()
            .find_map(|a| match &a.finish {
                Finish::Retry { error, .. } => Some(error.as_str()),
                _ => None,
            })
            .unwrap_or_default();
        let rest_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        if first {
            tracing::warn!(route = %route.name, error = %error, rest_ms,
                "export route unreachable; its rows wait, uncharged, while it rests");
        } else {
            tracing::info!(route = %route.name, error = %error, rest_ms, "export route still unreachable");
        }
    }

    /// Attempts one episode's rows in order, up to the first that does not go through:
    /// the rows behind it stay pending, untouched, so the episode's order holds.
    async fn attempt_run(&self, route: &Route, run: &[OutboxRow]) -> Vec<Attempt> {
        let Some(first) = run.first() else {
            return Vec::new();
        };
        let facts = match records::episode(&self.store, first.episode, &self.settings.systems).await
        {
            Ok(facts) => facts,
            Err(e) => return vec![self.finish(first, Err(e.into()))],
        };
        let mut context = RunContext {
            facts,
            messages: std::collections::HashMap::new(),
            senders: records::Senders::default(),
        };
        let seqs = run.iter().filter_map(|row| match row.kind {
            OutboxKind::Message(seq) => Some(seq),
            _ => None,
        });
        if let (Some(from), Some(to)) = (seqs.clone().min(), seqs.max()) {
            // One read for the run's messages; a row whose message is not here reads it
            // itself.
            if let Ok(messages) = self
                .store
                .messages_after(first.episode, from - 1, to - from + 1, false)
                .await
            {
                context.messages = messages.into_iter().map(|m| (m.seq, m)).collect();
            }
        }
        let mut attempts = Vec::with_capacity(run.len());
        for row in run {
            let attempt = self.finish(row, self.export(route, row, &mut context).await);
            let go_on = matches!(attempt.finish, Finish::Done { .. });
            attempts.push(attempt);
            if !go_on {
                break;
            }
        }
        attempts
    }

    /// How an attempt at `row` ended, from what exporting it gave.
    fn finish(&self, row: &OutboxRow, exported: Result<Option<Box<Record>>, Failed>) -> Attempt {
        let unreachable = matches!(exported, Err(Failed::Call(CallError::Transient(_))));
        let finish = match exported {
            Ok(audit) => Finish::Done { audit },
            Err(Failed::Unmappable(error)) => Finish::Dead {
                error,
                outcome: None,
            },
            Err(Failed::Call(CallError::Refused { status, outcome })) => Finish::Dead {
                error: format!("the EPJ refused it: HTTP {status}"),
                outcome: Some(outcome),
            },
            Err(Failed::Call(CallError::Transient(error))) => self.retry(row, error),
            Err(Failed::Storage(e)) => self.retry(row, format!("database: {e}")),
        };
        Attempt {
            finish,
            unreachable,
        }
    }

    fn retry(&self, row: &OutboxRow, error: String) -> Finish {
        if row.attempts + 1 >= self.settings.max_attempts {
            return Finish::Dead {
                error: format!("gave up after {} attempts: {error}", row.attempts + 1),
                outcome: None,
            };
        }
        let delay = backoff_ms(
            row.attempts,
            self.settings.backoff_base_ms,
            self.settings.backoff_max_ms,
            random_u64(),
        );
        Finish::Retry {
            at_ms: crate::storage::now_ms() + i64::try_from(delay).unwrap_or(i64::MAX / 2),
            error,
        }
    }

    /// Sends what `row` names; returns the audit record of the export.
    async fn export(
        &self,
        route: &Route,
        row: &OutboxRow,
        context: &mut RunContext,
    ) -> Result<Option<Box<Record>>, Failed> {
        let s = &self.settings;
        let facts = &context.facts;
        if !route.serves(facts.clinic.org_number.as_str()) {
            // Claimed by its clinic, so only a clinic renumbered under a live row.
            return Err(Failed::Unmappable(
                "the episode's clinic is not this route's".into(),
            ));
        }
        let keys = self.keys.of(facts.clinic.org_number.as_str());
        match row.kind {
            OutboxKind::Episode => {
                Self::send(route, &route.epj_base, &episode_bundle(&facts.record)?).await?;
                Ok(None)
            }
            OutboxKind::Message(seq) => {
                let message = match context.messages.remove(&seq) {
                    Some(message) => message,
                    None => records::message(&self.store, row.episode, seq).await?,
                };
                let bundle =
                    match records::open(&self.store, keys, &mut context.senders, &message).await? {
                        Content::Text {
                            text,
                            in_response_to,
                        } => message_bundle(&records::message_record(
                            facts,
                            &s.systems,
                            &message,
                            text,
                            in_response_to,
                        ))?,
                        Content::Questionnaire { instrument, items } => {
                            let answers =
                                records::answers(facts, &s.systems, &message, instrument, items);
                            questionnaire_bundle(&answers, facts.care_manager())?
                        }
                    };
                Self::send(route, &route.epj_base, &bundle).await?;
                Ok(Some(Box::new(Self::audit(
                    &route.client_id,
                    facts,
                    "messages",
                    message.id.to_string(),
                ))))
            }
            OutboxKind::Summary => {
                let query = document_query(&s.systems.document, &facts.record.id);
                if !route
                    .destination
                    .exists(&route.summary_base, "DocumentReference", &query)
                    .await?
                {
                    let summary = self.summary(facts).await?;
                    let bundle = provide_document_bundle(
                        &summary,
                        &s.codes,
                        &s.systems.document,
                        facts.episode.updated_at_ms,
                    )?;
                    Self::send(route, &route.summary_base, &bundle).await?;
                }
                Ok(Some(Box::new(Self::audit(
                    &route.client_id,
                    facts,
                    "episode",
                    facts.record.id.clone(),
                ))))
            }
        }
    }

    async fn send(
        route: &Route,
        base: &str,
        bundle: &icbt_fhir_mapping::Bundle,
    ) -> Result<(), Failed> {
        let json: Value = serde_json::to_value(bundle)
            .map_err(|e| Failed::Unmappable(format!("the bundle does not serialise: {e}")))?;
        Ok(route.destination.transaction(base, &json).await?)
    }

    /// Counts and score trajectory of the whole episode, from its opened messages.
    async fn summary(&self, facts: &EpisodeFacts) -> Result<SummaryRecord, Failed> {
        const PAGE: i64 = 500;
        let mut summary = SummaryRecord {
            episode: facts.record.clone(),
            programme: facts.episode.programme.clone(),
            clinic_name: facts.clinic.name.clone(),
            patient_messages: 0,
            feedback: 0,
            scores: Vec::new(),
        };
        let mut after = 0;
        let mut senders = records::Senders::default();
        loop {
            let page = self
                .store
                .messages_after(facts.episode.id, after, PAGE, false)
                .await
                .map_err(Failed::Storage)?;
            for m in &page {
                match (m.kind.as_str(), m.sender_kind.as_str()) {
                    ("message", "patient") => summary.patient_messages += 1,
                    ("feedback", _) => summary.feedback += 1,
                    ("questionnaire-response", _) => {
                        // A response that does not open was dead-lettered on its own;
                        // the summary is written from the ones that do.
                        if let Ok(Content::Questionnaire { instrument, items }) = records::open(
                            &self.store,
                            self.keys.of(facts.clinic.org_number.as_str()),
                            &mut senders,
                            m,
                        )
                        .await
                        {
                            let answers = records::answers(
                                facts,
                                &self.settings.systems,
                                m,
                                instrument,
                                items,
                            );
                            if let Ok(total) = answers.total() {
                                summary.scores.push(Score {
                                    instrument,
                                    authored_at_ms: m.created_at_ms,
                                    total,
                                });
                            }
                        }
                    }
                    _ => {}
                }
            }
            match page.last() {
                Some(last) if i64::try_from(page.len()).unwrap_or(0) == PAGE => after = last.seq,
                _ => break,
            }
        }
        Ok(summary)
    }

    /// The route that carries `clinic`'s records, if any does.
    fn route_of(&self, clinic: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.serves(clinic))
            .map(AsRef::as_ref)
    }

    /// The export as an access to the patient's data, by the exporter (as `client_id`).
    fn audit(client_id: &str, facts: &EpisodeFacts, resource_type: &str, id: String) -> Record {
        Record {
            id: uuid::Uuid::new_v4(),
            recorded_at_ms: crate::storage::now_ms(),
            action: Action::Export,
            outcome: Outcome::Success,
            reason: None,
            principal_kind: "system".into(),
            principal_id: Some(client_id.to_owned()),
            principal_organisation: Some(facts.record.organisation.clone()),
            issuer: None,
            client_id: Some(client_id.to_owned()),
            token_jti: None,
            resource_type: resource_type.into(),
            resource_id: Some(id),
            episode_id: None,
            patient: None,
            request_id: None,
            source: None,
        }
        .episode(&facts.episode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_the_upper_half() {
        assert_eq!(backoff_ms(0, 1_000, 300_000, 0), 500);
        assert_eq!(backoff_ms(0, 1_000, 300_000, 500), 1_000);
        assert_eq!(backoff_ms(3, 1_000, 300_000, 0), 4_000);
        assert_eq!(
            backoff_ms(3, 1_000, 300_000, u64::MAX),
            4_000 + u64::MAX % 4_001
        );
        assert_eq!(backoff_ms(30, 1_000, 300_000, 0), 150_000);
        assert!(backoff_ms(30, 1_000, 300_000, u64::MAX) <= 300_000);
        assert!(backoff_ms(i64::MAX, u64::MAX, u64::MAX, 7) > 0);
    }
}
