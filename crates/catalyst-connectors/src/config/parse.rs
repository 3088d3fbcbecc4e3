//! Reading configs: the SDKs' JSON shape, TOML of the same shape, `$connector` settings.

use super::validate::validate;
use super::{ConfigIssue, ConnectorConfig};
use crate::secret::{ClientSecret, RefreshToken, SdkSecretKey};
use serde_json::{Map, Value};
use std::path::Path;

#[derive(Clone, Debug)]
pub(super) enum Number {
    Seconds(u64),
    Invalid(String),
}

/// Unvalidated fields of one connector, as read from any source.
#[derive(Clone, Debug, Default)]
pub(super) struct RawConnector {
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<ClientSecret>,
    pub(super) auth_url: Option<String>,
    pub(super) refresh_url: Option<String>,
    pub(super) refresh_token: Option<RefreshToken>,
    pub(super) redirect_url: Option<String>,
    pub(super) expires_in: Option<Number>,
    pub(super) refresh_in: Option<Number>,
    pub(super) live_token_limit: Option<Number>,
    pub(super) dc: Option<String>,
    pub(super) api_domain: Option<String>,
    pub(super) catalyst_sdk: Option<String>,
    pub(super) secret_key: Option<SdkSecretKey>,
    /// Fields present with the wrong type (already reported; not to be reported missing too).
    pub(super) mistyped: Vec<String>,
}

const KNOWN_FIELDS: &[&str] = &[
    "client_id",
    "client_secret",
    "auth_url",
    "refresh_url",
    "refresh_token",
    "redirect_url",
    "expires_in",
    "refresh_in",
    "live_token_limit",
    "dc",
    "api_domain",
    "catalyst_sdk",
    "secret_key",
];

/// Reads connector configs from a JSON value of the SDK shape (`{name: {client_id, …}}`), adding
/// every problem to `issues`.
pub(crate) fn parse_value(
    value: &Value,
    source: Option<&str>,
    issues: &mut Vec<ConfigIssue>,
    warnings: &mut Vec<ConfigIssue>,
) -> Vec<ConnectorConfig> {
    let issue = |connector: Option<&str>, field: Option<&str>, problem: String| ConfigIssue {
        source: source.map(str::to_owned),
        connector: connector.map(str::to_owned),
        field: field.map(str::to_owned),
        problem,
    };
    let Some(map) = value.as_object() else {
        issues.push(issue(
            None,
            None,
            format!(
                "expected an object mapping connector names to their settings, found {}",
                kind_of(value)
            ),
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, entry) in map {
        if name.starts_with('$') {
            continue; // connection settings; see `parse_settings`
        }
        let Some(fields) = entry.as_object() else {
            issues.push(issue(
                Some(name),
                None,
                format!("expected an object of settings, found {}", kind_of(entry)),
            ));
            continue;
        };
        let mut local = Vec::new();
        let raw = read_raw(name, fields, &mut local, warnings, source);
        if let Some(c) = validate(name, raw, &mut local)
            && local.is_empty()
        {
            out.push(c);
        }
        issues.extend(local.into_iter().map(|mut i| {
            i.source = source.map(str::to_owned);
            i
        }));
    }
    out
}

fn read_raw(
    name: &str,
    fields: &Map<String, Value>,
    issues: &mut Vec<ConfigIssue>,
    warnings: &mut Vec<ConfigIssue>,
    source: Option<&str>,
) -> RawConnector {
    for key in fields.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str()) {
            let problem = match did_you_mean(key, KNOWN_FIELDS) {
                Some(known) => format!("unknown setting, ignored (did you mean `{known}`?)"),
                None => format!(
                    "unknown setting, ignored (known: {})",
                    KNOWN_FIELDS.join(", ")
                ),
            };
            warnings.push(ConfigIssue {
                source: source.map(str::to_owned),
                connector: Some(name.to_owned()),
                field: Some(key.clone()),
                problem,
            });
        }
    }
    let mut mistyped = Vec::new();
    let mut string = |field: &str| -> Option<String> {
        match fields.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                issues.push(ConfigIssue {
                    source: None,
                    connector: Some(name.to_owned()),
                    field: Some(field.to_owned()),
                    problem: format!("expected a string, found {}", kind_of(other)),
                });
                mistyped.push(field.to_owned());
                None
            }
        }
    };
    let mut raw = RawConnector {
        client_id: string("client_id"),
        client_secret: string("client_secret").map(ClientSecret::new),
        auth_url: string("auth_url"),
        refresh_url: string("refresh_url"),
        refresh_token: string("refresh_token").map(RefreshToken::new),
        redirect_url: string("redirect_url"),
        dc: string("dc"),
        api_domain: string("api_domain"),
        catalyst_sdk: string("catalyst_sdk"),
        secret_key: string("secret_key").map(SdkSecretKey::new),
        ..RawConnector::default()
    };
    raw.mistyped = mistyped;
    let number = |field: &str| -> Option<Number> {
        match fields.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(match n.as_u64() {
                Some(v) => Number::Seconds(v),
                None => Number::Invalid(n.to_string()),
            }),
            Some(Value::String(s)) => Some(match s.trim().parse::<u64>() {
                Ok(v) => Number::Seconds(v),
                Err(_) => Number::Invalid(format!("{s:?}")),
            }),
            Some(other) => Some(Number::Invalid(kind_of(other).to_owned())),
        }
    };
    raw.expires_in = number("expires_in");
    raw.refresh_in = number("refresh_in");
    raw.live_token_limit = number("live_token_limit");
    raw
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The largest config file read: far beyond any real one, small enough to fail fast.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads a config file: a regular file (a FIFO or a device such as `/dev/zero` is refused
/// without blocking or reading it) of at most [`MAX_CONFIG_BYTES`], in UTF-8.
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let not_regular = || "not a regular file (a config is a .json or .toml file)".to_owned();
    // Looked at before opening: opening a FIFO with no writer would wait forever.
    let before = std::fs::metadata(path).map_err(|e| format!("cannot read the file ({e})"))?;
    if !before.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the file ({e})"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the file ({e})"))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "{} bytes: larger than the {} MiB a config may be",
            meta.len(),
            MAX_CONFIG_BYTES / (1024 * 1024)
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the file ({e})"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "larger than the {} MiB a config may be",
            MAX_CONFIG_BYTES / (1024 * 1024)
        ));
    }
    String::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 text (at byte {})", e.utf8_error().valid_up_to()))
}

/// A warning when `path` (which holds secrets) can be read by users other than its owner. The
/// file is not ours to change: it is left as it is.
pub(crate) fn open_to_others(path: &Path) -> Option<ConfigIssue> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o044 != 0).then(|| ConfigIssue {
        source: Some(path.display().to_string()),
        connector: None,
        field: None,
        problem: format!(
            "holds a client secret or refresh token and is readable by other users (mode {:o}); `chmod 600 {}`",
            mode & 0o777,
            path.display()
        ),
    })
}

/// Reads a `.json` or `.toml` file (by extension) into the JSON value model.
pub(crate) fn read_file(path: &Path, issues: &mut Vec<ConfigIssue>) -> Option<Value> {
    let source_issue = |problem: String| ConfigIssue {
        source: Some(path.display().to_string()),
        connector: None,
        field: None,
        problem,
    };
    let text = match read_bounded(path) {
        Ok(t) => t,
        Err(problem) => {
            issues.push(source_issue(problem));
            return None;
        }
    };
    // Editors on Windows write a byte-order mark; it is not part of the document.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let is_toml = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let value = if is_toml {
        parse_toml_text(text).map_err(source_issue)
    } else {
        serde_json::from_str::<Value>(text)
            // serde_json's syntax errors name a position, never the content.
            .map_err(|e| source_issue(format!("not valid JSON ({e})")))
    };
    if !is_toml && value.is_ok() {
        // JSON parsers keep the last of two equal keys; a config must not say two things.
        for (connector, key) in duplicate_keys(text) {
            issues.push(ConfigIssue {
                source: Some(path.display().to_string()),
                field: connector.as_ref().map(|_| key.clone()),
                problem: match &connector {
                    Some(_) => "set more than once; keep one".into(),
                    None => format!(
                        "connector `{key}` is defined more than once; connector names must be unique"
                    ),
                },
                connector,
            });
        }
    }
    value.map_err(|issue| issues.push(issue)).ok()
}

/// Connection-wide settings, from the reserved top-level `$connector` object of a config:
/// `{"$connector": {"store": "sqlite:/path/tokens.db", "encryption_key_file": "/path/key"}}`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    pub store: Option<crate::store::StoreSpec>,
    pub encryption_key_file: Option<std::path::PathBuf>,
    /// The connector whose token calls Catalyst's API (for a `catalyst://` store).
    pub catalyst_auth: Option<String>,
    /// Token files for the agent to keep (`connector serve --sink`'s specs).
    pub sinks: Vec<String>,
}

/// Reads `$connector` settings (names starting with `$` are reserved for settings).
pub(crate) fn parse_settings(
    value: &Value,
    source: Option<&str>,
    settings: &mut Settings,
    issues: &mut Vec<ConfigIssue>,
) {
    let Some(map) = value.as_object() else {
        return;
    };
    let mut issue = |field: Option<&str>, problem: String| {
        issues.push(ConfigIssue {
            source: source.map(str::to_owned),
            connector: Some("$connector".into()),
            field: field.map(str::to_owned),
            problem,
        })
    };
    for (name, entry) in map.iter().filter(|(n, _)| n.starts_with('$')) {
        if name != "$connector" {
            issue(
                None,
                format!(
                    "`{name}`: names starting with `$` are reserved; the settings object is `$connector`"
                ),
            );
            continue;
        }
        let Some(fields) = entry.as_object() else {
            issue(
                None,
                format!("expected an object, found {}", kind_of(entry)),
            );
            continue;
        };
        for (field, v) in fields {
            if field == "sinks" {
                match v
                    .as_array()
                    .map(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                {
                    Some(Some(specs)) => {
                        settings.sinks = specs.into_iter().map(str::to_owned).collect()
                    }
                    _ => issue(
                        Some("sinks"),
                        format!(
                            "expected an array of strings (`NAME=PATH[,…]`), found {}",
                            kind_of(v)
                        ),
                    ),
                }
                continue;
            }
            match (field.as_str(), v.as_str()) {
                ("store", Some(s)) => match s.parse() {
                    Ok(spec) => settings.store = Some(spec),
                    Err(e) => issue(Some("store"), e.to_string()),
                },
                ("encryption_key_file", Some(p)) => settings.encryption_key_file = Some(p.into()),
                ("catalyst_auth", Some(name)) => settings.catalyst_auth = Some(name.to_owned()),
                ("store" | "encryption_key_file" | "catalyst_auth", None) => issue(
                    Some(field),
                    format!("expected a string, found {}", kind_of(v)),
                ),
                _ => issue(
                    Some(field),
                    "unknown setting (known: store, encryption_key_file, catalyst_auth, sinks)"
                        .into(),
                ),
            }
        }
    }
}

/// Parses TOML text into the JSON value model, with errors that name a line but never quote the
/// text (it may hold secrets).
pub(crate) fn parse_toml_text(text: &str) -> Result<Value, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        // The parser quotes values in backticks; a value may be a secret.
        let message = without_quoted(e.message());
        match line {
            Some(l) => format!("not valid TOML at line {l}: {message}"),
            None => format!("not valid TOML: {message}"),
        }
    })?;
    serde_json::to_value(table).map_err(|e| format!("unsupported TOML value ({e})"))
}

/// The closest known name to `unknown`, if it is close enough to be a typo.
pub(crate) fn did_you_mean<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let unknown = unknown.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&unknown, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Keys given twice in a JSON config: `(None, name)` for a connector defined twice,
/// `(Some(connector), field)` for a field set twice in one connector.
pub(crate) fn duplicate_keys(text: &str) -> Vec<(Option<String>, String)> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
    use std::collections::HashSet;

    /// Visits an object at `depth` (0: connectors, 1: their fields) under `parent`.
    struct Keys<'a> {
        depth: u8,
        parent: Option<String>,
        found: &'a mut Vec<(Option<String>, String)>,
    }
    impl<'de> Visitor<'de> for Keys<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    self.found.push((self.parent.clone(), key.clone()));
                }
                if self.depth == 0 {
                    map.next_value_seed(Seed(Keys {
                        depth: 1,
                        parent: Some(key),
                        found: &mut *self.found,
                    }))?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    struct Seed<'a>(Keys<'a>);
    impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self.0)
        }
    }

    let mut found = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    let _ = (&mut de).deserialize_any(Keys {
        depth: 0,
        parent: None,
        found: &mut found,
    });
    found
}

/// `text` with every backtick-quoted part replaced by `…`.
fn without_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut parts = text.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        if i % 2 == 0 {
            out.push_str("`…`");
        } else {
            out.push_str(part);
        }
    }
    out
}
