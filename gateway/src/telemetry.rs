//! Logs, traces and metrics.
//!
//! Logs go to stderr (JSON or human). Spans are exported over OTLP/HTTP when an endpoint is
//! configured. Request metrics are Prometheus counters and histograms labelled by route
//! template, never by the raw path, which may hold a national id number.

use std::sync::Arc;
use std::time::Duration;

use icbt_config::{LogFormat, TelemetryConfig};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "configuration key `telemetry.log_filter`: {0}; fix: use a tracing filter such as `info`"
    )]
    Filter(String),
    #[error("configuration key `telemetry.otlp_endpoint`: {0}")]
    Otlp(String),
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes spans still queued.
#[derive(Debug)]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

/// The exporter's blocking HTTP client: no redirects, and with `trust_roots` the only
/// CAs an `https://` endpoint may chain to (the TLS configuration of every other
/// outbound call); without, reqwest's defaults.
fn otlp_client(
    trust_roots: Option<&std::path::Path>,
) -> Result<reqwest::blocking::Client, TelemetryError> {
    let fail = |e: String| TelemetryError::Otlp(e);
    let builder = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    let builder = match trust_roots {
        None => builder,
        Some(path) => builder.tls_backend_preconfigured(
            icbt_auth::http::tls_config(path).map_err(|e| fail(e.to_string()))?,
        ),
    };
    builder.build().map_err(|e| fail(e.to_string()))
}

impl Telemetry {
    /// Installs the global subscriber. Call outside any async runtime: the OTLP exporter
    /// runs its own blocking HTTP client on the span processor's thread.
    ///
    /// `trust_roots` (PEM), when set, are the only CAs an `https://` OTLP endpoint may
    /// chain to (`auth.trust_roots_file`, as for every outbound call); otherwise the
    /// system's.
    pub fn init(
        config: &TelemetryConfig,
        trust_roots: Option<&std::path::Path>,
    ) -> Result<Self, TelemetryError> {
        let filter = EnvFilter::try_new(&config.log_filter)
            .map_err(|e| TelemetryError::Filter(e.to_string()))?;
        let tracer_provider = match &config.otlp_endpoint {
            None => None,
            Some(base) => {
                let endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(otlp_client(trust_roots)?)
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(endpoint)
                    .with_timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
                Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(
                            Resource::builder()
                                .with_service_name(config.service_name.clone())
                                .build(),
                        )
                        .build(),
                )
            }
        };
        let otel_layer = tracer_provider
            .as_ref()
            .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("icbt-gateway")));
        let (json, human) = match config.log_format {
            LogFormat::Json => (
                Some(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_current_span(true)
                        .with_span_list(false)
                        .with_writer(std::io::stderr),
                ),
                None,
            ),
            LogFormat::Human => (
                None,
                Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)),
            ),
        };
        tracing_subscriber::registry()
            .with(filter)
            .with(json)
            .with(human)
            .with(otel_layer)
            .try_init()
            .map_err(|_| TelemetryError::AlreadyInstalled)?;
        Ok(Self { tracer_provider })
    }

    /// Exports spans still queued and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// Request metrics, rendered in the Prometheus text format at `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    /// 1 while the access log's head disagrees with its checkpoints and records wait.
    audit_stuck: Gauge,
    /// Size of the newest access-log checkpoint each outside place holds.
    audit_published: Family<TargetLabels, Gauge>,
    /// Requests refused at the concurrency limit, by class (`api`, `upload`).
    shed: Family<ShedLabels, Counter>,
}

/// Which limit refused a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    pub class: &'static str,
}

/// An outside place checkpoints are pushed to: `directory` or a witness's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("icbt_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ])
        });
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            latency.clone(),
        );
        let audit_stuck = Gauge::default();
        registry.register(
            "audit_sequencer_stuck",
            "1 while the access log's cached head disagrees with its newest signed checkpoint, so no record joins the tree",
            audit_stuck.clone(),
        );
        let audit_published = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "audit_published_size",
            "Size of the newest access-log checkpoint a directory or witness holds",
            audit_published.clone(),
        );
        let shed = Family::<ShedLabels, Counter>::default();
        registry.register(
            "http_requests_shed",
            "Requests refused with 503 at the concurrency limit",
            shed.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            audit_stuck,
            audit_published,
            shed,
        }
    }
}

impl Metrics {
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts one answered request. `route` is the route template, never the raw path.
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let labels = RequestLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one request refused at the concurrency limit of `class`.
    pub fn shed(&self, class: &'static str) {
        self.shed.get_or_create(&ShedLabels { class }).inc();
    }

    /// Whether the access log's sequencer is stuck on a head that disagrees with its
    /// checkpoints.
    pub fn audit_stuck(&self, stuck: bool) {
        self.audit_stuck.set(i64::from(stuck));
    }

    /// `target` (the directory, or a witness by name) holds the checkpoint of `size`.
    pub fn audit_published(&self, target: &str, size: u64) {
        self.audit_published
            .get_or_create(&TargetLabels {
                target: target.to_owned(),
            })
            .set(i64::try_from(size).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_latency_by_route_and_status() {
        let m = Metrics::default();
        m.observe("GET", "/healthz", 200, Duration::from_millis(2));
        m.observe("GET", "/healthz", 200, Duration::from_millis(3));
        m.observe("GET", "(unmatched)", 404, Duration::from_millis(1));
        let text = m.render();
        assert!(
            text.contains(
                r#"icbt_gateway_http_requests_total{method="GET",route="/healthz",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"route="(unmatched)",status="404"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("icbt_gateway_http_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
