//! What ends a stream or long poll before its client closes it: the authorization that
//! opened it ends. A stream carries its own deadlines (the token's or session's expiry,
//! the end of a cover period) and listens for [`Change`]s that committed elsewhere
//! (a logout, a device revoked, a care team changed), on this instance in-process and
//! from other instances through PostgreSQL's NOTIFY on [`CHANNEL`].
//!
//! The stream then sends a last event, `end`, whose `reason` tells the client what to
//! do: re-authenticate (`expired`, `logged-out`, `device-revoked`) or reconnect at once
//! (the rest), in both cases resuming from its last event id.

use std::time::Duration;

use tokio::sync::broadcast;

pub use crate::domain::authz::{CHANNEL, Change, EndReason};
use crate::domain::participants::Owner;
use crate::storage::{Store, now_ms};

/// What a stream's authorization rests on, and the changes it watches.
#[derive(Debug)]
pub struct Authorization {
    store: Store,
    changes: broadcast::Receiver<Change>,
    /// When the token expires (Unix ms); for a session, when it would expire unless used.
    expires_at_ms: i64,
    /// The login session's id hash, when it opened the stream.
    session: Option<String>,
    /// The device the stream was opened for, and whose it must be.
    device: Option<(String, Owner)>,
    /// The clinician's HPR number, and when their next cover period ends.
    clinician: Option<(String, Option<i64>)>,
}

/// What [`Authorization::watch`] needs to know of the caller.
#[derive(Debug, Default)]
pub struct Grounds {
    pub expires_at_ms: i64,
    pub session: Option<String>,
    /// The device named, and the caller as its owner.
    pub device: Option<(String, Owner)>,
    pub hpr: Option<String>,
}

/// A timer never set to more than this: it is set again when it fires.
const LONGEST_SLEEP: Duration = Duration::from_hours(1);

impl Authorization {
    /// Starts watching; the caller's grounds are checked again after subscribing, so a
    /// change committed since the request was authenticated is not missed.
    pub async fn watch(
        store: Store,
        changes: broadcast::Receiver<Change>,
        grounds: Grounds,
    ) -> Result<Result<Self, EndReason>, crate::storage::StorageError> {
        let Grounds {
            expires_at_ms,
            session,
            device,
            hpr,
        } = grounds;
        let clinician = match hpr {
            Some(hpr) => {
                let ends = store.next_cover_end(&hpr, now_ms()).await?;
                Some((hpr, ends))
            }
            None => None,
        };
        let mut watch = Self {
            store,
            changes,
            expires_at_ms,
            session,
            device,
            clinician,
        };
        Ok(match watch.still_holds().await? {
            Some(reason) => Err(reason),
            None => Ok(watch),
        })
    }

    /// Why the authorization no longer holds, if it does not; looks in the database.
    async fn still_holds(&mut self) -> Result<Option<EndReason>, crate::storage::StorageError> {
        let now = now_ms();
        if let Some(session) = &self.session {
            match self.store.session_live_until(session).await? {
                Some(until) if until > now => self.expires_at_ms = until,
                Some(_) => return Ok(Some(EndReason::Expired)),
                None => return Ok(Some(EndReason::LoggedOut)),
            }
        }
        if self.expires_at_ms <= now {
            return Ok(Some(EndReason::Expired));
        }
        if let Some((device, owner)) = &self.device {
            let active = self
                .store
                .device(device)
                .await?
                .is_some_and(|d| d.owner == *owner && d.active_at(now));
            if !active {
                return Ok(Some(EndReason::DeviceRevoked));
            }
        }
        Ok(None)
    }

    /// Waits until the authorization ends, and says why. Cancel-safe: a stream calls it
    /// afresh beside each wait for its next entry.
    pub async fn ended(&mut self) -> EndReason {
        loop {
            let now = now_ms();
            let cover = self.clinician.as_ref().and_then(|(_, ends)| *ends);
            let next = cover.map_or(self.expires_at_ms, |c| c.min(self.expires_at_ms));
            let pause =
                Duration::from_millis(u64::try_from(next - now).unwrap_or(0)).min(LONGEST_SLEEP);
            tokio::select! {
                biased;
                change = self.changes.recv() => match change {
                    Ok(change) => {
                        if let Some(reason) = self.ends_on(&change).await {
                            return reason;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => return EndReason::Recheck,
                    // No more changes: the gateway is going away.
                    Err(broadcast::error::RecvError::Closed) => return EndReason::Shutdown,
                },
                () = tokio::time::sleep(pause) => {
                    if now_ms() < next {
                        continue;
                    }
                    if cover.is_some_and(|c| c <= now_ms()) {
                        return EndReason::CoverEnded;
                    }
                    // The token or session deadline: a session may have been used meanwhile.
                    match self.still_holds().await {
                        Ok(Some(reason)) => return reason,
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot check a stream's session; ending it");
                            return EndReason::Recheck;
                        }
                    }
                }
            }
        }
    }

    /// Whether `change` ends this stream, and why.
    async fn ends_on(&mut self, change: &Change) -> Option<EndReason> {
        match change {
            Change::SessionEnded(id) if self.session.as_ref() == Some(id) => {
                Some(EndReason::LoggedOut)
            }
            Change::DeviceRevoked(id) if self.device.as_ref().is_some_and(|(d, _)| d == id) => {
                Some(EndReason::DeviceRevoked)
            }
            Change::CareTeamLeft(hpr) if self.is_clinician(hpr) => Some(EndReason::CareTeamLeft),
            Change::CareTeamChanged(hpr) if self.is_clinician(hpr) => {
                match self.store.next_cover_end(hpr, now_ms()).await {
                    Ok(ends) => {
                        if let Some((_, next)) = &mut self.clinician {
                            *next = ends;
                        }
                        None
                    }
                    Err(_) => Some(EndReason::Recheck),
                }
            }
            Change::Unknown => Some(EndReason::Recheck),
            _ => None,
        }
    }

    fn is_clinician(&self, hpr: &str) -> bool {
        self.clinician.as_ref().is_some_and(|(mine, _)| mine == hpr)
    }
}
