//! Zoho data centres: accounts servers (token endpoints) and default API domains.

use std::fmt;
use std::str::FromStr;

/// A Zoho data centre, selectable in config with `"dc": "eu"` and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DataCenter {
    /// United States (`accounts.zoho.com`).
    Us,
    /// Europe (`accounts.zoho.eu`).
    Eu,
    /// India (`accounts.zoho.in`).
    In,
    /// Australia (`accounts.zoho.com.au`).
    Au,
    /// Japan (`accounts.zoho.jp`).
    Jp,
    /// Canada (`accounts.zohocloud.ca`).
    Ca,
    /// Saudi Arabia (`accounts.zoho.sa`).
    Sa,
    /// China (`accounts.zoho.com.cn`).
    Cn,
    /// United Kingdom (`accounts.zoho.uk`).
    Uk,
}

impl DataCenter {
    /// Every data centre, in the order of the config codes.
    pub const ALL: [DataCenter; 9] = [
        Self::Us,
        Self::Eu,
        Self::In,
        Self::Au,
        Self::Jp,
        Self::Ca,
        Self::Sa,
        Self::Cn,
        Self::Uk,
    ];

    /// The code used in config (`us`, `eu`, …).
    pub fn code(self) -> &'static str {
        match self {
            Self::Us => "us",
            Self::Eu => "eu",
            Self::In => "in",
            Self::Au => "au",
            Self::Jp => "jp",
            Self::Ca => "ca",
            Self::Sa => "sa",
            Self::Cn => "cn",
            Self::Uk => "uk",
        }
    }

    /// The accounts server origin, e.g. `https://accounts.zoho.eu`.
    pub fn accounts_origin(self) -> &'static str {
        match self {
            Self::Us => "https://accounts.zoho.com",
            Self::Eu => "https://accounts.zoho.eu",
            Self::In => "https://accounts.zoho.in",
            Self::Au => "https://accounts.zoho.com.au",
            Self::Jp => "https://accounts.zoho.jp",
            Self::Ca => "https://accounts.zohocloud.ca",
            Self::Sa => "https://accounts.zoho.sa",
            Self::Cn => "https://accounts.zoho.com.cn",
            Self::Uk => "https://accounts.zoho.uk",
        }
    }

    /// The token endpoint, `{accounts}/oauth/v2/token`.
    pub fn token_url(self) -> String {
        format!("{}/oauth/v2/token", self.accounts_origin())
    }

    /// The default API domain for tokens of this data centre, e.g. `https://www.zohoapis.eu`.
    pub fn api_domain(self) -> &'static str {
        match self {
            Self::Us => "https://www.zohoapis.com",
            Self::Eu => "https://www.zohoapis.eu",
            Self::In => "https://www.zohoapis.in",
            Self::Au => "https://www.zohoapis.com.au",
            Self::Jp => "https://www.zohoapis.jp",
            Self::Ca => "https://www.zohoapis.ca",
            Self::Sa => "https://www.zohoapis.sa",
            Self::Cn => "https://www.zohoapis.com.cn",
            Self::Uk => "https://www.zohoapis.uk",
        }
    }

    /// The origin of this data centre's Catalyst API (e.g. `https://api.catalyst.zoho.eu`), if
    /// Catalyst runs there.
    pub fn catalyst_origin(self) -> Option<&'static str> {
        Some(match self {
            Self::Us => "https://api.catalyst.zoho.com",
            Self::Eu => "https://api.catalyst.zoho.eu",
            Self::In => "https://api.catalyst.zoho.in",
            Self::Au => "https://api.catalyst.zoho.com.au",
            Self::Jp => "https://api.catalyst.zoho.jp",
            Self::Ca => "https://api.catalyst.zohocloud.ca",
            Self::Sa => "https://api.catalyst.zoho.sa",
            Self::Cn | Self::Uk => return None,
        })
    }

    /// The data centre whose accounts server has this host, if any.
    pub fn from_accounts_host(host: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|dc| dc.accounts_origin().strip_prefix("https://") == Some(host))
    }
}

impl fmt::Display for DataCenter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The error for an unknown data-centre code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown data centre `{0}`: expected one of us, eu, in, au, jp, ca, sa, cn, uk")]
pub struct UnknownDataCenter(pub String);

impl FromStr for DataCenter {
    type Err = UnknownDataCenter;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|dc| dc.code() == lower)
            .ok_or_else(|| UnknownDataCenter(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_hosts_resolve() {
        for dc in DataCenter::ALL {
            assert_eq!(dc.code().parse::<DataCenter>(), Ok(dc));
            let host = dc.accounts_origin().trim_start_matches("https://");
            assert_eq!(DataCenter::from_accounts_host(host), Some(dc));
        }
        assert_eq!("EU".parse::<DataCenter>(), Ok(DataCenter::Eu));
        assert!("mars".parse::<DataCenter>().is_err());
        assert_eq!(
            DataCenter::Eu.token_url(),
            "https://accounts.zoho.eu/oauth/v2/token"
        );
    }
}
