//! Routes: where each clinic's records go. A route is one EPJ (with its summary record),
//! the HelseID client whose tokens it takes, and the clinics it serves. Each route has
//! its own claim loops and its own rest after failing, so an EPJ that is down or slow
//! holds up no other hospital.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::sink::Destination;

/// One way out.
#[derive(Debug)]
pub struct Route {
    /// For logs and `export status`: the hospital(s) it serves, or `epj` without a
    /// register. Never a URL (they can hold tenant identifiers).
    pub name: String,
    /// Organisation numbers of the clinics whose records it carries; `None`: every clinic
    /// (a deployment without a register).
    pub clinics: Option<Vec<String>>,
    pub destination: Destination,
    pub epj_base: String,
    pub summary_base: String,
    /// The client id the EPJ knows us by, for the export audit records.
    pub client_id: String,
    rest: Mutex<Rest>,
}

/// A route's consecutive failed passes and the end of its rest.
#[derive(Debug, Default)]
struct Rest {
    failures: u32,
    until: Option<Instant>,
}

impl Route {
    pub fn new(
        name: String,
        clinics: Option<Vec<String>>,
        destination: Destination,
        (epj_base, summary_base): (String, String),
        client_id: String,
    ) -> Self {
        Self {
            name,
            clinics,
            destination,
            epj_base: epj_base.trim_end_matches('/').to_owned(),
            summary_base: summary_base.trim_end_matches('/').to_owned(),
            client_id,
            rest: Mutex::new(Rest::default()),
        }
    }

    /// Whether it carries `clinic`'s records.
    pub fn serves(&self, clinic: &str) -> bool {
        self.clinics
            .as_ref()
            .is_none_or(|c| c.iter().any(|o| o == clinic))
    }

    /// How long the route still rests, if it does.
    pub fn resting(&self) -> Option<Duration> {
        let rest = self
            .rest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rest.until
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// A pass found the EPJ unreachable: rest for `delay(failures so far)`; returns the
    /// rest and whether this is the first failure in a row.
    pub fn failed(&self, delay: impl FnOnce(u32) -> Duration) -> (Duration, bool) {
        let mut rest = self
            .rest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pause = delay(rest.failures);
        let first = rest.failures == 0;
        rest.failures = rest.failures.saturating_add(1);
        rest.until = Some(Instant::now() + pause);
        (pause, first)
    }

    /// A pass delivered: the route is up. Returns the failed passes it had in a row.
    pub fn delivered(&self) -> u32 {
        let mut rest = self
            .rest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let failures = rest.failures;
        *rest = Rest::default();
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::sink::Folder;

    fn route(clinics: Option<Vec<String>>) -> Route {
        Route::new(
            "test".into(),
            clinics,
            Destination::Folder(Folder {
                dir: std::env::temp_dir(),
            }),
            ("epj/".into(), "summary".into()),
            "client".into(),
        )
    }

    #[test]
    fn a_route_serves_its_clinics_or_every_clinic_without_a_register() {
        let some = route(Some(vec!["974589095".into()]));
        assert!(some.serves("974589095"));
        assert!(!some.serves("974633574"));
        assert!(route(None).serves("974633574"));
        assert_eq!(some.epj_base, "epj");
    }

    #[test]
    fn failures_rest_the_route_until_it_delivers() {
        let r = route(None);
        assert!(r.resting().is_none());
        let (pause, first) = r.failed(|n| Duration::from_mins(u64::from(n + 1)));
        assert!(first && pause == Duration::from_mins(1));
        assert!(r.resting().is_some());
        let (pause, first) = r.failed(|n| Duration::from_mins(u64::from(n + 1)));
        assert!(!first && pause == Duration::from_mins(2));
        assert_eq!(r.delivered(), 2);
        assert!(r.resting().is_none());
        assert_eq!(r.delivered(), 0);
    }
}
