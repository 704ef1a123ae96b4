//! What the gateway demands of an envelope before it commits it, without opening it:
//! the protected header names the route's episode, message and kind and one of the
//! caller's own devices, and the recipients are exactly the episode's participants'
//! active devices plus the clinic's journal key(s).

use std::collections::BTreeSet;

use crate::Envelope;

/// The facts the gateway knows about a send.
#[derive(Debug, Clone, Copy)]
pub struct Expectation<'a> {
    pub episode: &'a str,
    pub message: &'a str,
    pub kind: &'a str,
    /// Device ids (signing key thumbprints) the authenticated caller has active.
    pub sender_devices: &'a [String],
    /// Encryption key ids of every active device of the episode's participants.
    pub participants: &'a [String],
    /// Encryption key ids of the clinic's active journal keys.
    pub journal: &'a [String],
}

/// Why an envelope is refused; each is a 422 with its own problem type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The protected header names another episode, message or kind.
    Binding { field: &'static str },
    /// The header's sender is not an active device of the caller.
    SenderNotADevice,
    /// The clinic has no active journal key, so nothing can be sent yet.
    NoJournalKey,
    /// Required recipients left out; `journal` when a journal key is among them.
    RecipientMissing { kids: Vec<String>, journal: bool },
    /// Recipient keys that belong to no participant nor the journal.
    RecipientUnknown { kids: Vec<String> },
}

/// Checks `envelope` against what the gateway knows.
pub fn check(envelope: &Envelope, expected: &Expectation<'_>) -> Result<(), Violation> {
    let binding = envelope.binding();
    for (field, same) in [
        ("episode", binding.episode == expected.episode),
        ("message", binding.message == expected.message),
        ("kind", binding.kind == expected.kind),
    ] {
        if !same {
            return Err(Violation::Binding { field });
        }
    }
    if !expected.sender_devices.contains(&binding.sender) {
        return Err(Violation::SenderNotADevice);
    }
    if expected.journal.is_empty() {
        return Err(Violation::NoJournalKey);
    }
    let present: BTreeSet<&str> = envelope
        .recipients()
        .iter()
        .map(|r| r.kid.as_str())
        .collect();
    let required: BTreeSet<&str> = expected
        .participants
        .iter()
        .chain(expected.journal)
        .map(String::as_str)
        .collect();
    let missing: Vec<String> = required
        .difference(&present)
        .map(|k| (*k).to_owned())
        .collect();
    if !missing.is_empty() {
        let journal = missing.iter().any(|k| expected.journal.contains(k));
        return Err(Violation::RecipientMissing {
            kids: missing,
            journal,
        });
    }
    let unknown: Vec<String> = present
        .difference(&required)
        .map(|k| (*k).to_owned())
        .collect();
    if !unknown.is_empty() {
        return Err(Violation::RecipientUnknown { kids: unknown });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Binding, DeviceKeys, Limits, PublicKey, seal};

    struct World {
        sender: DeviceKeys,
        patient: DeviceKeys,
        journal: DeviceKeys,
    }

    fn world() -> World {
        World {
            sender: DeviceKeys::generate().unwrap(),
            patient: DeviceKeys::generate().unwrap(),
            journal: DeviceKeys::generate().unwrap(),
        }
    }

    fn envelope(w: &World, kind: &str, to: &[&DeviceKeys]) -> Envelope {
        let binding = Binding {
            episode: "ep".into(),
            message: "msg".into(),
            kind: kind.into(),
            sender: w.sender.device_id(),
        };
        let keys: Vec<PublicKey> = to.iter().map(|d| d.encryption.public().clone()).collect();
        Envelope::parse(
            &seal(b"x", &binding, &w.sender.signing, &keys).unwrap(),
            &Limits::default(),
        )
        .unwrap()
    }

    fn check_with(w: &World, e: &Envelope, journal: &[String]) -> Result<(), Violation> {
        let sender = [w.sender.device_id()];
        let participants = [w.sender.encryption.kid(), w.patient.encryption.kid()];
        check(
            e,
            &Expectation {
                episode: "ep",
                message: "msg",
                kind: "feedback",
                sender_devices: &sender,
                participants: &participants,
                journal,
            },
        )
    }

    #[test]
    fn accepts_participants_and_journal_exactly() {
        let w = world();
        let e = envelope(&w, "feedback", &[&w.sender, &w.patient, &w.journal]);
        assert_eq!(check_with(&w, &e, &[w.journal.encryption.kid()]), Ok(()));
    }

    #[test]
    fn names_the_missing_journal_key() {
        let w = world();
        let e = envelope(&w, "feedback", &[&w.sender, &w.patient]);
        assert_eq!(
            check_with(&w, &e, &[w.journal.encryption.kid()]),
            Err(Violation::RecipientMissing {
                kids: vec![w.journal.encryption.kid()],
                journal: true
            })
        );
        assert_eq!(check_with(&w, &e, &[]), Err(Violation::NoJournalKey));
    }

    #[test]
    fn names_a_missing_participant_device_and_an_outsider() {
        let w = world();
        let e = envelope(&w, "feedback", &[&w.sender, &w.journal]);
        assert!(matches!(
            check_with(&w, &e, &[w.journal.encryption.kid()]),
            Err(Violation::RecipientMissing { journal: false, .. })
        ));
        let outsider = DeviceKeys::generate().unwrap();
        let e = envelope(
            &w,
            "feedback",
            &[&w.sender, &w.patient, &w.journal, &outsider],
        );
        assert_eq!(
            check_with(&w, &e, &[w.journal.encryption.kid()]),
            Err(Violation::RecipientUnknown {
                kids: vec![outsider.encryption.kid()]
            })
        );
    }

    #[test]
    fn refuses_another_kind_or_a_device_not_the_callers() {
        let w = world();
        let e = envelope(&w, "message", &[&w.sender, &w.patient, &w.journal]);
        assert_eq!(
            check_with(&w, &e, &[w.journal.encryption.kid()]),
            Err(Violation::Binding { field: "kind" })
        );
        let e = envelope(&w, "feedback", &[&w.sender, &w.patient, &w.journal]);
        let participants = [w.sender.encryption.kid()];
        let journal = [w.journal.encryption.kid()];
        assert_eq!(
            check(
                &e,
                &Expectation {
                    episode: "ep",
                    message: "msg",
                    kind: "feedback",
                    sender_devices: &[w.patient.device_id()],
                    participants: &participants,
                    journal: &journal,
                }
            ),
            Err(Violation::SenderNotADevice)
        );
    }
}
