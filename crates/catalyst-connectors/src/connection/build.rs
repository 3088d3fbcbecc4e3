//! [`ConnectionBuilder::build`] in five named steps.

use super::keep_warm::{AbortOnDrop, keep_warm};
use super::{Connection, ConnectionBuilder, Source};
use crate::clock::Clock;
use crate::config::{self, ConfigErrors, ConfigIssue, ConnectorConfig, Settings};
use crate::connector::Connector;
use crate::connector::runtime::{Options, Runtime};
use crate::error::{Error, Result};
use crate::oauth::{HttpTimeouts, TokenClient};
use crate::store::{EncryptionKeys, KeyError, STORE_ENV, StoreSpec, TokenStore};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The validated connector configs by name, with where each came from.
type ByName = BTreeMap<String, (ConnectorConfig, String)>;

pub(super) fn build(b: ConnectionBuilder) -> Result<Connection> {
    let mut issues = Vec::new();
    let mut warnings = Vec::new();
    // 1. Read every config source.
    let (mut by_name, settings) = read_sources(b.sources, &mut issues, &mut warnings);
    // A broken connector need not stop the others, when the caller says so.
    let mut invalid = BTreeMap::new();
    if b.skip_invalid {
        (issues, invalid) = set_aside_invalid(issues, &mut by_name);
    }
    // 2. Resolve the store's name and the encryption key (code, then environment, then config).
    let env_spec = if b.use_env && b.store.is_none() && b.store_spec.is_none() {
        store_from_env(&mut issues)
    } else {
        None
    };
    let key = resolve_key(b.encryption_key, b.use_env, &settings, &mut issues).map(|k| {
        if b.read_plaintext {
            k.reading_plaintext()
        } else {
            k
        }
    });
    if !issues.is_empty() {
        // Everything that is wrong, the skipped connectors' problems included.
        issues.extend(invalid.into_values().flatten());
        return Err(Error::Config(ConfigErrors(issues)));
    }
    let client = TokenClient::new(HttpTimeouts {
        connect: b.connect_timeout,
        total: b.request_timeout,
    })?;
    // 3. Open the store (a Catalyst Cache store also gets the connector for Catalyst's API).
    let spec = b
        .store_spec
        .or(env_spec)
        .or(settings.store.clone())
        .unwrap_or_else(StoreSpec::default_store);
    let local = b
        .local_store
        .clone()
        .unwrap_or_else(|| Some(StoreSpec::default_store()));
    let (store, catalyst_admin) = match b.store {
        Some(store) => (store, None),
        None => open_store(
            &spec,
            &settings,
            &by_name,
            (&b.clock, &b.options, &client),
            (key.as_ref(), local.as_ref()),
        )?,
    };
    let store = crate::store::with_key(store, key.as_ref());
    let runtime = Arc::new(Runtime {
        store,
        clock: b.clock,
        client,
        options: b.options,
        unrecorded: Arc::default(),
    });
    // 4. Make the connectors; refuse names whose keys the store cannot hold.
    let connectors = make_connectors(by_name, &runtime, catalyst_admin)?;
    // 5. Start keep-warm.
    let keep_warm = if b.keep_warm {
        Some(start_keep_warm(&connectors, &runtime, b.keep_warm_tick)?)
    } else {
        None
    };
    Ok(Connection {
        connectors,
        invalid: Arc::new(invalid),
        warnings: Arc::new(warnings),
        key_id: key.map(|k| k.current().id()),
        sinks: Arc::new(settings.sinks),
        _keep_warm: keep_warm,
    })
}

/// Takes the connectors with problems out of `by_name`: their issues by name, and the others.
fn set_aside_invalid(
    issues: Vec<ConfigIssue>,
    by_name: &mut ByName,
) -> (Vec<ConfigIssue>, BTreeMap<String, Vec<ConfigIssue>>) {
    let (theirs, rest): (Vec<_>, Vec<_>) = issues
        .into_iter()
        .partition(|i| i.connector.as_deref().is_some_and(|c| !c.starts_with('$')));
    let mut invalid: BTreeMap<String, Vec<ConfigIssue>> = BTreeMap::new();
    for issue in theirs {
        if let Some(name) = issue.connector.clone() {
            by_name.remove(&name);
            invalid.entry(name).or_default().push(issue);
        }
    }
    (rest, invalid)
}

fn issue(field: Option<&str>, problem: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        source: None,
        connector: None,
        field: field.map(str::to_owned),
        problem: problem.into(),
    }
}

/// Whether a config holds a client secret or a refresh token.
fn holds_a_secret(config: &serde_json::Value) -> bool {
    config.as_object().is_some_and(|connectors| {
        connectors
            .values()
            .any(|c| c.get("client_secret").is_some() || c.get("refresh_token").is_some())
    })
}

/// Step 1: parses every source; a connector defined twice is an issue.
fn read_sources(
    sources: Vec<Source>,
    issues: &mut Vec<ConfigIssue>,
    warnings: &mut Vec<ConfigIssue>,
) -> (ByName, Settings) {
    let mut configs: Vec<(ConnectorConfig, String)> = Vec::new();
    let mut settings = Settings::default();
    for (i, source) in sources.into_iter().enumerate() {
        let numbered = format!("source #{}", i + 1);
        let (value, origin, shown) = match source {
            Source::Json(v) => (Some(v), numbered, None),
            Source::File(p) => {
                let shown = p.display().to_string();
                let value = config::read_file(&p, issues);
                if value.as_ref().is_some_and(holds_a_secret) {
                    warnings.extend(config::open_to_others(&p));
                }
                (value, shown.clone(), Some(shown))
            }
            Source::Toml(t) => {
                let v = config::parse_toml_text(&t)
                    .map_err(|problem| issues.push(issue(None, problem.to_string())))
                    .ok();
                (v, numbered, None)
            }
            Source::Config(c) => {
                configs.push((*c, numbered));
                continue;
            }
        };
        if let Some(v) = value {
            config::parse_settings(&v, shown.as_deref(), &mut settings, issues);
            let found = config::parse_value(&v, shown.as_deref(), issues, warnings);
            configs.extend(found.into_iter().map(|c| (c, origin.clone())));
        }
    }
    let mut by_name = ByName::new();
    for (c, origin) in configs {
        if let Some((_, first)) = by_name.get(&c.name) {
            issues.push(ConfigIssue {
                source: None,
                connector: Some(c.name.clone()),
                field: None,
                problem: format!(
                    "defined more than once ({first} and {origin}); connector names must be unique, or tokens overwrite each other"
                ),
            });
            continue;
        }
        by_name.insert(c.name.clone(), (c, origin));
    }
    (by_name, settings)
}

/// Step 2a: the store named by `CONNECTOR_STORE`, if any.
fn store_from_env(issues: &mut Vec<ConfigIssue>) -> Option<StoreSpec> {
    StoreSpec::from_env().unwrap_or_else(|problem| {
        issues.push(issue(Some(STORE_ENV), problem.to_string()));
        None
    })
}

/// Step 2b: the encryption key, from code, else the environment, else the config's file.
fn resolve_key(
    given: Option<EncryptionKeys>,
    use_env: bool,
    settings: &Settings,
    issues: &mut Vec<ConfigIssue>,
) -> Option<EncryptionKeys> {
    let key_issue = |e: KeyError| issue(Some("encryption key"), e.to_string());
    if given.is_some() {
        return given;
    }
    if use_env {
        match EncryptionKeys::from_env() {
            Ok(Some(key)) => return Some(key),
            Ok(None) => {}
            Err(e) => {
                issues.push(key_issue(e));
                return None;
            }
        }
    }
    let path = settings.encryption_key_file.as_ref()?;
    EncryptionKeys::from_file(path)
        .map_err(|e| issues.push(key_issue(e)))
        .ok()
}

/// Step 3: opens the store `spec` names. A Catalyst Cache store needs a connector of this config
/// for Catalyst's own API; it is returned so that step 4 uses the same one.
#[cfg_attr(not(feature = "catalyst"), allow(unused_variables))]
fn open_store(
    spec: &StoreSpec,
    settings: &Settings,
    by_name: &ByName,
    (clock, options, client): (&Arc<dyn Clock>, &Options, &TokenClient),
    (key, local): (Option<&EncryptionKeys>, Option<&StoreSpec>),
) -> Result<(Arc<dyn TokenStore>, Option<Connector>)> {
    #[cfg(feature = "catalyst")]
    if let StoreSpec::Catalyst { .. } = spec {
        let (store, admin) = super::catalyst::open(
            spec,
            settings,
            by_name,
            (clock, options, client),
            key,
            local,
        )?;
        return Ok((store, Some(admin)));
    }
    let store = spec.open(Arc::clone(clock)).map_err(Error::StoreOpen)?;
    Ok((with_local_tier(spec, store, clock, local), None))
}

/// A Redis store gets the host's default SQLite store as its fallback tier (see
/// [`FallbackStore`]): a Redis outage is then one mint per host, not one per process.
#[cfg_attr(not(feature = "redis"), allow(unused_variables))]
fn with_local_tier(
    spec: &StoreSpec,
    store: Arc<dyn TokenStore>,
    clock: &Arc<dyn Clock>,
    local: Option<&StoreSpec>,
) -> Arc<dyn TokenStore> {
    #[cfg(all(feature = "redis", feature = "sqlite"))]
    if matches!(spec, StoreSpec::Redis { .. })
        && let Some(local @ StoreSpec::Sqlite(_)) = local
    {
        match local.open(Arc::clone(clock)) {
            Ok(local) => return Arc::new(crate::store::FallbackStore::new(store, local)),
            Err(e) => tracing::warn!(error = %e, "no local fallback for the Redis store"),
        }
    }
    store
}

/// Step 4: one connector per config (the Catalyst admin connector is reused as is).
fn make_connectors(
    by_name: ByName,
    runtime: &Arc<Runtime>,
    catalyst_admin: Option<Connector>,
) -> Result<Arc<BTreeMap<String, Connector>>> {
    let connectors: BTreeMap<String, Connector> = by_name
        .into_iter()
        .map(|(name, (config, _))| {
            let connector = match &catalyst_admin {
                Some(admin) if admin.name() == name => admin.clone(),
                _ => Connector::new(config, Arc::clone(runtime)),
            };
            (name, connector)
        })
        .collect();
    if let Some(max) = runtime.store.max_key_len() {
        let too_long: Vec<ConfigIssue> = connectors
            .values()
            .filter(|c| c.longest_key_len() > max)
            .map(|c| ConfigIssue {
                source: None,
                connector: Some(c.name().to_owned()),
                field: None,
                problem: format!(
                    "the name is too long for this store, whose keys are at most {max} characters (this connector needs {}): shorten it by {}",
                    c.longest_key_len(),
                    c.longest_key_len() - max
                ),
            })
            .collect();
        if !too_long.is_empty() {
            return Err(Error::Config(ConfigErrors(too_long)));
        }
    }
    Ok(Arc::new(connectors))
}

/// Step 5: the keep-warm task, which needs a Tokio runtime.
fn start_keep_warm(
    connectors: &Arc<BTreeMap<String, Connector>>,
    runtime: &Runtime,
    tick: std::time::Duration,
) -> Result<Arc<AbortOnDrop>> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| {
        Error::Config(ConfigErrors(vec![issue(
            Some("keep_warm"),
            "keep-warm needs a Tokio runtime: build the connection inside one",
        )]))
    })?;
    let task = handle.spawn(keep_warm(
        Arc::downgrade(connectors),
        Arc::clone(&runtime.clock),
        tick,
    ));
    Ok(Arc::new(AbortOnDrop(task)))
}
