//! Fuzzing of every parser that sees outside input, on stable: a mutation fuzzer (byte flips,
//! insertions, deletions, splices of a seed corpus taken from the tests, and random bytes) with a
//! time budget. Each target checks that nothing panics and that no secret we hold comes back in
//! an error. It is not coverage-guided; it runs in the normal test suite for a moment
//! (`FUZZ_SECONDS`, default 1 s per target) and for as long as you like by hand:
//! `FUZZ_SECONDS=600 cargo test -p catalyst-connectors --all-features --lib fuzz -- --nocapture --test-threads 1`.

use std::time::{Duration, Instant};

/// How long each target runs.
fn budget() -> Duration {
    let secs = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs)
}

/// One mutated input from the corpus.
fn mutate(corpus: &[&[u8]], rng: &mut impl rand::Rng) -> Vec<u8> {
    let mut data = corpus[rng.random_range(0..corpus.len())].to_vec();
    for _ in 0..rng.random_range(1..8) {
        match rng.random_range(0..6) {
            0 if !data.is_empty() => {
                let i = rng.random_range(0..data.len());
                data[i] = rng.random();
            }
            1 => {
                let i = rng.random_range(0..=data.len());
                let tokens: [&[u8]; 12] = [
                    b"\"", b"{", b"}", b"[", b"]", b":", b",", b"null", b"1e999", b"-1",
                    b"\\u0000", b"\xff",
                ];
                let t = tokens[rng.random_range(0..tokens.len())];
                data.splice(i..i, t.iter().copied());
            }
            2 if !data.is_empty() => {
                let i = rng.random_range(0..data.len());
                let j = rng.random_range(i..=data.len().min(i + 16));
                data.drain(i..j);
            }
            3 => {
                let other = corpus[rng.random_range(0..corpus.len())];
                let from = rng.random_range(0..=other.len());
                let i = rng.random_range(0..=data.len());
                data.splice(i..i, other[from..].iter().copied());
            }
            4 => data = (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
            _ => {}
        }
    }
    data
}

/// Runs `check` on mutated inputs for the budget; returns how many ran.
fn fuzz(name: &str, corpus: &[&[u8]], mut check: impl FnMut(&[u8])) -> u64 {
    let mut rng = rand::rng();
    let end = Instant::now() + budget();
    let mut n = 0u64;
    for seed in corpus {
        check(seed);
    }
    while Instant::now() < end {
        for _ in 0..256 {
            check(&mutate(corpus, &mut rng));
            n += 1;
        }
    }
    eprintln!("fuzz {name}: {n} executions in {:?}", budget());
    n
}

const SECRET: &str = "s3cr3t-client-secret";
const REFRESH: &str = "1000.refresh-token-value";

#[test]
fn fuzz_token_responses() {
    use crate::oauth::{Grant, parse_token_response};
    use crate::secret::RefreshToken;
    let rt = RefreshToken::new(REFRESH);
    let corpus: &[&[u8]] = &[
        br#"{"access_token":"1000.a","api_domain":"https://www.zohoapis.com","token_type":"Bearer","expires_in":3600}"#,
        br#"{"expires_in_sec":3600,"expires_in":3600000,"access_token":"1000.b"}"#,
        br#"{"error":"invalid_code"}"#,
        br#"{"error_description":"You have made too many requests continuously. Please try again after some time.","error":"Access Denied","status":"failure"}"#,
        br#"{"error":"invalid_client_secret","error_description":"s3cr3t-client-secret is wrong for 1000.refresh-token-value"}"#,
        b"<html>502 Bad Gateway</html>",
    ];
    let statuses = [200u16, 400, 401, 404, 429, 500, 502];
    let mut i = 0;
    fuzz("token responses", corpus, |body| {
        i += 1;
        let status = reqwest::StatusCode::from_u16(statuses[i % statuses.len()]).unwrap();
        let result = parse_token_response(
            "crm",
            &Grant::Refresh(&rt),
            status,
            None,
            body,
            &[SECRET, REFRESH],
        );
        if let Err(e) = result {
            let shown = format!("{e} {e:?}");
            assert!(
                !shown.contains(SECRET) && !shown.contains(REFRESH),
                "{shown}"
            );
        }
    });
}

#[test]
fn fuzz_store_records() {
    use crate::record::{RefreshRecord, TokenRecord};
    let config = crate::ConnectorConfig::builder("crm")
        .client_id("1000.ID")
        .client_secret(SECRET)
        .token_url("https://accounts.zoho.com/oauth/v2/token")
        .build()
        .unwrap();
    let corpus: &[&[u8]] = &[
        br#"{"access_token":"1000.tok","expires_at":5000,"expiry_in_seconds":3600,"issued_at":1000,"fingerprint":"ab"}"#,
        br#""{\"access_token\":\"t\",\"expiry_in_seconds\":3600,\"expires_at\":\"5000\"}""#,
        br#"{"access_token":"t","expires_in":3600,"expires_at":7}"#,
        br#"{"refresh_token":"1000.refresh-token-value","client_id":"1000.ID","refresh_url":"https://accounts.zoho.com/oauth/v2/token","subject":null,"obtained_at":1}"#,
    ];
    fuzz("store records", corpus, |data| {
        let text = String::from_utf8_lossy(data);
        if let Err(e) = TokenRecord::from_json(&text) {
            assert!(!e.to_string().contains("1000.tok"));
        }
        let _ = RefreshRecord::parse(&text, &config, None);
    });
}

#[test]
fn fuzz_configs() {
    let corpus: &[&[u8]] = &[
        br#"{"crm":{"client_id":"1000.X","client_secret":"s3cr3t-client-secret","dc":"eu","refresh_token":"1000.refresh-token-value","expires_in":"3600"}}"#,
        br#"{"$connector":{"store":"memory:","catalyst_auth":"a"},"a":{"client_id":"x","client_secret":"s3cr3t-client-secret","auth_url":"http://127.0.0.1:1/t","refresh_url":"http://127.0.0.1:1/t"}}"#,
        b"[crm]\nclient_id = \"1000.X\"\nclient_secret = \"s3cr3t-client-secret\"\ndc = \"us\"\n",
    ];
    fuzz("configs (JSON and TOML)", corpus, |data| {
        let text = String::from_utf8_lossy(data).into_owned();
        let mut issues = Vec::new();
        let mut warnings = Vec::new();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            let _ = crate::config::parse_value(&v, None, &mut issues, &mut warnings);
            crate::config::parse_settings(&v, None, &mut Default::default(), &mut issues);
        }
        let _ = crate::config::parse_toml_text(&text);
        // A value given as a secret is never echoed (unless the same text is also given in a
        // field that is not secret, which may be named in a problem).
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            let (mut secrets, mut open) = (Vec::new(), String::new());
            for (name, fields) in v.as_object().into_iter().flatten() {
                open.push_str(name);
                for (k, f) in fields.as_object().into_iter().flatten() {
                    open.push_str(k);
                    match (k.as_str(), f.as_str()) {
                        ("client_secret" | "refresh_token", Some(s)) => secrets.push(s.to_owned()),
                        (_, _) => open.push_str(&f.to_string()),
                    }
                }
            }
            for issue in issues.iter().chain(&warnings) {
                let shown = issue.to_string();
                for secret in secrets
                    .iter()
                    .filter(|s| s.len() >= 6 && !open.contains(s.as_str()))
                {
                    assert!(!shown.contains(secret.as_str()), "{shown}");
                }
            }
        }
    });
}

#[test]
fn fuzz_store_urls() {
    let corpus: &[&[u8]] = &[
        b"memory:",
        b"sqlite:/tmp/x.db",
        b"redis://:hunter2@127.0.0.1:6379/0?prefix=app:",
        b"rediss+cluster://u:hunter2@h1:1,h2:2",
        b"catalyst://4000000001234/55?key=pk&environment=Production&origin=https://api.catalyst.zoho.eu",
    ];
    fuzz("store URLs", corpus, |data| {
        let text = String::from_utf8_lossy(data);
        if let Ok(spec) = text.parse::<crate::StoreSpec>() {
            // A Redis URL with credentials shows as `<scheme>://[redacted]@<hosts…>`: nothing
            // before its last `@` is shown, whatever a URL parser would make of it.
            let (url, _) = text
                .trim()
                .rsplit_once("?prefix=")
                .unwrap_or((text.trim(), ""));
            if let crate::StoreSpec::Redis { .. } = &spec
                && let Some((scheme, rest)) = url.split_once("://")
                && let Some((_, hosts)) = rest.rsplit_once('@')
            {
                let shown = spec.to_string();
                assert_eq!(shown, format!("{scheme}://[redacted]@{hosts}"));
                assert_eq!(format!("{spec:?}"), format!("StoreSpec({shown})"));
            }
        }
    });
}

#[cfg(feature = "catalyst")]
#[test]
fn fuzz_catalyst_values() {
    use crate::store::catalyst::{Decoded, decode, encode};
    let corpus: &[&[u8]] = &[
        br#""{\"access_token\":\"t\",\"expiry_in_seconds\":3600,\"expires_at\":5,\"_cc_generation\":3}""#,
        br#"{"access_token":"t","expires_in":3600,"expires_at":7}"#,
        br#"{"access_token":"","expires_at":0,"_cc_deleted":true,"_cc_generation":9}"#,
        br#""{\"_cc_data\":\"plain\",\"_cc_generation\":2}""#,
        b"null",
    ];
    fuzz("Catalyst cache values", corpus, |data| {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
            let _ = decode(&v);
        }
        // Our own encoding always reads back as written.
        let text = String::from_utf8_lossy(data).into_owned();
        let back = decode(&serde_json::Value::String(encode(&text, 7)));
        match back {
            Decoded::Live(v) => assert_eq!(v.generation, 7),
            Decoded::Tombstone(_) => {}
            Decoded::Absent => panic!("our value read as absent"),
        }
    });
}

#[test]
fn fuzz_consent_states() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let connection = crate::Connection::builder()
        .ignore_env()
        .store(crate::MemoryStore::new())
        .json(serde_json::json!({"crm": {"client_id": "1000.ID", "client_secret": SECRET,
            "auth_url": "http://127.0.0.1:1/oauth/v2/token", "refresh_url": "http://127.0.0.1:1/oauth/v2/token"}}))
        .build()
        .unwrap();
    let flow = crate::users::ConsentFlow::new(
        connection.connector("crm").unwrap(),
        "http://127.0.0.1:1/cb",
        crate::users::StateKey::generate(),
    );
    let good = flow.start("user-1", &["ZohoCRM.users.READ"]).unwrap().state;
    let corpus: Vec<&[u8]> = vec![good.as_bytes(), b"eyJjIjoiY3JtIn0.AAAA", b"."];
    let mut accepted = 0;
    fuzz("consent states", &corpus, |data| {
        let text = String::from_utf8_lossy(data);
        if runtime.block_on(flow.verify(&text)).is_ok() {
            accepted += 1;
        }
    });
    assert!(accepted <= 1, "a state is usable once, and forgeries never");
}
