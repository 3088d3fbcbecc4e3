//! Configuration is validated when the connection is built; every problem is reported at once,
//! naming the connector and the field.

mod common;

use catalyst_connectors::{Connection, ConnectorConfig, DataCenter, Error};
use serde_json::json;
use std::io::Write as _;

fn problems(result: Result<Connection, Error>) -> Vec<String> {
    match result {
        Err(Error::Config(errors)) => errors.issues().iter().map(|i| i.to_string()).collect(),
        Err(other) => panic!("expected a config error, got {other:?}"),
        Ok(_) => panic!("expected a config error, got a connection"),
    }
}

fn has(problems: &[String], needle: &str) -> bool {
    problems.iter().any(|p| p.contains(needle))
}

#[test]
fn every_problem_is_reported_at_once() {
    let p = problems(common::from_json(&json!({
        "crm": {"client_secret": "", "auth_url": "not a url", "refresh_url": "http://accounts.zoho.com/oauth/v2/token",
                "expires_in": "an hour", "refresh_in": -5},
        "bad name": {"client_id": "a", "client_secret": "b", "dc": "us"},
        "desk": {"client_id": "a", "client_secret": "b", "dc": "mars"},
        "books": "not an object",
        "people": {"client_id": 42, "client_secret": "b", "dc": "eu", "redirect_url": "ftp://x/cb"},
        "drive": {"client_id": "a", "client_secret": "b"},
    })));
    let expected = [
        "connector `crm`, field `client_id`: is missing",
        "connector `crm`, field `client_secret`: is empty",
        "connector `crm`, field `auth_url`: not a valid URL",
        "connector `crm`, field `refresh_url`: plain http is allowed only for loopback hosts",
        "connector `crm`, field `expires_in`: must be a whole number of seconds (a number or numeric string), found \"an hour\"",
        "connector `crm`, field `refresh_in`: must be a whole number of seconds",
        "connector `bad name`: connector name contains ' ', which cannot appear in a cache key",
        "connector `desk`, field `dc`: unknown data centre `mars`",
        "connector `books`: expected an object of settings, found a string",
        "connector `people`, field `client_id`: expected a string, found a number",
        "connector `people`, field `redirect_url`: unsupported URL scheme `ftp`",
        "connector `drive`, field `auth_url`: is missing (set it, or set `dc`",
        "connector `drive`, field `refresh_url`: is missing",
    ];
    for e in expected {
        assert!(has(&p, e), "missing {e:?} in {p:#?}");
    }
    assert_eq!(p.len(), expected.len(), "{p:#?}");
}

#[test]
fn the_error_message_lists_every_problem() {
    let err = Connection::from_json(
        &json!({"a": {"client_id": "x"}, "b": {"client_secret": "y", "dc": "us"}}),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("invalid connector configuration (4 problems):"),
        "{msg}"
    );
    assert!(
        msg.contains("connector `b`, field `client_id`: is missing"),
        "{msg}"
    );
}

#[test]
fn duplicate_names_across_sources_are_rejected() {
    let one = json!({"crm": {"client_id": "a", "client_secret": "b", "dc": "us"}});
    let p = problems(common::hermetic().json(one.clone()).json(one).build());
    assert!(
        has(
            &p,
            "connector `crm`: defined more than once (source #1 and source #2)"
        ),
        "{p:?}"
    );
}

#[test]
fn http_is_allowed_for_loopback_only() {
    for host in ["127.0.0.1:8080", "localhost", "[::1]:9"] {
        let url = format!("http://{host}/oauth/v2/token");
        common::from_json(&json!({"c": {"client_id": "a", "client_secret": "b", "auth_url": url, "refresh_url": url}}))
            .unwrap_or_else(|e| panic!("{host}: {e}"));
    }
}

#[test]
fn a_root_that_is_not_an_object_is_reported() {
    let p = problems(common::from_json(&json!(["crm"])));
    assert!(
        has(
            &p,
            "expected an object mapping connector names to their settings, found an array"
        ),
        "{p:?}"
    );
}

#[test]
fn json_and_toml_files_load() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("connectors.json");
    std::fs::write(&json_path, r#"{"crm": {"client_id": "a", "client_secret": "b", "dc": "in", "refresh_token": "r", "expires_in": 3600}}"#).unwrap();
    let toml_path = dir.path().join("connectors.toml");
    let mut f = std::fs::File::create(&toml_path).unwrap();
    writeln!(
        f,
        "[desk]\nclient_id = \"a\"\nclient_secret = \"b\"\ndc = \"au\"\nrefresh_in = \"1800\""
    )
    .unwrap();
    let connection = common::hermetic()
        .file(&json_path)
        .file(&toml_path)
        .build()
        .unwrap();
    assert_eq!(
        connection.connector_names().collect::<Vec<_>>(),
        ["crm", "desk"]
    );
    let desk = connection.connector("desk").unwrap();
    assert_eq!(
        desk.config().refresh_url(),
        "https://accounts.zoho.com.au/oauth/v2/token"
    );
    assert_eq!(
        desk.config().default_api_domain(),
        Some("https://www.zohoapis.com.au")
    );
}

#[test]
fn file_errors_name_the_file_and_never_quote_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(
        &bad_toml,
        "[crm]\nclient_secret = \"top-secret-value\" oops\n",
    )
    .unwrap();
    let bad_json = dir.path().join("bad.json");
    std::fs::write(
        &bad_json,
        "{\"crm\": {\"client_secret\": \"top-secret-value\",}",
    )
    .unwrap();
    let missing = dir.path().join("missing.json");
    let p = problems(
        common::hermetic()
            .file(&bad_toml)
            .file(&bad_json)
            .file(&missing)
            .build(),
    );
    assert!(
        has(
            &p,
            &format!("{}: not valid TOML at line 2", bad_toml.display())
        ),
        "{p:?}"
    );
    assert!(
        has(&p, &format!("{}: not valid JSON", bad_json.display())),
        "{p:?}"
    );
    assert!(
        has(&p, &format!("{}: cannot read the file", missing.display())),
        "{p:?}"
    );
    assert!(!p.iter().any(|x| x.contains("top-secret-value")), "{p:?}");
}

#[test]
fn builder_validates_too() {
    let err = ConnectorConfig::builder("crm")
        .client_id("a")
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("field `client_secret`: is missing"), "{msg}");
    assert!(msg.contains("field `auth_url`: is missing"), "{msg}");
    let ok = ConnectorConfig::builder("crm")
        .client_id("a")
        .client_secret("b")
        .data_center(DataCenter::Jp)
        .build()
        .unwrap();
    assert_eq!(ok.auth_url(), "https://accounts.zoho.jp/oauth/v2/token");
}

#[test]
fn connector_settings_select_the_store_and_reserved_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("from-config.db");
    let connection = Connection::builder()
        .ignore_env()
        .json(json!({
            "$connector": {"store": format!("sqlite:{}", db.display())},
            "crm": {"client_id": "a", "client_secret": "b", "dc": "us"},
        }))
        .build()
        .unwrap();
    assert_eq!(connection.connector_names().collect::<Vec<_>>(), ["crm"]);
    assert!(db.exists(), "the store named in the config was opened");

    let p = problems(
        Connection::builder()
            .ignore_env()
            .json(json!({
                "$connector": {"store": "postgres://nope", "colour": "red"},
                "$other": {},
            }))
            .build(),
    );
    assert!(
        has(
            &p,
            "connector `$connector`, field `store`: unknown store `postgres://nope`"
        ),
        "{p:?}"
    );
    assert!(has(&p, "field `colour`: unknown setting"), "{p:?}");
    assert!(
        has(&p, "`$other`: names starting with `$` are reserved"),
        "{p:?}"
    );

    let key_file = dir.path().join("missing.key");
    let p = problems(
        Connection::builder()
            .ignore_env()
            .json(json!({"$connector": {"store": "memory:", "encryption_key_file": key_file}}))
            .build(),
    );
    assert!(has(&p, "encryption key file"), "{p:?}");
}

#[test]
fn config_files_are_bounded_regular_files_and_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    // A device that never ends, a FIFO without a writer, a directory: refused without reading.
    let fifo = dir.path().join("fifo.json");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for path in [std::path::Path::new("/dev/zero"), &fifo, dir.path()] {
        let started = std::time::Instant::now();
        let p = problems(Connection::builder().file(path).ignore_env().build());
        assert!(has(&p, "not a regular file"), "{path:?}: {p:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
    // Over 1 MiB: refused by its size.
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 1024 * 1024 + 1]).unwrap();
    let p = problems(Connection::builder().file(&big).ignore_env().build());
    assert!(has(&p, "larger than the 1 MiB"), "{p:?}");
}

#[test]
fn a_config_holding_secrets_readable_by_others_draws_a_warning_and_is_left_as_it_is() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("connectors.json");
    let config = json!({"crm": {"client_id": "1000.A", "client_secret": "s",
        "refresh_token": "1000.r", "dc": "us"}});
    std::fs::write(&path, config.to_string()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let connection = Connection::builder()
        .file(&path)
        .ignore_env()
        .store(catalyst_connectors::MemoryStore::new())
        .build()
        .unwrap();
    let warnings: Vec<String> = connection
        .warnings()
        .iter()
        .map(|w| w.to_string())
        .collect();
    assert!(has(&warnings, "readable by other users"), "{warnings:?}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "not ours to change");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let connection = Connection::builder()
        .file(&path)
        .ignore_env()
        .store(catalyst_connectors::MemoryStore::new())
        .build()
        .unwrap();
    assert!(connection.warnings().is_empty());
}

#[test]
fn a_token_pasted_into_the_wrong_field_is_not_echoed() {
    let rt = "1000.0123456789abcdef0123456789abcdef.0123456789abcdef0123456789abcdef";
    let p = problems(common::from_json(&json!({
        "crm": {"client_id": "1000.A", "client_secret": "s", "dc": rt},
        rt: {"client_id": "1000.A", "client_secret": "s"},
    })));
    assert!(has(&p, "unknown data centre"), "{p:?}");
    for problem in &p {
        assert!(!problem.contains("0123456789abcdef"), "echoed: {problem}");
    }
}

#[test]
fn live_token_limit_is_one_to_thirty() {
    let p = problems(common::from_json(&json!({
        "crm": {"client_id": "1000.A", "client_secret": "s", "dc": "us", "live_token_limit": 0},
        "desk": {"client_id": "1000.A", "client_secret": "s", "dc": "us", "live_token_limit": "31"},
    })));
    assert!(
        has(
            &p,
            "connector `crm`, field `live_token_limit`: must be 1 to 30"
        ),
        "{p:?}"
    );
    assert!(
        has(
            &p,
            "connector `desk`, field `live_token_limit`: must be 1 to 30"
        ),
        "{p:?}"
    );
    let c = ConnectorConfig::builder("crm")
        .client_id("1000.A")
        .client_secret("s")
        .data_center(DataCenter::Us)
        .live_token_limit(15)
        .build()
        .unwrap();
    assert_eq!(c.live_token_limit(), Some(15));
}
