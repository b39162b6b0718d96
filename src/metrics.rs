//! Prometheus metrics: one registry, registered once at start, rendered by
//! the admin listener's `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub auth: IntCounterVec,
    /// `auth{reason="admitted"}`, resolved once: it is bumped on every admitted request.
    pub admitted: IntCounter,
    pub store_latency: HistogramVec,
    pub websockets: IntGaugeVec,
    pub upstream_errors: IntCounterVec,
    pub reloads: IntCounterVec,
    /// Each TLS certificate's notAfter, by its file and first name.
    pub cert_expiry: IntGaugeVec,
}

// Collectors built from static, valid names and registered once into a fresh
// registry cannot fail; a failure here is a programming error caught by tests.
const STATIC_METRIC: &str = "static metric definition is valid";

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect(STATIC_METRIC);
            registry.register(Box::new(c.clone())).expect(STATIC_METRIC);
            c
        };
        let requests = counter(
            "sessiongate_requests_total",
            "Requests by route and status",
            &["route", "status"],
        );
        let auth = counter(
            "sessiongate_auth_decisions_total",
            "Authentication decisions by reason",
            &["reason"],
        );
        let upstream_errors = counter(
            "sessiongate_upstream_errors_total",
            "Upstream errors by route and kind",
            &["route", "kind"],
        );
        let reloads = counter(
            "sessiongate_config_reloads_total",
            "Config reloads by outcome",
            &["outcome"],
        );
        let store_latency = HistogramVec::new(
            HistogramOpts::new(
                "sessiongate_store_round_trip_seconds",
                "Store round-trip latency by operation",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ]),
            &["op"],
        )
        .expect(STATIC_METRIC);
        registry
            .register(Box::new(store_latency.clone()))
            .expect(STATIC_METRIC);
        let websockets = IntGaugeVec::new(
            Opts::new(
                "sessiongate_websockets_open",
                "Open WebSocket connections by route",
            ),
            &["route"],
        )
        .expect(STATIC_METRIC);
        registry
            .register(Box::new(websockets.clone()))
            .expect(STATIC_METRIC);
        let cert_expiry = IntGaugeVec::new(
            Opts::new(
                "sessiongate_tls_certificate_expiry_timestamp_seconds",
                "When each TLS listener certificate expires (notAfter, seconds since the epoch)",
            ),
            &["cert_file", "name"],
        )
        .expect(STATIC_METRIC);
        registry
            .register(Box::new(cert_expiry.clone()))
            .expect(STATIC_METRIC);
        let admitted = auth.with_label_values(&["admitted"]);
        Metrics {
            registry,
            requests,
            admitted,
            auth,
            store_latency,
            websockets,
            upstream_errors,
            reloads,
            cert_expiry,
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_text_format() {
        let m = Metrics::new();
        m.requests.with_label_values(&["chat", "200"]).inc();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("sessiongate_requests_total{route=\"chat\",status=\"200\"} 1"));
    }
}
