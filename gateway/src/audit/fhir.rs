//! Access records as FHIR R4 `AuditEvent`, following IHE Basic Audit Log Patterns (BALP):
//! `RESTful` reads, searches, creates and updates with the user agent as requestor, the
//! patient as entity, the request id and the token's `jti` as entities; logins as DICOM
//! "User Authentication" (110114), which BALP has no profile for.

use serde_json::{Value, json};

use super::{Action, Outcome, Record};

const FNR: &str = "urn:oid:2.16.578.1.12.4.1.4.1";
const DNR: &str = "urn:oid:2.16.578.1.12.4.1.4.2";
const HPR: &str = "urn:oid:2.16.578.1.12.4.1.4.4";
const ENH: &str = "urn:oid:2.16.578.1.12.4.1.4.101";
const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/";

/// A record's time as a FHIR `instant`.
pub fn instant(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// The identifier system of a national id number: D-nummer when the first digit is 4–7.
fn national_id_system(id: &str) -> &'static str {
    match id.as_bytes().first() {
        Some(b'4'..=b'7') => DNR,
        _ => FNR,
    }
}

/// `(type, subtype, action code, BALP profile)` of an action.
fn coding(
    action: Action,
) -> (
    Value,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
) {
    let rest = json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"});
    match action {
        Action::Read | Action::AuditRead => (rest, Some("read"), "R", Some("IHE.BasicAudit.Read")),
        Action::Search => (rest, Some("search"), "E", Some("IHE.BasicAudit.Query")),
        Action::Create | Action::KeyPublish => {
            (rest, Some("create"), "C", Some("IHE.BasicAudit.Create"))
        }
        Action::Update => (rest, Some("update"), "U", Some("IHE.BasicAudit.Update")),
        Action::KeyRevoke => (rest, Some("delete"), "D", Some("IHE.BasicAudit.Delete")),
        Action::Export => (
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110106", "display": "Export"}),
            None,
            "R",
            None,
        ),
        Action::Login | Action::Logout => (
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"}),
            Some(if action == Action::Login {
                "110122"
            } else {
                "110123"
            }),
            "E",
            None,
        ),
    }
}

/// The `AuditEvent` of one record.
pub fn audit_event(record: &Record) -> Value {
    let (kind, subtype, action, profile) = coding(record.action);
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": record.id.to_string(),
        "type": kind,
        "action": action,
        "recorded": instant(record.recorded_at_ms),
        "outcome": if record.outcome == Outcome::Success { "0" } else { "4" },
        "source": {
            "observer": {"display": "icbt-gateway"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]
        },
    });
    if let Some(profile) = profile {
        event["meta"] = json!({"profile": [format!("{BALP}{profile}")]});
    }
    if let Some(code) = subtype {
        event["subtype"] = if code.starts_with("110") {
            json!([{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": code}])
        } else {
            json!([{"system": "http://hl7.org/fhir/restful-interaction", "code": code}])
        };
    }
    if let Some(reason) = &record.reason {
        event["outcomeDesc"] = json!(reason);
    }

    let mut user = json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
        "requestor": true,
    });
    let who = match (record.principal_kind.as_str(), &record.principal_id) {
        ("clinician", Some(hpr)) => Some(json!({"identifier": {"system": HPR, "value": hpr}})),
        ("patient", Some(id)) => {
            Some(json!({"identifier": {"system": national_id_system(id), "value": id}}))
        }
        ("system", Some(client)) => Some(json!({"display": format!("client {client}")})),
        _ => None,
    };
    if let Some(who) = who {
        user["who"] = who;
    }
    if let Some(source) = &record.source {
        user["network"] = json!({"address": source, "type": "2"});
    }
    if let Some(org) = &record.principal_organisation {
        user["location"] = json!({"identifier": {"system": ENH, "value": org}});
    }
    let mut agents = vec![user];
    if let Some(client) = &record.client_id {
        agents.push(json!({
            "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
            "who": {"display": client},
            "requestor": false,
        }));
    }
    event["agent"] = Value::Array(agents);

    let mut entities = Vec::new();
    if let Some(patient) = &record.patient {
        entities.push(json!({
            "what": {"identifier": {"system": national_id_system(patient), "value": patient}},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
        }));
    }
    let data = record
        .resource_id
        .clone()
        .or_else(|| record.episode_id.map(|e| e.to_string()));
    entities.push(json!({
        "what": data.map_or_else(
            || json!({"display": record.resource_type}),
            |id| json!({"identifier": {"value": id}, "display": record.resource_type}),
        ),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
    }));
    if let Some(request_id) = &record.request_id {
        entities.push(json!({
            "what": {"identifier": {"value": request_id}},
            "type": {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "code": "XrequestId"},
        }));
    }
    if let Some(jti) = &record.token_jti {
        entities.push(json!({
            "what": {"identifier": {"value": format!("urn:ietf:params:oauth:jti:{jti}")}},
            "type": {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "code": "OAuth"},
        }));
    }
    event["entity"] = Value::Array(entities);
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::tests::sample;

    #[test]
    fn a_read_follows_balp() {
        let e = audit_event(&sample(1));
        assert_eq!(e["resourceType"], "AuditEvent");
        assert_eq!(e["type"]["code"], "rest");
        assert_eq!(e["subtype"][0]["code"], "read");
        assert_eq!(e["action"], "R");
        assert_eq!(e["outcome"], "0");
        assert_eq!(e["agent"][0]["requestor"], true);
        assert_eq!(e["agent"][0]["who"]["identifier"]["system"], HPR);
        let patient = &e["entity"][0];
        assert_eq!(patient["type"]["code"], "1");
        assert_eq!(patient["role"]["code"], "1");
        assert_eq!(patient["what"]["identifier"]["system"], FNR);
        let jti = e["entity"].as_array().unwrap().last().unwrap();
        assert_eq!(
            jti["what"]["identifier"]["value"],
            "urn:ietf:params:oauth:jti:jti-1"
        );
        assert_eq!(e["recorded"], "2026-09-21T14:13:20.001Z");
    }

    #[test]
    fn search_create_and_login_codes() {
        let mut r = sample(1);
        r.action = Action::Search;
        let e = audit_event(&r);
        assert_eq!(
            (e["subtype"][0]["code"].as_str(), e["action"].as_str()),
            (Some("search"), Some("E"))
        );
        r.action = Action::Create;
        assert_eq!(audit_event(&r)["action"], "C");
        r.action = Action::Login;
        let e = audit_event(&r);
        assert_eq!(e["type"]["code"], "110114");
        assert_eq!(e["action"], "E");
        r.outcome = Outcome::Refused;
        assert_eq!(audit_event(&r)["outcome"], "4");
    }

    #[test]
    fn d_numbers_get_their_own_system() {
        assert_eq!(national_id_system("41018512345"), DNR);
        assert_eq!(national_id_system("01018512345"), FNR);
    }
}
