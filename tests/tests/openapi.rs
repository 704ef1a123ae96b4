//! The OpenAPI 3.1 document served at /openapi.json and the routes served agree: every
//! documented operation is routed (it never answers "no such route" or "wrong method"),
//! and a method the document does not list for a path is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code stops at the first surprise

use icbt_e2e::idp::{IdentityProviders, Idp};
use icbt_e2e::{Backend, Gateway, GatewayOptions};
use serde_json::Value;

#[tokio::test]
async fn document_and_routes_agree() {
    let idps = IdentityProviders::shared();
    let config = format!(
        "{}{}",
        idps.gateway_config(),
        idps.login_config(Idp::Idporten)
    );
    let gw = Gateway::start_with(
        Backend::Sqlite,
        GatewayOptions {
            config_toml: Some(config),
            ..Default::default()
        },
    )
    .await;
    let http = gw.client();
    let doc: Value = http
        .get(format!("{}/openapi.json", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for shared in ["Unauthenticated", "Forbidden"] {
        assert_eq!(
            doc["components"]["responses"][shared]["content"]["application/problem+json"]["schema"]
                ["$ref"],
            "#/components/schemas/ProblemDocument",
            "{shared}"
        );
    }
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{paths:?}");
    let methods = ["get", "put", "post", "delete", "patch"];
    for (path, operations) in paths {
        let concrete = path
            .replace("{id}", "6a1f2d3c-0000-4000-8000-000000000001")
            .replace("{message_id}", "6a1f2d3c-0000-4000-8000-000000000002")
            .replace("{issuer}", "idporten");
        let url = format!("{}{concrete}", gw.url);
        for method in methods {
            let request = http.request(method.to_uppercase().parse().unwrap(), &url);
            let request = if method == "get" {
                request
            } else {
                request
                    .header("content-type", "application/json")
                    .body("{}")
            };
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            match operations.get(method) {
                Some(operation) => {
                    assert!(
                        status != 404 && status != 405,
                        "{method} {path} is documented but answered {status}"
                    );
                    assert!(
                        operation["responses"]
                            .as_object()
                            .is_some_and(|r| !r.is_empty()),
                        "{method} {path}"
                    );
                    if operation["security"]
                        .as_array()
                        .is_some_and(|s| !s.is_empty())
                    {
                        assert_eq!(
                            operation["responses"]["401"]["$ref"],
                            "#/components/responses/Unauthenticated",
                            "{method} {path}: the one shared 401"
                        );
                        assert!(
                            operation["responses"]["403"].is_object(),
                            "{method} {path}: a 403"
                        );
                    }
                    for requirement in operation["security"].as_array().into_iter().flatten() {
                        for name in requirement.as_object().unwrap().keys() {
                            assert!(
                                schemes.contains_key(name),
                                "{method} {path} names undefined scheme {name}"
                            );
                        }
                    }
                }
                None => assert_eq!(
                    status, 405,
                    "{method} {path} is not documented but answered {status}"
                ),
            }
        }
    }
}
