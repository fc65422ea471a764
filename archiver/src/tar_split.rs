//! Cutting PostgreSQL's tar stream into chunks of whole entries, so that every chunk is a
//! valid tar archive on its own (restore unpacks them in parallel; `tar -x` reads each).
//!
//! The splitter follows the stream's 512-byte blocks: a header gives its entry's size,
//! whose data (padded to 512) follows. A cut is allowed before a header, except after an
//! extension header (GNU long name/link, pax) that belongs to the next entry. All-zero
//! blocks (end-of-archive markers) are dropped; each chunk gets its own. Each entry is
//! reported with its path and kind, for the chunk's contents in `backup.json`.

use std::borrow::Cow;

use tidemark_store::backup::EntryKind;

const BLOCK: usize = 512;

/// Two zero blocks: the end of a tar archive.
pub const END_OF_ARCHIVE: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// One piece of the split stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A chunk may end here (before the entry that follows).
    Cut,
    /// The entry whose header follows: its path (`None` if not UTF-8) and kind. An entry
    /// named by an extension header (long name, pax) counts as [`EntryKind::Other`].
    Entry(Option<String>, EntryKind),
    Bytes(Cow<'a, [u8]>),
}

/// The stream is not a tar archive we can split.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TarError {
    #[error("tar header {0:?} has an unreadable size field")]
    BadSize(String),
    #[error("the tar stream ended inside an entry ({0} bytes missing)")]
    Truncated(u64),
}

/// Incremental splitter: feed the stream in any pieces.
#[derive(Debug, Default)]
pub struct TarSplitter {
    /// Bytes of entry data (with padding) still to pass through.
    in_entry: u64,
    /// A partial header block.
    header: Vec<u8>,
    /// The last header was an extension of the next entry.
    extension_pending: bool,
}

impl TarSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Split `data`, which continues the stream.
    pub fn split<'a>(&mut self, mut data: &'a [u8]) -> Result<Vec<Piece<'a>>, TarError> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.in_entry > 0 {
                let n = (self.in_entry.min(data.len() as u64)) as usize;
                out.push(Piece::Bytes(Cow::Borrowed(&data[..n])));
                self.in_entry -= n as u64;
                data = &data[n..];
                continue;
            }
            let want = BLOCK - self.header.len();
            if self.header.is_empty() && data.len() >= BLOCK {
                let (block, rest) = data.split_at(BLOCK);
                self.header_block(Cow::Borrowed(block), &mut out)?;
                data = rest;
            } else {
                let n = want.min(data.len());
                self.header.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.header.len() == BLOCK {
                    let block = std::mem::take(&mut self.header);
                    self.header_block(Cow::Owned(block), &mut out)?;
                }
            }
        }
        Ok(out)
    }

    /// The stream ended: it must not end inside an entry.
    pub fn finish(&self) -> Result<(), TarError> {
        match self.in_entry + self.header.len() as u64 {
            0 => Ok(()),
            missing => Err(TarError::Truncated(missing)),
        }
    }

    fn header_block<'a>(
        &mut self,
        block: Cow<'a, [u8]>,
        out: &mut Vec<Piece<'a>>,
    ) -> Result<(), TarError> {
        if block.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let extended = self.extension_pending;
        if !extended {
            out.push(Piece::Cut);
        }
        let size = entry_size(&block)?;
        let kind = match block[156] {
            _ if extended => EntryKind::Other,
            b'0' | 0 | b'7' => EntryKind::File,
            b'5' => EntryKind::Dir,
            _ => EntryKind::Other,
        };
        if !matches!(block[156], b'L' | b'K' | b'x' | b'g') {
            out.push(Piece::Entry(entry_path(&block), kind));
        }
        self.in_entry = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        self.extension_pending = matches!(block[156], b'L' | b'K' | b'x' | b'g');
        out.push(Piece::Bytes(block));
        Ok(())
    }
}

/// The path a header names: its name field, after the ustar prefix field if there is one.
fn entry_path(header: &[u8]) -> Option<String> {
    let field = |range: std::ops::Range<usize>| {
        let bytes = &header[range];
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).ok()
    };
    let name = field(0..100)?;
    match &header[257..262] == b"ustar" {
        true => match field(345..500)? {
            "" => Some(name.to_string()),
            prefix => Some(format!("{prefix}/{name}")),
        },
        false => Some(name.to_string()),
    }
}

/// The size field of a header: octal text, or base-256 when its high bit is set.
fn entry_size(header: &[u8]) -> Result<u64, TarError> {
    let field = &header[124..136];
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7F);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| bad(header))?;
        }
        return Ok(v);
    }
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| bad(header))
}

fn bad(header: &[u8]) -> TarError {
    let name: String = header[..100]
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    TarError::BadSize(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A real tar file made by the `tar` CLI with a long name (a GNU extension header).
    fn sample_tar() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("global")).unwrap();
        std::fs::write(src.join("PG_VERSION"), b"15\n").unwrap();
        std::fs::write(src.join("global/big"), vec![7u8; 5000]).unwrap();
        let long = "x".repeat(150);
        std::fs::write(src.join(&long), b"long name").unwrap();
        std::fs::write(src.join("empty"), b"").unwrap();
        let tar = dir.path().join("a.tar");
        let ok = Command::new("tar")
            .args(["--format=gnu", "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .unwrap();
        assert!(ok.success());
        std::fs::read(tar).unwrap()
    }

    /// An entry as the splitter reports it: its path (if plain) and kind.
    type Entry = (Option<String>, EntryKind);

    /// Cut at every allowed point: one chunk per entry, and the entries reported.
    fn run_with_entries(stream: &[u8], piece: usize) -> (Vec<Vec<u8>>, Vec<Entry>) {
        let mut s = TarSplitter::new();
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut entries = Vec::new();
        for part in stream.chunks(piece) {
            for p in s.split(part).unwrap() {
                match p {
                    Piece::Cut => chunks.push(Vec::new()),
                    Piece::Entry(path, kind) => entries.push((path, kind)),
                    Piece::Bytes(b) => chunks.last_mut().expect("cut first").extend_from_slice(&b),
                }
            }
        }
        s.finish().unwrap();
        (chunks, entries)
    }

    fn run(stream: &[u8], piece: usize) -> Vec<Vec<u8>> {
        run_with_entries(stream, piece).0
    }

    #[test]
    fn reports_each_entry_with_its_path_and_kind() {
        let (_, entries) = run_with_entries(&sample_tar(), 512);
        let named = |p: &str, k| (Some(p.to_string()), k);
        assert_eq!(
            entries,
            vec![
                named("./", EntryKind::Dir),
                named("./PG_VERSION", EntryKind::File),
                named("./global/", EntryKind::Dir),
                named("./global/big", EntryKind::File),
                // The long name lives in the extension header: the entry is not plain.
                (Some(format!("./{}", "x".repeat(98))), EntryKind::Other),
                named("./empty", EntryKind::File),
            ]
        );
    }

    #[test]
    fn cuts_only_between_whole_entries_in_any_feed_size() {
        let stream = sample_tar();
        let whole = run(&stream, stream.len());
        // ".", "./PG_VERSION", "./global", "./global/big", long name (2 headers, 1 cut), "./empty"
        assert_eq!(whole.len(), 6, "one chunk per entry");
        for piece in [1, 7, 512, 513, 4096] {
            assert_eq!(run(&stream, piece), whole, "feed size {piece}");
        }
        // Every chunk, closed with the end-of-archive blocks, is a tar the CLI reads,
        // and together they hold every file.
        let dir = tempfile::tempdir().unwrap();
        for (i, chunk) in whole.iter().enumerate() {
            let path = dir.path().join(format!("{i}.tar"));
            let mut bytes = chunk.clone();
            bytes.extend_from_slice(&END_OF_ARCHIVE);
            std::fs::write(&path, bytes).unwrap();
            let out = dir.path().join("out");
            std::fs::create_dir_all(&out).unwrap();
            let ok = Command::new("tar")
                .arg("-xf")
                .arg(&path)
                .arg("-C")
                .arg(&out)
                .status()
                .unwrap();
            assert!(ok.success(), "chunk {i} is not a valid tar");
        }
        let out = dir.path().join("out");
        assert_eq!(
            std::fs::read(out.join("global/big")).unwrap(),
            vec![7u8; 5000]
        );
        assert_eq!(
            std::fs::read(out.join("x".repeat(150))).unwrap(),
            b"long name"
        );
        assert_eq!(std::fs::read(out.join("PG_VERSION")).unwrap(), b"15\n");
    }

    #[test]
    fn a_stream_cut_inside_an_entry_is_an_error() {
        let stream = sample_tar();
        let mut s = TarSplitter::new();
        s.split(&stream[..512 * 3 + 100]).unwrap();
        assert!(matches!(s.finish(), Err(TarError::Truncated(_))));
        let mut bad = stream.clone();
        bad[124..136].copy_from_slice(b"zzzzzzzzzzz\0");
        assert!(matches!(
            TarSplitter::new().split(&bad),
            Err(TarError::BadSize(_))
        ));
    }
}
