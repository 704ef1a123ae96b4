//! What a sealed message says once the exporter has opened it: the client's inner format
//! (`docs/export.md`), a closed JSON object. Clients of the gateway write it; the gateway
//! itself never sees it in the clear.
//!
//! ```json
//! {"text": "Uke 3: godt jobbet", "in_response_to": "5f0e9d8c-…"}
//! {"questionnaire": {"instrument": "PHQ-9", "items": [1, 2, 0, 1, 1, 0, 2, 1, 0]}}
//! ```

use serde::Deserialize;

use crate::MappingError;
use crate::questionnaire::Instrument;

/// Payloads larger than this are refused before parsing (a message is a few KiB).
pub const MAX_CONTENT_BYTES: usize = 256 * 1024;

/// The opened content of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A message, feedback or notice.
    Text {
        text: String,
        in_response_to: Option<String>,
    },
    /// A filled-in PHQ-9 or GAD-7.
    Questionnaire {
        instrument: Instrument,
        items: Vec<u8>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    text: Option<String>,
    in_response_to: Option<String>,
    questionnaire: Option<WireQuestionnaire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireQuestionnaire {
    instrument: String,
    items: Vec<u8>,
}

impl Content {
    /// Parses the payload of a message of `kind`. A questionnaire response must carry a
    /// questionnaire and nothing else; the other kinds carry text.
    pub fn parse(kind: &str, payload: &[u8]) -> Result<Self, MappingError> {
        if payload.len() > MAX_CONTENT_BYTES {
            return Err(MappingError::Content(format!(
                "{} bytes is more than the {MAX_CONTENT_BYTES} allowed",
                payload.len()
            )));
        }
        let wire: Wire = serde_json::from_slice(payload)
            .map_err(|e| MappingError::Content(format!("not the content format: {e}")))?;
        match (kind, wire) {
            (
                "questionnaire-response",
                Wire {
                    text: None,
                    in_response_to: None,
                    questionnaire: Some(q),
                },
            ) => {
                let instrument = Instrument::parse(&q.instrument).ok_or_else(|| {
                    MappingError::Content(format!("unknown instrument `{}`", q.instrument))
                })?;
                Ok(Self::Questionnaire {
                    instrument,
                    items: q.items,
                })
            }
            ("questionnaire-response", _) => Err(MappingError::Content(
                "a questionnaire response carries `questionnaire` and nothing else".into(),
            )),
            (
                "message" | "feedback" | "notice",
                Wire {
                    text: Some(text),
                    in_response_to,
                    questionnaire: None,
                },
            ) => {
                if text.trim().is_empty() {
                    return Err(MappingError::Content("`text` is empty".into()));
                }
                Ok(Self::Text {
                    text,
                    in_response_to,
                })
            }
            ("message" | "feedback" | "notice", _) => Err(MappingError::Content(format!(
                "a {kind} carries `text` (and maybe `in_response_to`), no questionnaire"
            ))),
            (other, _) => Err(MappingError::Content(format!("unknown kind `{other}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_text_and_questionnaires_and_refuses_the_rest() {
        assert_eq!(
            Content::parse("feedback", br#"{"text":"Bra","in_response_to":"a"}"#).unwrap(),
            Content::Text {
                text: "Bra".into(),
                in_response_to: Some("a".into())
            }
        );
        assert_eq!(
            Content::parse(
                "questionnaire-response",
                br#"{"questionnaire":{"instrument":"GAD-7","items":[0,1,2,3,0,1,2]}}"#
            )
            .unwrap(),
            Content::Questionnaire {
                instrument: Instrument::Gad7,
                items: vec![0, 1, 2, 3, 0, 1, 2]
            }
        );
        for (kind, payload) in [
            ("message", &b"plain text"[..]),
            ("message", br#"{"text":"  "}"#),
            ("message", br#"{"text":"a","extra":1}"#),
            (
                "feedback",
                br#"{"questionnaire":{"instrument":"PHQ-9","items":[]}}"#,
            ),
            ("questionnaire-response", br#"{"text":"a"}"#),
            (
                "questionnaire-response",
                br#"{"questionnaire":{"instrument":"BDI","items":[1]}}"#,
            ),
            (
                "questionnaire-response",
                br#"{"questionnaire":{"instrument":"PHQ-9","items":[300]}}"#,
            ),
            ("receipt", br#"{"text":"a"}"#),
        ] {
            assert!(
                matches!(Content::parse(kind, payload), Err(MappingError::Content(_))),
                "{kind} {}",
                String::from_utf8_lossy(payload)
            );
        }
        let big = vec![b' '; MAX_CONTENT_BYTES + 1];
        assert!(Content::parse("message", &big).is_err());
    }
}
