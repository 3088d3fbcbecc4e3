//! The counters a connector reports through the `metrics` facade.

/// Counters registered once per connector (install your `metrics` recorder before building the
/// connection).
pub(crate) struct Metrics {
    pub(super) memory_hits: metrics::Counter,
    pub(super) store_hits: metrics::Counter,
    pub(super) misses: metrics::Counter,
    pub(super) mints_ok: metrics::Counter,
    pub(super) mints_failed: metrics::Counter,
    pub(super) served_stale: metrics::Counter,
    pub(super) governor_refusals: metrics::Counter,
    pub(super) store_errors: metrics::Counter,
}

impl Metrics {
    pub(super) fn new(name: &str) -> Self {
        let c = |metric: &'static str, extra: Option<(&'static str, &'static str)>| {
            let connector = name.to_owned();
            match extra {
                Some((k, v)) => metrics::counter!(metric, "connector" => connector, k => v),
                None => metrics::counter!(metric, "connector" => connector),
            }
        };
        Self {
            memory_hits: c("catalyst_connectors_hits_total", Some(("layer", "memory"))),
            store_hits: c("catalyst_connectors_hits_total", Some(("layer", "store"))),
            misses: c("catalyst_connectors_misses_total", None),
            mints_ok: c("catalyst_connectors_mints_total", Some(("outcome", "ok"))),
            mints_failed: c(
                "catalyst_connectors_mints_total",
                Some(("outcome", "error")),
            ),
            served_stale: c("catalyst_connectors_served_stale_total", None),
            governor_refusals: c("catalyst_connectors_governor_refusals_total", None),
            store_errors: c("catalyst_connectors_store_errors_total", None),
        }
    }
}
