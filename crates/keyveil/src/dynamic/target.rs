//! Connection URLs of the engines' servers: parsed without ever putting the password into an
//! error, and shown as `user@host:port/db` only.
//!
//! Accepted shape (RFC 3986 subset): `scheme://[user[:password]@]host[:port][/path][?query]`,
//! with percent-encoded user and password. IPv6 hosts in brackets (`[::1]`).

// Some parts serve only the OpenBao client.
#![cfg_attr(not(feature = "openbao"), allow(dead_code))]

use keyveil_vault::SecretValue;
use percent_encoding::percent_decode_str;

use super::DynamicError;

/// A parsed server URL. `password` is the only secret part; [`Target::shown`] leaves it out.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Lower-case scheme (`postgresql`, `redis`, `http`).
    pub scheme: String,
    /// User name, if any (percent-decoded).
    pub user: Option<String>,
    /// Password, if any (percent-decoded).
    pub password: Option<SecretValue>,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port, or the scheme's default.
    pub port: u16,
    /// Path without its leading `/` (a database name or number), percent-decoded.
    pub path: String,
    /// Raw query string (after `?`), if any.
    pub query: Option<String>,
}

impl Target {
    /// Parses `url`; `default_port` applies when the URL gives none. Errors never quote the
    /// URL: it may hold a password.
    pub(crate) fn parse(
        url: &str,
        schemes: &[&str],
        default_port: u16,
    ) -> Result<Target, DynamicError> {
        let bad = |what: &str| DynamicError::Config(format!("the admin URL is malformed: {what}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad("it has no scheme (expected e.g. postgresql://user@host:5432/db)")
        })?;
        let scheme = scheme.to_ascii_lowercase();
        if !schemes.contains(&scheme.as_str()) {
            return Err(DynamicError::Config(format!(
                "the admin URL's scheme is {scheme:?}; expected one of {}",
                schemes.join(", ")
            )));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q.to_owned())),
            None => (rest, None),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let decode = |s: &str, what: &str| -> Result<String, DynamicError> {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad(&format!("its {what} is not valid percent-encoded UTF-8")))
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (
                    Some(decode(u, "user name")?).filter(|u| !u.is_empty()),
                    Some(SecretValue::new(decode(p, "password")?)),
                ),
                None => (
                    Some(decode(ui, "user name")?).filter(|u| !u.is_empty()),
                    None,
                ),
            },
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 host lacks its closing ']'"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("unexpected text after the IPv6 host")),
            };
            (h.to_owned(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '%'))
        {
            return Err(bad("its host has characters a host name cannot have"));
        }
        let port = match port {
            None | Some("") => default_port,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad("its port is not a number from 1 to 65535"))?,
        };
        Ok(Target {
            scheme,
            user,
            password,
            host,
            port,
            path: decode(path, "path")?,
            query,
        })
    }

    /// `user@host:port/path` (no password): what errors, the audit log and `grants` show.
    pub(crate) fn shown(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut s = String::new();
        if let Some(u) = &self.user {
            s.push_str(u);
            s.push('@');
        }
        s.push_str(&host);
        s.push(':');
        s.push_str(&self.port.to_string());
        if !self.path.is_empty() {
            s.push('/');
            s.push_str(&self.path);
        }
        s
    }

    /// `host:port` with brackets around an IPv6 host.
    pub(crate) fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the host is a loopback name or address.
    pub(crate) fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback())
    }

    /// The password, or "" (for servers with trust authentication).
    #[cfg(test)]
    pub(crate) fn password_str(&self) -> &str {
        self.password
            .as_ref()
            .map(SecretValue::expose)
            .unwrap_or("")
    }
}

/// Percent-encodes a URL user name or password (RFC 3986 userinfo).
pub(crate) fn encode_userinfo(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(s, SET).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_and_hides_the_password() {
        let t = Target::parse(
            "postgresql://adm%40in:p%3Ass@db.example:6543/app?sslmode=disable",
            &["postgresql", "postgres"],
            5432,
        )
        .unwrap();
        assert_eq!(t.user.as_deref(), Some("adm@in"));
        assert_eq!(t.password_str(), "p:ss");
        assert_eq!(t.host, "db.example");
        assert_eq!(t.port, 6543);
        assert_eq!(t.path, "app");
        assert_eq!(t.shown(), "adm@in@db.example:6543/app");
        assert!(!format!("{t:?}").contains("p:ss"));
        let v6 = Target::parse("redis://:pw@[::1]/2", &["redis"], 6379).unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.path.as_str()),
            ("::1", 6379, "2")
        );
        assert!(v6.is_loopback());
        assert_eq!(v6.host_port(), "[::1]:6379");
    }

    #[test]
    fn errors_never_quote_the_url() {
        for bad in [
            "postgresql//u:SECRETPW@h",
            "mysql://u:SECRETPW@h",
            "postgresql://u:SECRETPW@h:99999/db",
            "postgresql://u:SECRETPW@/db",
            "postgresql://u:SECRETPW@h o st/db",
        ] {
            let e = Target::parse(bad, &["postgresql"], 5432).unwrap_err();
            assert!(!e.to_string().contains("SECRETPW"), "{e}");
        }
        assert_eq!(encode_userinfo("a b@c"), "a%20b%40c");
    }
}
