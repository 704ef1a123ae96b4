//! Who may reach an episode: the access checks every episode handler shares. Each asks
//! the pure policy (`icbt_auth::policy`) with what storage knows of the episode, records a
//! refusal in the access log, and on success hands back the record to commit with the
//! access.

use icbt_auth::now_secs;
use icbt_auth::policy::{self, EpisodeFacts, Resource};
use icbt_auth::principal::Authenticated;

use super::errors::{Problem, ProblemKind, forbidden};
use super::state::AppState;
use crate::audit::{Access, Action, Record};
use crate::domain::episode::{Clinic, Episode, EpisodeId, OrgNumber};
use crate::storage::CareTeamEntry;

/// Loads an episode with its clinic and care team, and checks `caller` may reach it for
/// `action` on `resource`. A refusal is recorded in the access log; on success, the
/// record to commit with the access is returned.
pub async fn reach(
    state: &AppState,
    access: &Access,
    caller: &Authenticated,
    id: EpisodeId,
    (action, resource): (Action, &str),
) -> Result<(Episode, Clinic, Vec<CareTeamEntry>, Record), Problem> {
    let (episode, clinic, team) = state
        .store
        .episode_with_team(id)
        .await?
        .ok_or_else(|| Problem::new(ProblemKind::NotFound))?;
    let record = admit(
        state,
        access,
        caller,
        (&episode, &clinic, &team),
        (action, resource),
    )
    .await?;
    Ok((episode, clinic, team, record))
}

/// Checks `caller` may reach a loaded episode for `action` on `resource`; a refusal is
/// recorded in the access log. On success, the record to commit with the access.
pub async fn admit(
    state: &AppState,
    access: &Access,
    caller: &Authenticated,
    (episode, clinic, team): (&Episode, &Clinic, &[CareTeamEntry]),
    (action, resource): (Action, &str),
) -> Result<Record, Problem> {
    let record = access.record(caller, action, resource).episode(episode);
    if let Err(denial) = decide_episode(state, caller, episode, clinic, team) {
        state
            .store
            .record_access(&[record.refused(denial.reason_code())])
            .await?;
        return Err(forbidden(denial));
    }
    Ok(record)
}

/// [`admit`] without recording a refusal: the access record to write if `caller` may
/// act, else `None`. For a decision made on a kept copy of the facts, which is taken
/// again on fresh rows before anyone is refused.
pub fn admitted(
    state: &AppState,
    access: &Access,
    caller: &Authenticated,
    (episode, clinic, team): (&Episode, &Clinic, &[CareTeamEntry]),
    (action, resource): (Action, &str),
) -> Option<Record> {
    decide_episode(state, caller, episode, clinic, team).ok()?;
    Some(access.record(caller, action, resource).episode(episode))
}

/// The episode with its clinic and team if `caller` may see it; for lists, where an
/// episode the caller may not see is left out rather than refused.
pub async fn visible(
    state: &AppState,
    caller: &Authenticated,
    id: EpisodeId,
) -> Result<Option<(Episode, Clinic, Vec<CareTeamEntry>)>, Problem> {
    let Some((episode, clinic, team)) = state.store.episode_with_team(id).await? else {
        return Ok(None);
    };
    Ok(decide_episode(state, caller, &episode, &clinic, &team)
        .is_ok()
        .then_some((episode, clinic, team)))
}

/// The policy's answer for `caller` on an episode with this clinic and care team.
fn decide_episode(
    state: &AppState,
    caller: &Authenticated,
    episode: &Episode,
    clinic: &Clinic,
    team: &[CareTeamEntry],
) -> Result<(), policy::Denial> {
    let members: Vec<_> = team.iter().map(CareTeamEntry::as_member).collect();
    let facts = EpisodeFacts {
        patient: &episode.patient,
        clinic: &clinic.org_number,
        care_team: &members,
    };
    policy::decide(
        caller,
        &state.auth.rules,
        &Resource::Episode(facts),
        now_secs(),
    )
}

/// Checks `caller` may manage the episodes of `clinic` (the platform's job); a refusal
/// is recorded with `refused`, the record of the attempt.
pub async fn manage(
    state: &AppState,
    caller: &Authenticated,
    clinic: &OrgNumber,
    refused: Record,
) -> Result<(), Problem> {
    if let Err(denial) = policy::decide(
        caller,
        &state.auth.rules,
        &Resource::ClinicEpisodes { clinic },
        now_secs(),
    ) {
        state
            .store
            .record_access(&[refused.refused(denial.reason_code())])
            .await?;
        return Err(forbidden(denial));
    }
    Ok(())
}
