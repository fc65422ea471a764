//! The two spellings of a libpq connection string, reduced to `(keyword, value)` pairs:
//! `key=value key2='quoted \' value'` and `postgres[ql]://user:pass@host:port/db?key=value`.
//!
//! Keywords are not checked here; `ConnInfo` resolves and validates them.

use super::ConnInfoError;

/// Split a connection string of either syntax into keyword/value pairs, in order.
pub(super) fn parse_pairs(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = s.strip_prefix(scheme) {
            return parse_url(rest);
        }
    }
    parse_keywords(s)
}

/// libpq's `key = value` syntax: whitespace-separated pairs, values optionally single
/// quoted, backslash escapes the next character.
fn parse_keywords(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError::Syntax(format!(
                "missing \"=\" after {key:?} (expected key=value pairs or a postgresql:// URL)"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(ConnInfoError::Syntax(format!(
                            "unterminated quoted value for {key:?}"
                        )))
                    }
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// The URL syntax after the scheme: `[user[:password]@][host][:port][/dbname][?key=value&...]`.
fn parse_url(rest: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut pairs = Vec::new();
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (netloc, dbname) = before_query.split_once('/').unwrap_or((before_query, ""));
    let hostport = match netloc.split_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            pairs.push(("user".to_string(), percent_decode(user)?));
            if let Some(p) = password {
                pairs.push(("password".to_string(), percent_decode(p)?));
            }
            hostport
        }
        None => netloc,
    };
    // Several hosts: `a:5432,[::1]:5433,c`, each with its own optional port.
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for one in hostport.split(',') {
        let (host, port) = split_host_port(one)?;
        hosts.push(percent_decode(host)?);
        ports.push(percent_decode(port)?);
    }
    pairs.push(("host".to_string(), hosts.join(",")));
    // No port at all stays unset (PGPORT applies); otherwise empty entries default.
    let ports = if ports.iter().all(String::is_empty) {
        String::new()
    } else {
        ports.join(",")
    };
    pairs.push(("port".to_string(), ports));
    pairs.push(("dbname".to_string(), percent_decode(dbname)?));
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').ok_or_else(|| {
            ConnInfoError::Syntax(format!("missing \"=\" in URL parameter {param:?}"))
        })?;
        pairs.push((percent_decode(key)?, percent_decode(value)?));
    }
    Ok(pairs)
}

/// One `host[:port]` or `[v6addr][:port]` of a URL's host list.
fn split_host_port(hostport: &str) -> Result<(&str, &str), ConnInfoError> {
    if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(|| {
            ConnInfoError::Syntax(format!("missing \"]\" in IPv6 host {hostport:?}"))
        })?;
        let port = match after {
            "" => "",
            p => p.strip_prefix(':').ok_or_else(|| {
                ConnInfoError::Syntax(format!("unexpected {p:?} after IPv6 host"))
            })?,
        };
        Ok((host, port))
    } else {
        Ok(hostport.split_once(':').unwrap_or((hostport, "")))
    }
}

/// Decode `%XX` escapes; `+` stays a plus sign, as in libpq.
fn percent_decode(s: &str) -> Result<String, ConnInfoError> {
    let bad = || ConnInfoError::Syntax(format!("invalid percent-encoding in {s:?}"));
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next().ok_or_else(bad)?, bytes.next().ok_or_else(bad)?];
            let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
            match u8::from_str_radix(hex, 16) {
                Ok(0) | Err(_) => return Err(bad()),
                Ok(v) => out.push(v),
            }
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        parse_pairs(s).unwrap()
    }

    fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keyword_syntax() {
        for (input, expected) in [
            ("", vec![]),
            (
                "  host=db1 port=5433",
                vec![("host", "db1"), ("port", "5433")],
            ),
            (
                "host = db1\tuser=  bob ",
                vec![("host", "db1"), ("user", "bob")],
            ),
            (
                "password='a \\'b\\' c\\\\' x=",
                vec![("password", "a 'b' c\\"), ("x", "")],
            ),
            ("password=a\\ b", vec![("password", "a b")]),
            ("application_name=''", vec![("application_name", "")]),
        ] {
            assert_eq!(pairs(input), owned(&expected), "{input}");
        }
    }

    #[test]
    fn keyword_syntax_errors() {
        for bad in ["host", "host=a port", "password='open", "password='it''s'"] {
            let err = parse_pairs(bad).unwrap_err();
            assert!(matches!(err, ConnInfoError::Syntax(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn url_syntax() {
        assert_eq!(
            pairs("postgresql://rep%40l:p%3Aw@db.example:6543/mydb?sslmode=verify-full&application_name=a%20b"),
            owned(&[
                ("user", "rep@l"),
                ("password", "p:w"),
                ("host", "db.example"),
                ("port", "6543"),
                ("dbname", "mydb"),
                ("sslmode", "verify-full"),
                ("application_name", "a b"),
            ])
        );
        assert_eq!(
            pairs("postgres://[::1]:5433"),
            owned(&[("host", "::1"), ("port", "5433"), ("dbname", "")])
        );
        assert_eq!(
            pairs("postgres://%2Fvar%2Frun%2Fpostgresql/db?port=5499"),
            owned(&[
                ("host", "/var/run/postgresql"),
                ("port", ""),
                ("dbname", "db"),
                ("port", "5499")
            ])
        );
        assert_eq!(
            pairs("postgresql://"),
            owned(&[("host", ""), ("port", ""), ("dbname", "")])
        );
        assert_eq!(
            pairs("postgresql://a:5432,[::1]:5433,c/db"),
            owned(&[
                ("host", "a,::1,c"),
                ("port", "5432,5433,"),
                ("dbname", "db")
            ])
        );
        assert_eq!(
            pairs("postgresql://a,b"),
            owned(&[("host", "a,b"), ("port", ""), ("dbname", "")])
        );
        assert_eq!(
            pairs("postgresql://u+x@h")[0],
            ("user".into(), "u+x".into())
        );
    }

    #[test]
    fn url_syntax_errors() {
        for bad in [
            "postgresql://h/db?sslmode",
            "postgresql://[::1/db",
            "postgresql://[::1]x",
            "postgresql://h%2/db",
            "postgresql://h%zz",
            "postgresql://h%00",
            "postgresql://a,[::1/db",
        ] {
            assert!(parse_pairs(bad).is_err(), "{bad}");
        }
    }
}
