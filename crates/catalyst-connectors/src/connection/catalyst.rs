//! Wiring a `catalyst://` store: the connector named by `$connector.catalyst_auth` supplies the
//! token for Catalyst's own API. That connector cannot keep its token in the store it
//! authenticates, so it keeps it in the host's local shared store (the default SQLite store,
//! encrypted like the rest), with the same single flight, lease and governor as any connector:
//! one Catalyst token per host, not one per process. The store sees it only as a
//! [`CatalystTokenProvider`].
//!
//! [`CatalystTokenProvider`]: crate::store::CatalystTokenProvider

use crate::clock::Clock;
use crate::config::{ConfigErrors, ConfigIssue, Settings};
use crate::connector::Connector;
use crate::connector::runtime::{Options, Runtime};
use crate::error::{Error, Result};
use crate::oauth::TokenClient;
use crate::store::{CatalystCacheStore, EncryptionKeys, MemoryStore, StoreSpec, TokenStore};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(super) fn open(
    spec: &StoreSpec,
    settings: &Settings,
    by_name: &BTreeMap<String, (crate::ConnectorConfig, String)>,
    (clock, options, client): (&Arc<dyn Clock>, &Options, &TokenClient),
    encryption: Option<&EncryptionKeys>,
    local: Option<&StoreSpec>,
) -> Result<(Arc<dyn TokenStore>, Connector)> {
    let StoreSpec::Catalyst {
        project,
        segment,
        origin,
        key,
        environment,
    } = spec
    else {
        return Err(Error::StoreOpen(crate::store::StoreError::new(
            "catalyst cache",
            crate::store::StoreErrorKind::Rejected,
            "not a catalyst:// store",
        )));
    };
    let issue = |problem: String| {
        Error::Config(ConfigErrors(vec![ConfigIssue {
            source: None,
            connector: Some("$connector".into()),
            field: Some("catalyst_auth".into()),
            problem,
        }]))
    };
    let name = settings.catalyst_auth.clone().ok_or_else(|| {
        issue(
            "a `catalyst://` store needs the name of the connector whose token calls Catalyst's API"
                .into(),
        )
    })?;
    let (config, _) = by_name
        .get(&name)
        .ok_or_else(|| issue(format!("no connector named `{name}` in this config")))?;
    // The host's local shared store; memory only where there is none (no data directory).
    let memory = || -> Arc<dyn TokenStore> { Arc::new(MemoryStore::with_clock(Arc::clone(clock))) };
    let host_tier = match local {
        Some(spec) => spec.open(Arc::clone(clock)).map_err(|e| {
            tracing::warn!(error = %e, "no local token store for the Catalyst API token and no fallback tier; keeping it in memory");
        }).ok(),
        None => None,
    };
    let local = crate::store::with_key(host_tier.clone().unwrap_or_else(memory), encryption);
    let admin_runtime = Arc::new(Runtime {
        store: local,
        clock: Arc::clone(clock),
        client: client.clone(),
        options: options.clone(),
        unrecorded: Arc::default(),
    });
    let admin = Connector::new(config.clone(), admin_runtime);
    let mut builder = CatalystCacheStore::builder(project.clone()).token_from(admin.clone());
    if let Some(s) = segment {
        builder = builder.segment(s.clone());
    }
    if let Some(o) = origin {
        builder = builder.origin(o.clone());
    }
    if let Some(k) = key {
        builder = builder.project_key(k.clone());
    }
    if let Some(e) = environment {
        builder = builder.environment(e.clone());
    }
    let store: Arc<dyn TokenStore> = Arc::new(builder.build().map_err(Error::StoreOpen)?);
    // Like Redis: while Catalyst's cache cannot be reached, this host's store stands in behind a
    // circuit breaker (one mint per host, the governor and shared health there), instead of
    // every process minting around the outage.
    let store: Arc<dyn TokenStore> = match host_tier {
        Some(tier) => Arc::new(crate::store::FallbackStore::new(store, tier)),
        None => store,
    };
    Ok((store, admin))
}
