//! The on-store formats: [`TokenRecord`] (the official SDKs' token record plus our fields) and
//! the record of a refresh token obtained at run time. Stores never interpret records; the
//! connector reads and writes them through this module only.

use crate::clock::EpochMillis;
use crate::config::ConnectorConfig;
use crate::secret::{AccessTokenSecret, ExposeSecret, RefreshToken};
use serde_json::{Value, json};
use std::fmt;

/// A token record in the official SDKs' format plus our own fields.
///
/// Serialized as JSON: `access_token` and `expires_at` (epoch ms of the refresh point) are what the
/// SDKs read; `expiry_in_seconds` and `expires_in` give the lifetime; `api_domain`, `issued_at`
/// (epoch ms when the request was sent) and `fingerprint` (a SHA-256 of the client id, refresh token and token URL) are ours.
#[derive(Clone)]
pub struct TokenRecord {
    /// The access token.
    pub access_token: AccessTokenSecret,
    /// Epoch ms at which the token should be refreshed (the SDKs' `expires_at`).
    pub refresh_at: EpochMillis,
    /// Epoch ms at which the token stops working.
    pub expires_at: EpochMillis,
    /// The lifetime the token endpoint announced, in seconds.
    pub lifetime_secs: u64,
    /// The API domain from the token response.
    pub api_domain: Option<String>,
    /// Epoch ms at which the token request was sent, when known.
    pub issued_at: Option<EpochMillis>,
    /// The credentials fingerprint, absent in records written by the official SDKs.
    pub fingerprint: Option<String>,
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("access_token", &self.access_token)
            .field("refresh_at", &self.refresh_at)
            .field("expires_at", &self.expires_at)
            .field("lifetime_secs", &self.lifetime_secs)
            .field("api_domain", &self.api_domain)
            .field("issued_at", &self.issued_at)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token record is not usable: {0}")]
pub struct RecordError(String);

impl TokenRecord {
    /// Serializes the record to its JSON form.
    pub fn to_json(&self) -> String {
        self.to_json_with_token(self.access_token.expose_secret())
    }

    /// The JSON form with `access_token` written as `token` (e.g. sealed for an SDK).
    pub(crate) fn to_json_with_token(&self, token: &str) -> String {
        json!({
            "access_token": token,
            "expires_at": self.refresh_at,
            "expiry_in_seconds": self.lifetime_secs,
            "expires_in": self.lifetime_secs,
            "api_domain": self.api_domain,
            "issued_at": self.issued_at,
            "fingerprint": self.fingerprint,
        })
        .to_string()
    }

    /// Parses a record written by this crate or by an official SDK. Accepts the value as a JSON
    /// object or as a JSON string holding one, and numbers sent as strings. Errors never quote the
    /// data.
    pub fn from_json(data: &str) -> Result<Self, RecordError> {
        let value: Value =
            serde_json::from_str(data).map_err(|_| RecordError("not valid JSON".into()))?;
        let value = match value {
            Value::String(inner) => serde_json::from_str(&inner)
                .map_err(|_| RecordError("string value is not valid JSON".into()))?,
            v => v,
        };
        let obj = value
            .as_object()
            .ok_or_else(|| RecordError("not a JSON object".into()))?;
        let access_token = match obj.get("access_token") {
            Some(Value::String(s)) if !s.is_empty() => AccessTokenSecret::new(s.clone()),
            _ => return Err(RecordError("`access_token` missing or not a string".into())),
        };
        let refresh_at = obj
            .get("expires_at")
            .and_then(lenient_i64)
            .ok_or_else(|| RecordError("`expires_at` missing or not a number".into()))?;
        let lifetime_secs = obj
            .get("expiry_in_seconds")
            .or_else(|| obj.get("expires_in"))
            .and_then(lenient_i64)
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0);
        let issued_at = obj.get("issued_at").and_then(lenient_i64);
        let expires_at = match issued_at {
            Some(at) if lifetime_secs > 0 => at.saturating_add(
                i64::try_from(lifetime_secs)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000),
            ),
            // SDK records carry only the refresh point: treat it as the end of life too.
            _ => refresh_at,
        };
        let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            access_token,
            refresh_at: refresh_at.min(expires_at),
            expires_at,
            lifetime_secs,
            api_domain: text("api_domain"),
            issued_at,
            fingerprint: text("fingerprint"),
        })
    }
}

/// A number as the SDKs and Zoho send them: a JSON integer, a float (truncated) or a string
/// holding an integer. The one lenient reader of numbers from the outside.
pub(crate) fn lenient_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// [`lenient_i64`], non-negative.
pub(crate) fn lenient_u64(v: &Value) -> Option<u64> {
    lenient_i64(v).and_then(|n| u64::try_from(n).ok())
}

/// The stored form of a refresh token obtained at run time.
pub(crate) struct RefreshRecord;

impl RefreshRecord {
    pub(crate) fn to_json(
        rt: &RefreshToken,
        config: &ConnectorConfig,
        subject: Option<&str>,
        obtained_at: EpochMillis,
    ) -> String {
        serde_json::json!({
            "refresh_token": rt.expose_secret(),
            "client_id": config.client_id,
            "refresh_url": config.refresh_url,
            "subject": subject,
            "obtained_at": obtained_at,
        })
        .to_string()
    }

    /// The refresh token, if the record is intact and belongs to this client, endpoint and user.
    pub(crate) fn parse(
        data: &str,
        config: &ConnectorConfig,
        subject: Option<&str>,
    ) -> Option<RefreshToken> {
        let v: serde_json::Value = serde_json::from_str(data).ok()?;
        let matches = v.get("client_id")?.as_str()? == config.client_id
            && v.get("refresh_url")?.as_str()? == config.refresh_url
            && v.get("subject").and_then(|s| s.as_str()) == subject;
        let rt = v.get("refresh_token")?.as_str().filter(|s| !s.is_empty())?;
        matches.then(|| RefreshToken::new(rt))
    }
}

/// The mint governor's log: the epoch-ms times of a refresh token's recent mints, as a JSON
/// array. Kept in the clear (it holds no secret).
pub(crate) mod mint_log {
    use crate::clock::EpochMillis;
    use std::collections::BTreeMap;

    /// The times in `data`; damage reads as no mints.
    pub(crate) fn parse(data: &str) -> Vec<EpochMillis> {
        serde_json::from_str::<Vec<EpochMillis>>(data).unwrap_or_default()
    }

    /// The stored form of `times`.
    pub(crate) fn to_json(times: &[EpochMillis]) -> String {
        serde_json::to_string(times).unwrap_or_else(|_| "[]".into())
    }

    /// Two copies of one log as one (two tiers of a store): a time in both counts as often as
    /// the copy that has it most often (the same mints, recorded twice; several mints in one
    /// millisecond stay several). Sorted, oldest first.
    pub(crate) fn union(a: &[EpochMillis], b: &[EpochMillis]) -> Vec<EpochMillis> {
        let count = |times: &[EpochMillis]| {
            let mut n = BTreeMap::<EpochMillis, usize>::new();
            for t in times {
                *n.entry(*t).or_default() += 1;
            }
            n
        };
        let mut merged = count(a);
        for (t, n) in count(b) {
            let m = merged.entry(t).or_default();
            *m = (*m).max(n);
        }
        merged
            .into_iter()
            .flat_map(|(t, n)| std::iter::repeat_n(t, n))
            .collect()
    }
}

/// The shared health of a refresh token: the last failure the token endpoint answered, as any
/// process recorded it. Kept in the clear (no secret: error kinds, Zoho's codes, messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthRecord {
    /// What kind of failure.
    pub kind: crate::error::ErrorKind,
    /// Zoho's own error code, when it gave one (e.g. `invalid_code`, `Access Denied`).
    pub zoho_code: Option<String>,
    /// Zoho's description, when it gave one.
    pub description: Option<String>,
    /// The error's message, for people.
    pub message: String,
    /// When it happened.
    pub at: EpochMillis,
    /// Failed flights in a row.
    pub failures: u32,
    /// When the recording process tries again, if later than `at`.
    pub next_attempt_at: Option<EpochMillis>,
}

impl HealthRecord {
    pub(crate) fn to_json(&self) -> String {
        json!({
            "code": self.kind.code(),
            "zoho_code": self.zoho_code,
            "description": self.description,
            "message": self.message,
            "at": self.at,
            "failures": self.failures,
            "next_attempt_at": self.next_attempt_at,
        })
        .to_string()
    }

    /// The record, if intact and of a kind this version knows.
    pub(crate) fn parse(data: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(data).ok()?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let at = v.get("at").and_then(lenient_i64)?;
        Some(Self {
            kind: crate::error::ErrorKind::from_code(v.get("code")?.as_str()?)?,
            zoho_code: text("zoho_code"),
            description: text("description"),
            message: text("message")?,
            at,
            failures: v
                .get("failures")
                .and_then(lenient_i64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1),
            next_attempt_at: v
                .get("next_attempt_at")
                .and_then(lenient_i64)
                .filter(|n| *n > at),
        })
    }

    /// Of two copies of a health record (two tiers of a store), the one to believe: the newer.
    pub(crate) fn newer<'a>(a: &'a str, b: &'a str) -> &'a str {
        let at = |d: &str| Self::parse(d).map(|r| r.at);
        if at(b) > at(a) { b } else { a }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_reads_sdk_forms() {
        let r = TokenRecord {
            access_token: AccessTokenSecret::new("1000.tok"),
            refresh_at: 2_000,
            expires_at: 3_601_000,
            lifetime_secs: 3600,
            api_domain: Some("https://www.zohoapis.com".into()),
            issued_at: Some(1_000),
            fingerprint: Some("ab".into()),
        };
        let back = TokenRecord::from_json(&r.to_json()).unwrap();
        assert_eq!(back.access_token.expose_secret(), "1000.tok");
        assert_eq!(
            (back.refresh_at, back.expires_at, back.lifetime_secs),
            (2_000, 3_601_000, 3600)
        );
        assert_eq!(back.fingerprint.as_deref(), Some("ab"));

        // Node SDK: a JSON string holding the record.
        let node = serde_json::to_string(
            &r#"{"access_token":"t","expiry_in_seconds":3600,"expires_at":"5000"}"#,
        )
        .unwrap();
        let n = TokenRecord::from_json(&node).unwrap();
        assert_eq!(
            (n.refresh_at, n.expires_at, n.fingerprint),
            (5000, 5000, None)
        );
        // Python SDK: an object with `expires_in`.
        let p = TokenRecord::from_json(r#"{"access_token":"t","expires_in":3600,"expires_at":7}"#)
            .unwrap();
        assert_eq!(p.lifetime_secs, 3600);
    }

    #[test]
    fn the_mint_log_union_counts_a_mint_in_both_copies_once_and_same_millisecond_mints_apart() {
        use super::mint_log::union;
        assert_eq!(union(&[1, 2, 2], &[2, 3]), vec![1, 2, 2, 3]);
        assert_eq!(union(&[5, 5, 5], &[5, 5, 5]), vec![5, 5, 5]);
        assert_eq!(union(&[], &[7]), vec![7]);
    }

    #[test]
    fn health_records_round_trip_and_the_newer_copy_wins() {
        let r = HealthRecord {
            kind: crate::error::ErrorKind::Throttled,
            zoho_code: Some("Access Denied".into()),
            description: None,
            message: "m".into(),
            at: 10,
            failures: 2,
            next_attempt_at: Some(20),
        };
        assert_eq!(HealthRecord::parse(&r.to_json()), Some(r.clone()));
        let later = HealthRecord {
            at: 11,
            ..r.clone()
        }
        .to_json();
        assert_eq!(HealthRecord::newer(&r.to_json(), &later), later);
        assert_eq!(HealthRecord::newer(&later, "garbage"), later);
    }

    #[test]
    fn corrupt_records_are_errors_without_content() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"access_token":5}"#,
            r#"{"access_token":"secret-x"}"#,
        ] {
            let e = TokenRecord::from_json(bad).unwrap_err();
            assert!(!e.to_string().contains("secret-x"));
        }
    }
}
