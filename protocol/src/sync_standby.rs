//! `synchronous_standby_names`: whether a walsender client with a given
//! `application_name` can be chosen as a synchronous standby.
//!
//! Syntax (PostgreSQL docs, "synchronous_standby_names"): `FIRST n (names)`,
//! `ANY n (names)`, `n (names)` or a bare `names` list (FIRST 1). A name is an
//! identifier or a double-quoted string; `*` matches every standby. Names are
//! compared with `application_name` case-insensitively, as the server does.

/// True when `setting` lets a client named `application_name` be a synchronous
/// standby (it names it, or holds `*`). An empty setting names nobody.
pub fn can_be_synchronous(setting: &str, application_name: &str) -> bool {
    names(setting)
        .iter()
        .any(|name| name == "*" || name.eq_ignore_ascii_case(application_name))
}

/// The standby names of `setting`, method and count stripped.
fn names(setting: &str) -> Vec<String> {
    let s = setting.trim();
    let list = match (s.find('('), s.rfind(')')) {
        (Some(open), Some(close)) if open < close => &s[open + 1..close],
        _ => s,
    };
    let mut out = Vec::new();
    let mut chars = list.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        match chars.peek() {
            None => return out,
            Some('"') => {
                chars.next();
                let mut name = String::new();
                while let Some(c) = chars.next() {
                    if c == '"' {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            name.push('"');
                        } else {
                            break;
                        }
                    } else {
                        name.push(c);
                    }
                }
                out.push(name);
            }
            Some(_) => {
                let mut name = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c.is_whitespace() {
                        break;
                    }
                    name.push(c);
                    chars.next();
                }
                out.push(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_who_can_be_chosen() {
        for (setting, app, chosen) in [
            ("", "tidemark", false),
            ("*", "tidemark", true),
            ("FIRST 1 (*)", "tidemark", true),
            ("ANY 1 (*)", "tidemark", true),
            ("any 2 (s1, *)", "tidemark", true),
            ("2 (s1, s2)", "tidemark", false),
            ("s1, s2", "tidemark", false),
            ("s1,TideMark", "tidemark", true),
            ("FIRST 1 (s1, \"tidemark\")", "tidemark", true),
            ("\"my \"\"odd\"\" name\"", "my \"odd\" name", true),
            ("\"*\"", "tidemark", true),
            ("replica1", "replica1", true),
        ] {
            assert_eq!(
                can_be_synchronous(setting, app),
                chosen,
                "{setting:?} / {app:?}"
            );
        }
    }
}
