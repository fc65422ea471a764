//! The libpq password file (`~/.pgpass` or `PGPASSFILE`): lines of
//! `hostname:port:database:username:password`, `*` matching any value, `\` escaping
//! `:` and `\`. A file readable by group or others is ignored with a warning.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What a password file line is matched against.
pub(super) struct PassKey<'a> {
    pub host: &'a str,
    pub port: &'a str,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// The password of the first line of `path` matching `key`; `None` when the file is
/// absent, unreadable, too widely readable or has no matching line (as libpq does).
pub(super) fn lookup(path: &Path, key: &PassKey<'_>) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "password file is not a plain file; ignoring it");
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "password file has group or world access; permissions should be u=rw (0600) or less; ignoring it"
        );
        return None;
    }
    let content = match std::fs::read_to_string(path) {
        Ok(content) => content,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot read password file; ignoring it");
            return None;
        }
    };
    content.lines().find_map(|line| match_line(line, key))
}

/// The password of one line if its four leading fields match `key`.
fn match_line(line: &str, key: &PassKey<'_>) -> Option<String> {
    if line.starts_with('#') {
        return None;
    }
    let mut rest = line.trim_end_matches('\r');
    for wanted in [key.host, key.port, key.dbname, key.user] {
        let (field, wildcard, after) = split_field(rest)?;
        if !(wildcard || field == wanted) {
            return None;
        }
        rest = after;
    }
    Some(unescape(rest))
}

/// Split off the first `:`-terminated field: its unescaped text, whether it is the bare
/// wildcard `*`, and the remainder after the colon. `None` when there is no colon.
fn split_field(s: &str) -> Option<(String, bool, &str)> {
    let mut field = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            ':' => return Some((field, &s[..i] == "*", &s[i + 1..])),
            '\\' => field.extend(chars.next().map(|(_, c)| c)),
            c => field.push(c),
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const KEY: PassKey<'static> = PassKey {
        host: "db:1",
        port: "5432",
        dbname: "replication",
        user: "arch",
    };

    #[test]
    fn matches_lines() {
        for (line, expected) in [
            ("db\\:1:5432:replication:arch:secret", Some("secret")),
            ("*:*:*:*:any", Some("any")),
            ("db\\:1:*:*:arch:pa\\:ss\\\\word", Some("pa:ss\\word")),
            (
                "db\\:1:5432:replication:arch:with:colons",
                Some("with:colons"),
            ),
            ("db\\:1:5433:replication:arch:secret", None),
            ("db:1:5432:replication:arch:secret", None),
            ("\\*:5432:replication:arch:secret", None),
            ("*:5432:replication:other:secret", None),
            ("#*:*:*:*:commented", None),
            ("*:*:*:arch", None),
            ("*:*:*:*:crlf\r", Some("crlf")),
        ] {
            assert_eq!(match_line(line, &KEY).as_deref(), expected, "{line}");
        }
    }

    fn passfile(content: &str, mode: u32) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content.as_bytes()).unwrap();
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    #[test]
    fn first_matching_line_wins() {
        let file = passfile(
            "# comment\nother:*:*:*:no\n*:5432:*:arch:first\n*:*:*:*:second\n",
            0o600,
        );
        assert_eq!(lookup(file.path(), &KEY).as_deref(), Some("first"));
    }

    #[test]
    fn ignores_group_readable_and_missing_files() {
        let file = passfile("*:*:*:*:secret\n", 0o640);
        assert_eq!(lookup(file.path(), &KEY), None);
        assert_eq!(lookup(Path::new("/nonexistent/pgpass"), &KEY), None);
    }
}
