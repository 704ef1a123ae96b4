//! Transaction bundles whose every entry is safe to send again: creates are conditional
//! on our own identifier (`ifNoneExist`), episode state goes by conditional update on the
//! identifier. A retried bundle therefore finds what the first attempt made and changes
//! nothing; entries refer to each other by `urn:uuid:` full URLs, which the server maps
//! to the resources it created or found.

use fhir_sdk::r4b::codes::{BundleType, HTTPVerb};
use fhir_sdk::r4b::resources::{Bundle, BundleEntry, BundleEntryRequest, Resource};
use fhir_sdk::r4b::types::Reference;

use crate::MappingError;

/// The search that finds a resource by one identifier, URL-encoded for a query string.
pub fn identifier_query(system: &str, value: &str) -> String {
    let token = format!("{system}|{value}");
    let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    format!("identifier={encoded}")
}

/// A `urn:uuid:` name for the `role` part of the record `id`: the same inputs give the
/// same name (UUID v5), so a retry sends the very same bundle.
pub fn full_url(id: &str, role: &str) -> String {
    let name = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("{id}#{role}").as_bytes(),
    );
    format!("urn:uuid:{name}")
}

/// A literal reference to another entry of the same bundle.
pub fn to_entry(full_url: &str) -> Result<Reference, MappingError> {
    Ok(Reference::builder()
        .reference(full_url.to_owned())
        .build()?)
}

/// A transaction being assembled.
#[derive(Debug, Default)]
pub struct Transaction {
    entries: Vec<Option<BundleEntry>>,
}

impl Transaction {
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates `resource` unless one with `if_none_exist` (a search, e.g. from
    /// [`identifier_query`]) exists.
    pub fn create(
        &mut self,
        full_url: &str,
        resource: impl Into<Resource>,
        if_none_exist: String,
    ) -> Result<&mut Self, MappingError> {
        let resource = resource.into();
        let url = resource.resource_type().to_string();
        let request = BundleEntryRequest::builder()
            .method(HTTPVerb::Post)
            .url(url)
            .if_none_exist(if_none_exist)
            .build()?;
        self.entries.push(Some(
            BundleEntry::builder()
                .full_url(full_url.to_owned())
                .resource(resource)
                .request(request)
                .build()?,
        ));
        Ok(self)
    }

    /// Creates `resource` unconditionally (for resources without an identifier; the
    /// caller makes sure a retry does not get here twice).
    pub fn create_always(
        &mut self,
        full_url: &str,
        resource: impl Into<Resource>,
    ) -> Result<&mut Self, MappingError> {
        let resource = resource.into();
        let request = BundleEntryRequest::builder()
            .method(HTTPVerb::Post)
            .url(resource.resource_type().to_string())
            .build()?;
        self.entries.push(Some(
            BundleEntry::builder()
                .full_url(full_url.to_owned())
                .resource(resource)
                .request(request)
                .build()?,
        ));
        Ok(self)
    }

    /// Creates or replaces the one resource found by `search` (conditional update).
    pub fn upsert(
        &mut self,
        full_url: &str,
        resource: impl Into<Resource>,
        search: &str,
    ) -> Result<&mut Self, MappingError> {
        let resource = resource.into();
        let url = format!("{}?{search}", resource.resource_type());
        let request = BundleEntryRequest::builder()
            .method(HTTPVerb::Put)
            .url(url)
            .build()?;
        self.entries.push(Some(
            BundleEntry::builder()
                .full_url(full_url.to_owned())
                .resource(resource)
                .request(request)
                .build()?,
        ));
        Ok(self)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn into_bundle(self) -> Result<Bundle, MappingError> {
        Ok(Bundle::builder()
            .r#type(BundleType::Transaction)
            .entry(self.entries)
            .build()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systems;
    use fhir_sdk::r4b::resources::Patient;

    #[test]
    fn entries_are_conditional_and_names_are_stable() {
        assert_eq!(full_url("m1", "encounter"), full_url("m1", "encounter"));
        assert_ne!(full_url("m1", "encounter"), full_url("m1", "communication"));
        assert_eq!(
            identifier_query(systems::FNR, "01018512366"),
            "identifier=urn%3Aoid%3A2.16.578.1.12.4.1.4.1%7C01018512366"
        );
        let patient = Patient::builder()
            .identifier(vec![Some(systems::national_id("01018512366").unwrap())])
            .build()
            .unwrap();
        let mut t = Transaction::new();
        t.create(
            &full_url("p", "patient"),
            patient.clone(),
            identifier_query(systems::FNR, "01018512366"),
        )
        .unwrap()
        .upsert(&full_url("p", "again"), patient, "identifier=a%7Cb")
        .unwrap();
        let bundle = serde_json::to_value(t.into_bundle().unwrap()).unwrap();
        assert_eq!(bundle["type"], "transaction");
        assert_eq!(bundle["entry"][0]["request"]["method"], "POST");
        assert_eq!(bundle["entry"][0]["request"]["url"], "Patient");
        assert!(
            bundle["entry"][0]["request"]["ifNoneExist"]
                .as_str()
                .unwrap()
                .starts_with("identifier=")
        );
        assert_eq!(bundle["entry"][1]["request"]["method"], "PUT");
        assert_eq!(
            bundle["entry"][1]["request"]["url"],
            "Patient?identifier=a%7Cb"
        );
        assert!(
            bundle["entry"][0]["fullUrl"]
                .as_str()
                .unwrap()
                .starts_with("urn:uuid:")
        );
    }
}
