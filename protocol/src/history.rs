//! Timeline history files (`NNNNNNNN.history`): one line per ancestor timeline,
//! `<parentTLI>\t<switchpoint X/Y>\t<reason>`, as written by PostgreSQL at promotion.
//!
//! Blank lines and lines starting with `#` are ignored, as PostgreSQL does.

use crate::lsn::Lsn;
use crate::timeline::TimelineId;

/// One ancestor timeline: WAL of `parent` is valid up to (not including) `switch_lsn`,
/// where the next timeline of the history begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent: TimelineId,
    pub switch_lsn: Lsn,
    /// Free text PostgreSQL wrote for the switch, e.g. `no recovery target specified`.
    pub reason: String,
}

/// A history file that PostgreSQL would not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timeline history at line {line}: {problem} in {text:?}")]
pub struct HistoryError {
    /// 1-based line number.
    pub line: usize,
    /// The offending line.
    pub text: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// Parse a history file's content. Timeline ids must increase from line to line and
/// switch points must not go backwards, as in PostgreSQL's `readTimeLineHistory`.
pub fn parse_history(content: &[u8]) -> Result<Vec<HistoryEntry>, HistoryError> {
    let text = String::from_utf8_lossy(content);
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |problem| HistoryError {
            line: index + 1,
            text: raw.to_string(),
            problem,
        };
        let mut fields = line.splitn(3, char::is_whitespace);
        let parent: TimelineId = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| fail("expected a timeline id"))?;
        let switch_lsn: Lsn = fields
            .next()
            .map(str::trim_start)
            .and_then(|f| f.split(char::is_whitespace).next())
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| fail("expected a switch point like 0/3000000"))?;
        let reason = fields.next().unwrap_or("").trim().to_string();
        if let Some(prev) = entries.last() {
            if parent <= prev.parent {
                return Err(fail("timeline ids must increase"));
            }
            if switch_lsn < prev.switch_lsn {
                return Err(fail("switch points must not go backwards"));
            }
        }
        entries.push(HistoryEntry {
            parent,
            switch_lsn,
            reason,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(parent: u32, lsn: &str, reason: &str) -> HistoryEntry {
        HistoryEntry {
            parent: TimelineId(parent),
            switch_lsn: lsn.parse().unwrap(),
            reason: reason.to_string(),
        }
    }

    #[test]
    fn parses_postgres_output() {
        let content = b"1\t0/3000060\tno recovery target specified\n\
                        \n# a comment\n\
                        2\t0/5000000\tat restore point \"before upgrade\"\n\
                        5\t1/A0\t\n";
        assert_eq!(
            parse_history(content).unwrap(),
            vec![
                entry(1, "0/3000060", "no recovery target specified"),
                entry(2, "0/5000000", "at restore point \"before upgrade\""),
                entry(5, "1/A0", ""),
            ]
        );
    }

    #[test]
    fn empty_file_has_no_entries() {
        assert_eq!(parse_history(b"").unwrap(), vec![]);
        assert_eq!(parse_history(b"# only\n\n").unwrap(), vec![]);
    }

    #[test]
    fn rejects_malformed_lines() {
        for (content, line, problem) in [
            (&b"x\t0/1\treason\n"[..], 1, "expected a timeline id"),
            (b"0\t0/1\treason\n", 1, "expected a timeline id"),
            (b"1\n", 1, "expected a switch point like 0/3000000"),
            (b"1\tzz\tr\n", 1, "expected a switch point like 0/3000000"),
            (b"2\t0/10\ta\n1\t0/20\tb\n", 2, "timeline ids must increase"),
            (
                b"1\t0/20\ta\n\n2\t0/10\tb\n",
                3,
                "switch points must not go backwards",
            ),
        ] {
            let err = parse_history(content).unwrap_err();
            assert_eq!((err.line, err.problem), (line, problem), "{content:?}");
        }
    }
}
