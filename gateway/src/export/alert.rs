//! Risk alerts: the exporter reads questionnaire answers (nobody else in the gateway can),
//! so it screens each new questionnaire response as soon as it is stored, before and
//! whatever the EPJ export does, and raises a PHQ-9 item 9 answer above 0 to the care
//! team at once: a `notice` sealed with the clinic's journal device to the care team's
//! devices and the journal key, appended to the episode for the care team only, and so
//! pushed to their streams like any message. Its id derives from the response's, so
//! screening a response twice raises one alert.

use icbt_envelope::{Binding, Jwk, PublicKey, seal};
use serde_json::json;

use super::records::{self, EpisodeFacts};
use super::{Exporter, Failed};
use crate::audit::{Action, Record};
use crate::domain::episode::EpisodeId;
use crate::storage::{
    Appended, Audience, EpisodeRefusal, NewMessage, Owner, StoredMessage, now_ms,
};
use icbt_fhir_mapping::content::Content;
use icbt_fhir_mapping::questionnaire::Instrument;

/// Who raises an alert for a clinic no route serves (never in a consistent set-up).
const ALERT_SENDER: &str = "icbt-gateway-exporter";

/// Screened per pass at most.
const SCREEN_BATCH: i64 = 64;

impl Exporter {
    /// Screens what was stored since the last pass; returns the alerts raised.
    pub async fn screen(&self) -> Result<usize, crate::storage::StorageError> {
        let mut raised = 0;
        for (row, episode, seq) in self.store.unscreened(SCREEN_BATCH).await? {
            match self.screen_one(episode, seq).await {
                Ok(true) => raised += 1,
                Ok(false) | Err(Failed::Call(super::CallError::Refused { .. })) => {}
                Err(Failed::Storage(e)) => return Err(e),
                Err(
                    Failed::Unmappable(reason) | Failed::Call(super::CallError::Transient(reason)),
                ) => {
                    tracing::error!(row, error = %reason, "a questionnaire response could not be screened for risk");
                }
            }
            self.store.mark_screened(row).await?;
        }
        Ok(raised)
    }

    async fn screen_one(&self, episode: EpisodeId, seq: i64) -> Result<bool, Failed> {
        let facts = records::episode(&self.store, episode, &self.settings.systems).await?;
        let message = records::message(&self.store, episode, seq).await?;
        let Content::Questionnaire { instrument, items } = records::open(
            &self.store,
            self.keys.of(facts.clinic.org_number.as_str()),
            &mut records::Senders::default(),
            &message,
        )
        .await?
        else {
            return Ok(false);
        };
        let answers = records::answers(&facts, &self.settings.systems, &message, instrument, items);
        if !answers.needs_escalation() || instrument != Instrument::Phq9 {
            return Ok(false);
        }
        self.raise(&facts, &message, answers.items[8]).await?;
        Ok(true)
    }

    async fn raise(
        &self,
        facts: &EpisodeFacts,
        response: &StoredMessage,
        answer: u8,
    ) -> Result<(), Failed> {
        let clinic = Owner {
            kind: "journal",
            reference: facts.record.organisation.clone(),
        };
        let now = now_ms();
        let published = self
            .store
            .devices_of(std::slice::from_ref(&clinic))
            .await
            .map_err(Failed::Storage)?;
        let sender = published
            .iter()
            .filter(|d| d.active_at(now))
            .find_map(|d| {
                self.keys
                    .of(facts.clinic.org_number.as_str())
                    .device(&d.device_id)
            })
            .ok_or_else(|| {
                Failed::Unmappable(
                    "none of the configured journal keys is a published journal device of the clinic".into(),
                )
            })?;
        let (recipients, kids) = self.care_team_keys(facts, clinic, now).await?;
        let id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("{}#risk-alert", response.id).as_bytes(),
        );
        let label = [
            "ikke i det hele tatt",
            "flere dager",
            "mer enn halvparten av dagene",
            "nesten hver dag",
        ]
        .get(usize::from(answer))
        .copied()
        .unwrap_or("?");
        let payload = json!({
            "text": format!(
                "Risikovarsel: PHQ-9 spørsmål 9 (tanker om at det ville vært bedre å være død, eller om å skade seg selv) \
                 er besvart «{label}». Vurder risiko og kontakt pasienten nå."
            ),
            "in_response_to": response.id.to_string(),
        })
        .to_string();
        let binding = Binding {
            episode: facts.episode.id.to_string(),
            message: id.to_string(),
            kind: "notice".into(),
            sender: sender.device_id(),
        };
        let body = seal(payload.as_bytes(), &binding, &sender.signing, &recipients)
            .map_err(|e| Failed::Unmappable(format!("sealing the alert: {e}")))?;
        let hash = crate::domain::attachments::hex(
            ring::digest::digest(&ring::digest::SHA256, &body).as_ref(),
        );
        let recipients_json = serde_json::to_string(&kids).unwrap_or_else(|_| "[]".into());
        let device_id = sender.device_id();
        let client_id = self
            .route_of(facts.clinic.org_number.as_str())
            .map_or(ALERT_SENDER, |r| r.client_id.as_str());
        let message = NewMessage {
            episode: facts.episode.id,
            id,
            kind: "notice",
            sender_kind: "system",
            sender_ref: client_id,
            sender_device: &device_id,
            recipients: &recipients_json,
            content_type: icbt_envelope::MEDIA_TYPE,
            body: &body,
            attachments: "[]",
            request_hash: &hash,
            audience: Audience::CareTeam,
            context_version: None,
        };
        let record = Record {
            action: Action::Create,
            ..Self::audit(client_id, facts, "messages", id.to_string())
        };
        match self.store.append_message(&message, &record).await {
            Ok(Appended::Created(_)) => {
                tracing::warn!(episode = %facts.episode.id, alert = %id, "risk alert raised to the care team");
                if let Some(wake) = &self.wake {
                    wake();
                }
                Ok(())
            }
            // Raised by an earlier screening (its sealed bytes differ: a conflict).
            Ok(Appended::Replayed(_) | Appended::Conflict) => Ok(()),
            // Not decided on a kept send context, so never stale.
            Ok(Appended::Stale) => Err(Failed::Unmappable("the alert was stale".into())),
            Err(EpisodeRefusal::Storage(e)) => Err(Failed::Storage(e)),
            Err(other) => Err(Failed::Unmappable(format!(
                "the alert was refused: {other}"
            ))),
        }
    }

    /// The encryption keys (and their ids) of the care team's and the journal's active
    /// devices.
    async fn care_team_keys(
        &self,
        facts: &EpisodeFacts,
        clinic: Owner,
        now: i64,
    ) -> Result<(Vec<PublicKey>, Vec<String>), Failed> {
        let mut owners: Vec<Owner> = facts
            .record
            .therapists
            .iter()
            .map(|hpr| Owner {
                kind: "clinician",
                reference: hpr.clone(),
            })
            .collect();
        owners.push(clinic);
        let devices = self
            .store
            .devices_of(&owners)
            .await
            .map_err(Failed::Storage)?;
        let mut recipients = Vec::new();
        let mut kids = Vec::new();
        for d in devices.iter().filter(|d| d.active_at(now)) {
            let jwk: Jwk = serde_json::from_str(&d.encryption_jwk)
                .map_err(|_| Failed::Unmappable("a recipient key does not parse".into()))?;
            recipients.push(
                PublicKey::from_jwk(&jwk)
                    .map_err(|e| Failed::Unmappable(format!("a recipient key: {e}")))?,
            );
            kids.push(d.encryption_kid.clone());
        }
        Ok((recipients, kids))
    }
}
