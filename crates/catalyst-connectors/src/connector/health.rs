//! Shared health: the last refresh failure of a connector's credentials, kept in the store beside
//! the token (in the clear even under an encryption key: it holds no secret, and every process must
//! read it whatever its key), so every process — `connector status` in another shell, a
//! health check — sees what a worker saw, and none asks Zoho again with a refresh token another
//! process saw revoked or throttled. A store made of tiers keeps it in each ([`FallbackStore`]).
//!
//! Written after a failed flight; deleted after a successful mint by a process that saw a
//! failure. A failure older than the token in the store is shown as resolved.
//!
//! [`FallbackStore`]: crate::FallbackStore

use super::acquire::Acquisition;
use crate::clock::{EpochMillis, millis_to_system_time, until};
use crate::error::{Error, ErrorKind};
use crate::record::HealthRecord;
use crate::store::{StoreErrorKind, TokenWrite, generation_of};
use std::time::{Duration, SystemTime};

/// How long a recorded failure is kept when nothing replaces it.
const KEEP: Duration = Duration::from_secs(24 * 3600);

/// The last refresh failure of a connector's credentials, as any process recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureRecord {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The failure's stable code ([`ErrorKind::code`]), e.g. `reauthorization_required`.
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

impl Acquisition {
    /// Records a failed flight in the store (best effort: a store failure is only logged). Only
    /// what the token endpoint said is the credentials' health
    /// ([`ErrorKind::is_credentials_health`]).
    pub(crate) async fn save_failure(
        &self,
        e: &Error,
        failures: u32,
        next_attempt_at: EpochMillis,
    ) {
        if !e.kind().is_credentials_health() {
            return;
        }
        let (zoho_code, description) = e.zoho_details();
        let now = self.runtime.clock.now_millis();
        let data = HealthRecord {
            kind: e.kind(),
            zoho_code: zoho_code.map(str::to_owned),
            description: description.map(str::to_owned),
            message: e.to_string(),
            at: now,
            failures,
            next_attempt_at: Some(next_attempt_at).filter(|n| *n > now),
        }
        .to_json();
        let store = &self.runtime.store;
        let key = self.creds().health_key();
        let expected = match generation_of(store.get(&key).await) {
            Ok(g) => g,
            // Written with another encryption key by an older version: it holds no secret,
            // replace it.
            Err(e) if e.kind == StoreErrorKind::Key => match store.delete(&key, None).await {
                Ok(_) => None,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let write = TokenWrite::new(&key, expected, &data, KEEP);
        if let Err(err) = store.compare_and_set(write).await {
            tracing::debug!(connector = %self.name, error = %err, "could not record the failure in the store");
        }
    }

    /// Forgets a recorded failure after a success.
    pub(crate) async fn clear_failure(&self) {
        let _ = self
            .runtime
            .store
            .delete(&self.creds().health_key(), None)
            .await;
    }

    /// The health record of the credentials in use, if one is stored and readable.
    async fn health_record(&self) -> Option<HealthRecord> {
        let stored = self
            .runtime
            .store
            .get(&self.creds().health_key())
            .await
            .ok()??;
        HealthRecord::parse(&stored.data)
    }

    /// The last failure recorded in the store by any process, if any.
    pub(crate) async fn recorded_failure(&self) -> Option<FailureRecord> {
        let r = self.health_record().await?;
        Some(FailureRecord {
            kind: r.kind,
            code: r.kind.code().to_owned(),
            message: r.message,
            at: millis_to_system_time(r.at),
            consecutive_failures: r.failures,
            next_attempt_at: r.next_attempt_at.map(millis_to_system_time),
        })
    }

    /// A refusal another process recorded that makes a mint pointless at `now`, while its wait
    /// (the negative-cache TTL, or Zoho's throttle window) has not passed: the refresh token was
    /// rejected, or Zoho throttles it. Typed as the original refusal, marked `recorded`. The
    /// record is keyed by the credentials' fingerprint, so new credentials start clean.
    pub(crate) async fn refused_by_others(&self, now: EpochMillis) -> Option<Error> {
        let r = self.health_record().await?;
        let next = r.next_attempt_at.filter(|n| *n > now)?;
        let connector = self.name.clone();
        let code = r.zoho_code.unwrap_or_else(|| r.kind.code().to_owned());
        match r.kind {
            ErrorKind::ReauthorizationRequired => Some(Error::ReauthorizationRequired {
                connector,
                grant: "refresh token",
                code,
                description: r.description,
                recorded: true,
            }),
            ErrorKind::Throttled => Some(Error::Throttled {
                connector,
                code,
                description: r.description,
                retry_after: Some(until(now, next, Duration::from_secs(1))),
                recorded: true,
            }),
            _ => None,
        }
    }
}
