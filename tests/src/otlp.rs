//! A minimal OTLP/HTTP trace receiver: accepts `POST /v1/traces` (binary protobuf) on
//! loopback and keeps every decoded span, as a collector would receive them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// One received span: its name and string attributes.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub service_name: Option<String>,
}

/// A running receiver.
#[derive(Debug)]
pub struct Receiver {
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    raw: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state((spans.clone(), raw.clone()));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            endpoint: format!("http://{addr}"),
            spans,
            raw,
        }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Every request body received, undecoded.
    pub fn raw_bodies(&self) -> Vec<Vec<u8>> {
        self.raw.lock().unwrap().clone()
    }
}

type Shared = (Arc<Mutex<Vec<ReceivedSpan>>>, Arc<Mutex<Vec<Vec<u8>>>>);

fn string_value(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

async fn receive(State((spans, raw)): State<Shared>, body: Bytes) -> &'static str {
    raw.lock().unwrap().push(body.to_vec());
    let request = ExportTraceServiceRequest::decode(body).unwrap();
    let mut out = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans.resource.as_ref().and_then(|r| {
            r.attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .map(|kv| string_value(kv.value.as_ref()))
        });
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    name: span.name,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), string_value(kv.value.as_ref())))
                        .collect(),
                    service_name: service_name.clone(),
                });
            }
        }
    }
    ""
}
