//! Moving a connector's stored records to the connection's current encryption key (and from
//! unencrypted to encrypted): the last step of a key rotation.

use super::acquire::Acquisition;
use crate::clock::until;
use crate::error::{Error, Result};
use crate::record::TokenRecord;
use crate::store::{CasOutcome, StoreError, TokenWrite};
use std::time::Duration;

/// What [`Connector::rekey`](super::Connector::rekey) rewrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rekeyed {
    /// The stored refresh token (one obtained by a code exchange; a refresh token written in the
    /// config is not in the store).
    pub refresh_token: bool,
    /// The stored access token.
    pub access_token: bool,
}

impl Acquisition {
    /// Rewrites the stored access token and refresh token with the store's current key, in one
    /// compare-and-set (the same write a mint makes). The caller has just made sure a live access
    /// token is stored.
    pub(super) async fn rekey(&self) -> Result<Rekeyed> {
        let creds = self.creds();
        let store = &self.runtime.store;
        let failed = |e: StoreError| {
            self.store_problem(&e).unwrap_or_else(|| Error::Store {
                connector: self.name.clone(),
                source: e,
            })
        };
        let refresh = store.get(&creds.refresh_key).await.map_err(failed)?;
        let Some(access) = store.get(&creds.key).await.map_err(failed)? else {
            return Ok(Rekeyed {
                refresh_token: false,
                access_token: false,
            });
        };
        let expires_at = TokenRecord::from_json(&access.data).map_or(0, |r| r.expires_at);
        let ttl = until(
            self.runtime.clock.now_millis(),
            expires_at,
            Duration::from_secs(1),
        );
        let mut write = TokenWrite::new(&creds.key, Some(access.generation), &access.data, ttl);
        if let Some(r) = &refresh {
            write = write.with_refresh(&creds.refresh_key, &r.data);
        }
        match store.compare_and_set(write).await.map_err(failed)? {
            CasOutcome::Written { .. } => Ok(Rekeyed {
                refresh_token: refresh.is_some(),
                access_token: true,
            }),
            // Another process wrote a new token meanwhile (with its key): nothing is lost, and
            // running again moves it.
            CasOutcome::Conflict { .. } => Err(Error::Store {
                connector: self.name.clone(),
                source: StoreError::new(
                    "rekey",
                    crate::store::StoreErrorKind::Unavailable,
                    "another process wrote the token while it was being rekeyed; run it again",
                ),
            }),
        }
    }
}
