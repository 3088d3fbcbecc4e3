//! Shared health: the last refresh failure of a connector's credentials, kept in the store beside
//! the token (in the clear even under an encryption key: it holds no secret, and every process must
//! read it whatever its key), so every process — `connector status` in another shell, a
//! health check — sees what a worker saw. Behind Redis it is kept in the host-local tier too, so
//! it still holds while Redis is down.
//!
//! Written after a failed flight; deleted after a successful mint by a process that saw a
//! failure. A failure older than the token in the store is shown as resolved.

use super::Connector;
use super::credentials::Credentials;
use crate::clock::{EpochMillis, millis_to_system_time};
use crate::error::Error;
use crate::record::lenient_i64;
use crate::store::{StoreErrorKind, TokenWrite};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long a recorded failure is kept when nothing replaces it.
const KEEP: Duration = Duration::from_secs(24 * 3600);

/// The last refresh failure of a connector's credentials, as any process recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureRecord {
    /// The failure's stable code (see [`Error::code`]), e.g. `reauthorization_required`.
    pub code: String,
    /// The error message (never a secret).
    pub message: String,
    /// When it happened.
    pub at: SystemTime,
    /// Failed flights in a row, as the recording process counted them.
    pub consecutive_failures: u32,
    /// When the recording process will try again, if it set a time.
    pub next_attempt_at: Option<SystemTime>,
}

impl Credentials {
    /// Where this refresh token's shared health is kept.
    pub(super) fn health_key(&self) -> String {
        crate::key::health_key(&self.fingerprint)
    }
}

impl Connector {
    /// Records a failed flight in the store (best effort: a store failure is only logged).
    pub(super) async fn save_failure(
        &self,
        e: &Error,
        failures: u32,
        next_attempt_at: EpochMillis,
    ) {
        // Only what the token endpoint said is the credentials' health; a key, store or config
        // problem is this process's own (and would hide the others' record behind its key).
        if !matches!(
            e,
            Error::ReauthorizationRequired { .. }
                | Error::InvalidClient { .. }
                | Error::Throttled { .. }
                | Error::Transient { .. }
                | Error::Tls { .. }
                | Error::MalformedResponse { .. }
                | Error::Rejected { .. }
        ) {
            return;
        }
        let creds = self.inner.creds.load_full();
        let key = creds.health_key();
        let now = self.inner.runtime.clock.now_millis();
        let data = json!({
            "code": e.code(),
            "message": e.to_string(),
            "at": now,
            "failures": failures,
            "next_attempt_at": next_attempt_at,
        })
        .to_string();
        // Kept in the host-local tier too (behind Redis): it then still refuses while Redis is down.
        let store = &self.inner.runtime.store;
        for tier in std::iter::once(Arc::clone(store)).chain(store.local_tier()) {
            let expected = match tier.get(&key).await {
                Ok(v) => v.map(|v| v.generation),
                // Written with another encryption key: it holds no secret, replace it.
                Err(e) if e.kind == StoreErrorKind::Key => match tier.delete(&key, None).await {
                    Ok(_) => None,
                    Err(_) => continue,
                },
                Err(_) => continue,
            };
            let write = TokenWrite::new(&key, expected, &data, KEEP);
            if let Err(err) = tier.compare_and_set(write).await {
                tracing::debug!(connector = %self.inner.name, error = %err, "could not record the failure in the store");
            }
        }
    }

    /// Forgets a recorded failure after a success.
    pub(super) async fn clear_failure(&self) {
        let key = self.inner.creds.load().health_key();
        let store = &self.inner.runtime.store;
        if let Some(local) = store.local_tier() {
            let _ = local.delete(&key, None).await;
        }
        let _ = store.delete(&key, None).await;
    }

    /// The last failure recorded in the store by any process, if any (behind Redis, the newer of
    /// its record and this host's: one written while Redis was down is only here).
    pub async fn recorded_failure(&self) -> Option<FailureRecord> {
        let key = self.inner.creds.load().health_key();
        let store = &self.inner.runtime.store;
        let shared = read_failure(&**store, &key).await;
        let Some(local) = store.local_tier() else {
            return shared;
        };
        match (shared, read_failure(&*local, &key).await) {
            (Some(s), Some(l)) => Some(if l.at > s.at { l } else { s }),
            (s, l) => s.or(l),
        }
    }
}

/// The failure recorded at `key` in `store`, if any and readable.
async fn read_failure(store: &dyn crate::store::TokenStore, key: &str) -> Option<FailureRecord> {
    let stored = store.get(key).await.ok()??;
    let v: Value = serde_json::from_str(&stored.data).ok()?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let at = v.get("at").and_then(lenient_i64)?;
    let next = v
        .get("next_attempt_at")
        .and_then(lenient_i64)
        .filter(|n| *n > at);
    Some(FailureRecord {
        code: text("code")?,
        message: text("message")?,
        at: millis_to_system_time(at),
        consecutive_failures: v
            .get("failures")
            .and_then(lenient_i64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1),
        next_attempt_at: next.map(millis_to_system_time),
    })
}
