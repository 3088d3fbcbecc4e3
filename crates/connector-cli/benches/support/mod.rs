//! What every benchmark here shares.

use std::path::PathBuf;

/// The `connector` to measure: `CONNECTOR_BENCH_BIN` when set (e.g. the static-pie build that
/// ships, from `packaging/build-release`), else the one cargo built for this benchmark.
pub fn connector() -> PathBuf {
    std::env::var_os("CONNECTOR_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_connector").into())
}
