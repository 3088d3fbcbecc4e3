//! Wiring a `catalyst://` store: the connector named by `$connector.catalyst_auth` supplies the
//! token for Catalyst's own API. That connector keeps its token in memory (it cannot use the
//! store it authenticates). The store sees it only as a [`CatalystTokenProvider`].
//!
//! [`CatalystTokenProvider`]: crate::store::CatalystTokenProvider

use crate::clock::Clock;
use crate::config::{ConfigErrors, ConfigIssue, Settings};
use crate::connector::Connector;
use crate::error::{Error, Result};
use crate::oauth::TokenClient;
use crate::runtime::{Options, Runtime};
use crate::store::{CatalystCacheStore, MemoryStore, StoreSpec, TokenStore};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(super) fn open(
    spec: &StoreSpec,
    settings: &Settings,
    by_name: &BTreeMap<String, (crate::ConnectorConfig, String)>,
    clock: &Arc<dyn Clock>,
    options: &Options,
    client: &TokenClient,
) -> Result<(Arc<dyn TokenStore>, Connector)> {
    let StoreSpec::Catalyst {
        project,
        segment,
        origin,
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
    let admin_runtime = Arc::new(Runtime {
        store: Arc::new(MemoryStore::with_clock(Arc::clone(clock))),
        clock: Arc::clone(clock),
        client: client.clone(),
        options: options.clone(),
    });
    let admin = Connector::new(config.clone(), admin_runtime);
    let mut builder = CatalystCacheStore::builder(project.clone()).token_from(admin.clone());
    if let Some(s) = segment {
        builder = builder.segment(s.clone());
    }
    if let Some(o) = origin {
        builder = builder.origin(o.clone());
    }
    let store: Arc<dyn TokenStore> = Arc::new(builder.build().map_err(Error::StoreOpen)?);
    Ok((store, admin))
}
