//! Messages: the kinds there are, and who may send each.

use icbt_auth::principal::Principal;
use serde::{Deserialize, Serialize};

/// The kinds of message, and who may send each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MessageKind {
    Message,
    Feedback,
    QuestionnaireResponse,
    Notice,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Feedback => "feedback",
            Self::QuestionnaireResponse => "questionnaire-response",
            Self::Notice => "notice",
        }
    }

    pub fn allowed_for(self, principal: &Principal) -> bool {
        matches!(
            (self, principal),
            (
                Self::Message,
                Principal::Patient(_) | Principal::Clinician(_)
            ) | (Self::Feedback, Principal::Clinician(_))
                | (Self::QuestionnaireResponse, Principal::Patient(_))
                | (Self::Notice, Principal::System(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::episode::NationalId;
    use icbt_auth::identity::HprNumber;
    use icbt_auth::principal::{Acr, Clinician, Patient, SystemClient};

    #[test]
    fn who_may_send_which_kind() {
        let pid = NationalId::with_check_digits("010185123")
            .or_else(|| NationalId::with_check_digits("010185124"))
            .unwrap();
        let patient = Principal::Patient(Patient {
            pid: pid.clone(),
            acr: Acr::High,
        });
        let clinician = Principal::Clinician(Clinician {
            pid,
            hpr_number: HprNumber::parse("1").unwrap(),
            security_level: 4,
            organisation: None,
            orgnr_parent: None,
        });
        let system = Principal::System(SystemClient {
            client_id: "p".into(),
            orgnr_parent: None,
            orgnr_child: None,
        });
        let table = [
            (MessageKind::Message, [true, true, false]),
            (MessageKind::Feedback, [false, true, false]),
            (MessageKind::QuestionnaireResponse, [true, false, false]),
            (MessageKind::Notice, [false, false, true]),
        ];
        for (kind, expected) in table {
            let got = [
                kind.allowed_for(&patient),
                kind.allowed_for(&clinician),
                kind.allowed_for(&system),
            ];
            assert_eq!(got, expected, "{kind:?}");
        }
    }
}
