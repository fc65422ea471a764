//! `tidemark.toml`: settings for every command and named clusters, found by `--config`,
//! `TIDEMARK_CONFIG`, then `/etc/tidemark/tidemark.toml`. The file's values become the
//! defaults of the command line's options, so a flag or its `TIDEMARK_*` variable still
//! wins; its `[s3]` table (and `objects_lease_ttl`) set the standard AWS and `TIDEMARK_*`
//! variables that the environment does not already set. Precedence: flag > environment > file > default.
//!
//! Keys are the options' long names with `_` for `-`: top-level (or in `[cluster.NAME]`)
//! for the global options, in a table named for the command otherwise (`[stream]`,
//! `[cluster.main.backup]`, `[objects.track]`). A cluster's keys override the top level's.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use clap::Command;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Where the file is looked for when neither `--config` nor `TIDEMARK_CONFIG` names one.
pub const DEFAULT_PATH: &str = "/etc/tidemark/tidemark.toml";

/// Global options that the file cannot set: they choose the file, or are read before it.
const NOT_IN_FILE: [&str; 5] = ["config", "cluster", "env_file", "help", "version"];

/// Keys that set an environment variable (`s3.` ones in the `[s3]` table), the variable,
/// and the variables that, when set, win over the file.
const VARIABLES: [(&str, &str, &[&str]); 8] = [
    (
        "s3.endpoint",
        "AWS_ENDPOINT_URL_S3",
        &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
    ),
    (
        "s3.region",
        "AWS_REGION",
        &["AWS_REGION", "AWS_DEFAULT_REGION"],
    ),
    ("s3.profile", "AWS_PROFILE", &["AWS_PROFILE"]),
    (
        "s3.credentials_file",
        "AWS_SHARED_CREDENTIALS_FILE",
        &["AWS_SHARED_CREDENTIALS_FILE"],
    ),
    (
        "s3.path_style",
        "TIDEMARK_S3_PATH_STYLE",
        &["TIDEMARK_S3_PATH_STYLE"],
    ),
    (
        "s3.multipart_threshold",
        "TIDEMARK_S3_MULTIPART_THRESHOLD",
        &["TIDEMARK_S3_MULTIPART_THRESHOLD"],
    ),
    (
        "s3.part_size",
        "TIDEMARK_S3_PART_SIZE",
        &["TIDEMARK_S3_PART_SIZE"],
    ),
    (
        "objects_lease_ttl",
        "TIDEMARK_OBJECTS_LEASE_TTL",
        &["TIDEMARK_OBJECTS_LEASE_TTL"],
    ),
];

/// Why the config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the config file {} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("unknown key `{key}` in {} line {line}{section}; HINT: keys are the long option names of the command they follow, with _ for - (see docs/cli.md)", path.display())]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
        section: String,
    },
    #[error("`{key}` in {} line {line} must be {expected}", path.display())]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        expected: &'static str,
    },
    #[error("`{key}` in {} line {line}: {reason}; HINT: the value is what the option takes on the command line (see docs/cli.md)", path.display())]
    Rejected {
        path: PathBuf,
        line: usize,
        key: String,
        reason: String,
    },
    #[error("[group.{group}] in {} line {line} names cluster {cluster}, which has no [cluster.{cluster}]; HINT: add it, or fix the name", path.display())]
    UnknownMember {
        path: PathBuf,
        line: usize,
        group: String,
        cluster: String,
    },
    #[error("[cluster.{cluster}] of [group.{group}] in {} needs both pg and repo; HINT: each member has its own server and repository", path.display())]
    IncompleteMember {
        path: PathBuf,
        group: String,
        cluster: String,
    },
    #[error("{} has no [cluster.{name}] (it has: {known}); HINT: check --cluster or TIDEMARK_CLUSTER", path.display())]
    NoSuchCluster {
        path: PathBuf,
        name: String,
        known: String,
    },
    #[error("--cluster {name} needs a config file; HINT: pass --config PATH, set TIDEMARK_CONFIG, or create {DEFAULT_PATH}")]
    NoFile { name: String },
    #[error("clusters {first} and {second} in {} are both default = true; HINT: keep one", path.display())]
    TwoDefaults {
        path: PathBuf,
        first: String,
        second: String,
    },
    #[error("the config file {} holds a password (in {what}) and others can read it (mode {mode:o}); HINT: chmod 600 it, or keep the password in ~/.pgpass", path.display())]
    SecretReadable {
        path: PathBuf,
        what: String,
        mode: u32,
    },
}

/// The config file this invocation uses.
#[derive(Debug, Clone)]
pub struct InUse {
    /// Absolute, so a `restore_command` run in the data directory finds it.
    pub path: PathBuf,
    /// The selected `[cluster.NAME]`, if any.
    pub cluster: Option<String>,
    /// Variables the file set (they were not in the environment).
    pub exported: Vec<&'static str>,
    /// The file's `[group.NAME]`s.
    pub groups: BTreeMap<String, Group>,
}

/// What one layer (the top level or a cluster) says.
#[derive(Debug, Default, Clone)]
struct Layer {
    /// Option defaults by subcommand path (empty: global) and option id.
    options: BTreeMap<(Vec<String>, String), Vec<String>>,
    /// Values of the `VARIABLES` keys.
    vars: BTreeMap<&'static str, String>,
}

/// The file read and checked: its top level and its clusters.
#[derive(Debug)]
struct Document {
    top: Layer,
    clusters: BTreeMap<String, (Layer, bool)>,
    /// `[group.NAME]`: its clusters and buckets, by name.
    groups: BTreeMap<String, (Vec<String>, Vec<String>)>,
}

/// A `[group.NAME]`: clusters restored and marked together, and the buckets that go
/// with them.
#[derive(Debug, Clone)]
pub struct Group {
    pub members: Vec<Member>,
    pub buckets: Vec<String>,
}

/// A group's cluster, with what its `[cluster.NAME]` (over the top level) says.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub pg: String,
    pub repo: String,
}

/// Reads the file this invocation names (`given`: `--config`'s value, else
/// `TIDEMARK_CONFIG`'s, else the default path if it exists) and the cluster
/// (`--cluster`/`TIDEMARK_CLUSTER`, else the one marked default, else the only one).
/// Returns `cli` with the file's values as option defaults and sets the `[s3]`
/// variables the environment lacks. Call before any thread starts.
pub fn apply(
    cli: Command,
    given: Option<PathBuf>,
    cluster: Option<String>,
) -> Result<(Command, Option<InUse>), ConfigError> {
    let path = match given {
        Some(p) => p,
        None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
        None => {
            return match cluster {
                Some(name) => Err(ConfigError::NoFile { name }),
                None => Ok((cli, None)),
            }
        }
    };
    let read_err = |source| ConfigError::Read {
        path: path.clone(),
        source,
    };
    let path = std::path::absolute(&path).map_err(read_err)?;
    let text = std::fs::read_to_string(&path).map_err(read_err)?;
    let mode = std::fs::metadata(&path).map_err(read_err)?.mode();
    let mut reader = Reader {
        path: &path,
        text: &text,
        cli: &cli,
        secrets: Vec::new(),
    };
    let doc = reader.document()?;
    if let (Some(what), true) = (reader.secrets.first(), mode & 0o077 != 0) {
        return Err(ConfigError::SecretReadable {
            path: path.clone(),
            what: what.clone(),
            mode: mode & 0o777,
        });
    }
    let cluster = select(&path, &doc, cluster)?;
    let mut layer = doc.top.clone();
    if let Some(name) = &cluster {
        let (own, _) = &doc.clusters[name];
        layer.options.extend(own.options.clone());
        layer.vars.extend(own.vars.clone());
    }
    let mut exported = Vec::new();
    for (key, var, winners) in VARIABLES {
        let Some(value) = layer.vars.get(key) else {
            continue;
        };
        if winners.iter().all(|w| std::env::var_os(w).is_none()) {
            std::env::set_var(var, value);
            exported.push(var);
        }
    }
    let mut groups = BTreeMap::new();
    for (name, (clusters, buckets)) in &doc.groups {
        let members = clusters
            .iter()
            .map(|c| {
                member(&doc, c).ok_or_else(|| ConfigError::IncompleteMember {
                    path: path.clone(),
                    group: name.clone(),
                    cluster: c.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        let group = Group {
            members,
            buckets: buckets.clone(),
        };
        groups.insert(name.clone(), group);
    }
    let mut cli = cli;
    for ((commands, id), values) in layer.options {
        cli = with_default(cli, &commands, &id, values);
    }
    Ok((
        cli,
        Some(InUse {
            path,
            cluster,
            exported,
            groups,
        }),
    ))
}

/// Cluster `name` of a group: its global options over the top level's; `None` without
/// both `pg` and `repo`.
fn member(doc: &Document, name: &str) -> Option<Member> {
    let global = |id: &str| {
        let key = (Vec::new(), id.to_string());
        doc.clusters
            .get(name)
            .and_then(|(layer, _)| layer.options.get(&key))
            .or_else(|| doc.top.options.get(&key))
            .and_then(|v| v.first().cloned())
    };
    Some(Member {
        name: name.to_string(),
        pg: global("pg")?,
        repo: global("repo")?,
    })
}

/// The cluster to use: the one named, else the default one, else the only one.
fn select(
    path: &Path,
    doc: &Document,
    named: Option<String>,
) -> Result<Option<String>, ConfigError> {
    if let Some(name) = named {
        if !doc.clusters.contains_key(&name) {
            let known: Vec<&str> = doc.clusters.keys().map(String::as_str).collect();
            return Err(ConfigError::NoSuchCluster {
                path: path.to_path_buf(),
                name,
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
        return Ok(Some(name));
    }
    let defaults: Vec<&String> = doc
        .clusters
        .iter()
        .filter(|(_, (_, default))| *default)
        .map(|(name, _)| name)
        .collect();
    match (defaults.as_slice(), doc.clusters.len()) {
        ([first, second, ..], _) => Err(ConfigError::TwoDefaults {
            path: path.to_path_buf(),
            first: first.to_string(),
            second: second.to_string(),
        }),
        ([one], _) => Ok(Some(one.to_string())),
        ([], 1) => Ok(doc.clusters.keys().next().cloned()),
        ([], _) => Ok(None),
    }
}

/// `cli` with option `id` of the subcommand at `commands` defaulting to `values`.
fn with_default(cli: Command, commands: &[String], id: &str, values: Vec<String>) -> Command {
    match commands.split_first() {
        // A value from the file satisfies a required option too.
        None => cli.mut_arg(id, |a| a.default_values(values).required(false)),
        Some((first, rest)) => {
            cli.mut_subcommand(first.as_str(), |sub| with_default(sub, rest, id, values))
        }
    }
}

/// Walks the parsed document, checking every key against the command line's options.
struct Reader<'a> {
    path: &'a Path,
    text: &'a str,
    cli: &'a Command,
    /// Where the file holds a password, for the mode check.
    secrets: Vec<String>,
}

impl Reader<'_> {
    fn document(&mut self) -> Result<Document, ConfigError> {
        let root = DeTable::parse(self.text).map_err(|e| ConfigError::Syntax {
            path: self.path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let mut top = Layer::default();
        let mut clusters = BTreeMap::new();
        let mut groups = BTreeMap::new();
        for (key, value) in root.get_ref() {
            match key.get_ref().as_ref() {
                "cluster" => {
                    for (name, table) in self.table(key, value)? {
                        let mut layer = Layer::default();
                        let section = format!("cluster.{}", name.get_ref());
                        let default = self.layer(self.table(name, table)?, &section, &mut layer)?;
                        clusters.insert(name.get_ref().to_string(), (layer, default));
                    }
                }
                "group" => {
                    for (name, table) in self.table(key, value)? {
                        let group = self.group(name, self.table(name, table)?)?;
                        groups.insert(name.get_ref().to_string(), (group, name.span()));
                    }
                }
                _ => self.entry(key, value, "", &mut top, false)?,
            }
        }
        let mut checked = BTreeMap::new();
        for (name, ((members, buckets), span)) in groups {
            if let Some(unknown) = members.iter().find(|m| !clusters.contains_key(*m)) {
                return Err(ConfigError::UnknownMember {
                    path: self.path.to_path_buf(),
                    line: self.line(span),
                    group: name,
                    cluster: unknown.clone(),
                });
            }
            checked.insert(name, (members, buckets));
        }
        Ok(Document {
            top,
            clusters,
            groups: checked,
        })
    }

    /// A `[group.NAME]` table: its `clusters` and `buckets` (arrays of names).
    fn group(
        &self,
        name: &Spanned<toml::de::DeString>,
        table: &DeTable,
    ) -> Result<(Vec<String>, Vec<String>), ConfigError> {
        let (mut clusters, mut buckets) = (Vec::new(), Vec::new());
        for (key, value) in table {
            let into = match key.get_ref().as_ref() {
                "clusters" => &mut clusters,
                "buckets" => &mut buckets,
                _ => return Err(self.unknown(key, &format!("group.{}", name.get_ref()))),
            };
            let names = value
                .get_ref()
                .as_array()
                .ok_or_else(|| self.bad(key, "an array of names"))?;
            for n in names {
                let text = n
                    .get_ref()
                    .as_str()
                    .ok_or_else(|| self.bad(key, "an array of names"))?;
                into.push(text.to_string());
            }
        }
        if clusters.is_empty() {
            return Err(self.bad(
                name,
                "a table with clusters = [...] naming at least one cluster",
            ));
        }
        Ok((clusters, buckets))
    }

    /// A cluster's table; returns its `default`.
    fn layer(
        &mut self,
        table: &DeTable,
        section: &str,
        layer: &mut Layer,
    ) -> Result<bool, ConfigError> {
        let mut default = false;
        for (key, value) in table {
            if key.get_ref() == "default" {
                default = value
                    .get_ref()
                    .as_bool()
                    .ok_or_else(|| self.bad(key, "true or false"))?;
                continue;
            }
            self.entry(key, value, section, layer, true)?;
        }
        Ok(default)
    }

    /// One key of the top level or a cluster: `s3`, a global option or a command's table.
    fn entry(
        &mut self,
        key: &Spanned<toml::de::DeString>,
        value: &Spanned<DeValue>,
        section: &str,
        layer: &mut Layer,
        in_cluster: bool,
    ) -> Result<(), ConfigError> {
        let name = key.get_ref().as_ref();
        if name == "s3" {
            for (k, v) in self.table(key, value)? {
                let name = format!("s3.{}", k.get_ref());
                let Some((key, _, _)) = VARIABLES.iter().find(|(n, _, _)| *n == name) else {
                    return Err(self.unknown(k, &join(section, "s3")));
                };
                let text = scalar(v.get_ref()).ok_or_else(|| self.bad(k, "a string"))?;
                layer.vars.insert(key, text);
            }
            return Ok(());
        }
        if let Some((var_key, _, _)) = VARIABLES.iter().find(|(n, _, _)| *n == name) {
            let text =
                scalar(value.get_ref()).ok_or_else(|| self.bad(key, "a string or number"))?;
            layer.vars.insert(var_key, text);
            return Ok(());
        }
        if let Some(sub) = subcommand(self.cli, name) {
            let table = self.table(key, value)?;
            let path = vec![sub.get_name().to_string()];
            return self.command(sub, path, table, &join(section, name), layer);
        }
        match option(self.cli, name, true) {
            Some(arg) => {
                let id = arg.get_id().to_string();
                let values = self.checked(arg, key, value)?;
                if id == "pg" && values.iter().any(|v| holds_password(v)) {
                    self.secrets.push(match in_cluster {
                        true => format!("pg of [{section}]"),
                        false => "pg".into(),
                    });
                }
                layer.options.insert((Vec::new(), id), values);
                Ok(())
            }
            None => Err(self.unknown(key, section)),
        }
    }

    /// A command's table: its options, and the tables of its own subcommands.
    fn command(
        &mut self,
        cmd: &Command,
        path: Vec<String>,
        table: &DeTable,
        section: &str,
        layer: &mut Layer,
    ) -> Result<(), ConfigError> {
        for (key, value) in table {
            let name = key.get_ref().as_ref();
            if let Some(sub) = subcommand(cmd, name) {
                let mut deeper = path.clone();
                deeper.push(sub.get_name().to_string());
                let t = self.table(key, value)?;
                self.command(sub, deeper, t, &join(section, name), layer)?;
                continue;
            }
            let arg = option(cmd, name, false).ok_or_else(|| self.unknown(key, section))?;
            let values = self.checked(arg, key, value)?;
            layer
                .options
                .insert((path.clone(), arg.get_id().to_string()), values);
        }
        Ok(())
    }

    fn table<'t, 'i>(
        &self,
        key: &Spanned<toml::de::DeString>,
        value: &'t Spanned<DeValue<'i>>,
    ) -> Result<&'t DeTable<'i>, ConfigError> {
        value
            .get_ref()
            .as_table()
            .ok_or_else(|| self.bad(key, "a table"))
    }

    /// A scalar, or an array of scalars (a repeatable option).
    fn values(
        &self,
        key: &Spanned<toml::de::DeString>,
        value: &Spanned<DeValue>,
    ) -> Result<Vec<String>, ConfigError> {
        let bad = || self.bad(key, "a string, number, boolean or an array of them");
        match value.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .map(|v| scalar(v.get_ref()).ok_or_else(bad))
                .collect(),
            v => Ok(vec![scalar(v).ok_or_else(bad)?]),
        }
    }

    /// The values of option `arg`, each accepted by the option's own parser (so a
    /// value the command line would refuse is refused here, with the file's line).
    fn checked(
        &self,
        arg: &clap::Arg,
        key: &Spanned<toml::de::DeString>,
        value: &Spanned<DeValue>,
    ) -> Result<Vec<String>, ConfigError> {
        let values = self.values(key, value)?;
        // The option's own parser, on an option of its own (the original's relations to
        // other options do not matter for one value).
        let probe = Command::new("tidemark").no_binary_name(true).arg(
            clap::Arg::new("value")
                .long("value")
                .action(clap::ArgAction::Set)
                .allow_hyphen_values(true)
                .value_parser(arg.get_value_parser().clone()),
        );
        for v in &values {
            let refused = match arg.get_action().takes_values() {
                true => probe
                    .clone()
                    .try_get_matches_from(["--value", v.as_str()])
                    .err()
                    .map(|e| match std::error::Error::source(&e) {
                        Some(why) => format!("invalid value '{v}': {why}"),
                        None => format!("invalid value '{v}'"),
                    }),
                // A flag: set or not.
                false => (!matches!(v.as_str(), "true" | "false"))
                    .then(|| format!("invalid value '{v}': it is true or false")),
            };
            if let Some(reason) = refused {
                let possible: Vec<String> = arg
                    .get_possible_values()
                    .iter()
                    .map(|p| p.get_name().to_string())
                    .collect();
                return Err(ConfigError::Rejected {
                    path: self.path.to_path_buf(),
                    line: self.line(key.span()),
                    key: key.get_ref().to_string(),
                    reason: match possible.is_empty() {
                        true => reason,
                        false => format!("{reason} (one of: {})", possible.join(", ")),
                    },
                });
            }
        }
        Ok(values)
    }

    fn line(&self, span: Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn unknown(&self, key: &Spanned<toml::de::DeString>, section: &str) -> ConfigError {
        ConfigError::UnknownKey {
            path: self.path.to_path_buf(),
            line: self.line(key.span()),
            key: key.get_ref().to_string(),
            section: match section {
                "" => String::new(),
                s => format!(" (in [{s}])"),
            },
        }
    }

    fn bad(&self, key: &Spanned<toml::de::DeString>, expected: &'static str) -> ConfigError {
        ConfigError::BadValue {
            path: self.path.to_path_buf(),
            line: self.line(key.span()),
            key: key.get_ref().to_string(),
            expected,
        }
    }
}

fn join(section: &str, name: &str) -> String {
    match section {
        "" => name.to_string(),
        s => format!("{s}.{name}"),
    }
}

/// `cmd`'s subcommand named `key`, written as typed or with `_` for `-` (`wal_fetch`).
fn subcommand<'c>(cmd: &'c Command, key: &str) -> Option<&'c Command> {
    cmd.find_subcommand(key)
        .or_else(|| cmd.find_subcommand(key.replace('_', "-")))
}

/// The id of `cmd`'s option whose long name is `key` (with `_` for `-`): global options
/// when `global`, the command's own otherwise. Hidden and positional ones are not settable.
fn option<'c>(cmd: &'c Command, key: &str, global: bool) -> Option<&'c clap::Arg> {
    let long = key.replace('_', "-");
    cmd.get_arguments()
        .filter(|a| a.is_global_set() == global && !a.is_hide_set())
        .filter(|a| !NOT_IN_FILE.contains(&a.get_id().as_str()))
        .find(|a| a.get_long() == Some(long.as_str()))
}

fn scalar(value: &DeValue) -> Option<String> {
    Some(match value {
        DeValue::String(s) => s.to_string(),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok()?.to_string(),
        DeValue::Float(f) => f.as_str().to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) | DeValue::Table(_) => return None,
    })
}

/// Whether a connection string carries a password itself (not from the environment).
fn holds_password(conninfo: &str) -> bool {
    tidemark_protocol::conninfo::ConnInfo::parse_with_env(conninfo, &|_| None)
        .map(|c| c.password().is_some())
        // Unparsable: the command reports it; treat it as secret-bearing meanwhile.
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn file(text: &str, mode: u32) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    fn parse(text: &str, cluster: Option<&str>, args: &[&str]) -> Result<crate::cli::Cli, String> {
        use clap::FromArgMatches;
        let f = file(text, 0o600);
        let (cmd, _) = apply(
            crate::cli::Cli::command(),
            Some(f.path().to_path_buf()),
            cluster.map(str::to_string),
        )
        .map_err(|e| e.to_string())?;
        let m = cmd
            .try_get_matches_from(std::iter::once("tidemark").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        crate::cli::Cli::from_arg_matches(&m).map_err(|e| e.to_string())
    }

    const TWO: &str = "repo = \"file:///top\"\n\
        [stream]\nslot = \"top\"\n\
        [cluster.a]\ndefault = true\nrepo = \"file:///a\"\n\
        [cluster.a.stream]\npartial_interval = 2\n\
        [cluster.b]\nrepo = \"file:///b\"\ncatalog = \"/b.db\"\n\
        [cluster.b.objects.track]\nbucket = \"app\"\n";

    #[test]
    fn clusters_override_the_top_level_and_the_default_is_chosen() {
        let cli = parse(TWO, None, &["stream"]).unwrap();
        assert_eq!(cli.repo.as_deref(), Some("file:///a"));
        let crate::cli::Command::Stream(s) = cli.command else {
            panic!("stream")
        };
        assert_eq!((s.slot.as_str(), s.partial_interval), ("top", 2.0));

        let cli = parse(TWO, Some("b"), &["objects", "track"]).unwrap();
        assert_eq!(cli.repo.as_deref(), Some("file:///b"));
        assert_eq!(cli.catalog, Some(PathBuf::from("/b.db")));
        let crate::cli::Command::Objects {
            what: crate::cli::ObjectsCommand::Track(t),
        } = cli.command
        else {
            panic!("track")
        };
        assert_eq!(t.bucket, "app");
    }

    #[test]
    fn a_flag_beats_the_file() {
        let cli = parse(
            TWO,
            None,
            &["--repo", "file:///flag", "stream", "--slot", "f"],
        )
        .unwrap();
        assert_eq!(cli.repo.as_deref(), Some("file:///flag"));
        let crate::cli::Command::Stream(s) = cli.command else {
            panic!("stream")
        };
        assert_eq!(s.slot, "f");
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err = parse(
            "repo = \"file:///x\"\n[stream]\nslot = \"s\"\nslto = \"t\"\n",
            None,
            &["init"],
        )
        .unwrap_err();
        assert!(
            err.contains("unknown key `slto`")
                && err.contains("line 4")
                && err.contains("[stream]"),
            "{err}"
        );
        let err = parse(
            "[cluster.a]\nrepo = \"x\"\n\n[cluster.a.s3]\nsecret_key = \"k\"\n",
            None,
            &["init"],
        )
        .unwrap_err();
        assert!(
            err.contains("`secret_key`") && err.contains("line 5"),
            "{err}"
        );
        let err = parse("config = \"/x\"\n", None, &["init"]).unwrap_err();
        assert!(err.contains("`config`") && err.contains("line 1"), "{err}");
        let err = parse(TWO, Some("c"), &["init"]).unwrap_err();
        assert!(
            err.contains("has no [cluster.c]") && err.contains("a, b"),
            "{err}"
        );
        let err = parse("[stream]\nslot = [[1]]\n", None, &["init"]).unwrap_err();
        assert!(err.contains("`slot`") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_value_the_option_refuses_is_named_with_its_line() {
        let err = parse(
            "[cluster.main]\nrepo = \"file:///r\"\n\n[cluster.main.stream]\ncompression_level = 50\n",
            None,
            &["stream"],
        )
        .unwrap_err();
        assert!(
            err.contains("`compression_level`") && err.contains("line 5") && err.contains("50"),
            "{err}"
        );
        let err = parse("[stream]\npartial_interval = \"soon\"\n", None, &["stream"]).unwrap_err();
        assert!(
            err.contains("`partial_interval`") && err.contains("line 2"),
            "{err}"
        );
        let err = parse("[check]\nswitch = \"maybe\"\n", None, &["check"]).unwrap_err();
        assert!(err.contains("`switch`") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn variables_come_from_the_file_unless_the_environment_has_them() {
        // The only test that touches this variable.
        std::env::remove_var("TIDEMARK_OBJECTS_LEASE_TTL");
        let f = file("objects_lease_ttl = 7\n", 0o600);
        let (_, used) = apply(
            crate::cli::Cli::command(),
            Some(f.path().to_path_buf()),
            None,
        )
        .unwrap();
        assert_eq!(
            std::env::var("TIDEMARK_OBJECTS_LEASE_TTL").as_deref(),
            Ok("7")
        );
        assert_eq!(used.unwrap().exported, ["TIDEMARK_OBJECTS_LEASE_TTL"]);
        let f = file("objects_lease_ttl = 9\n", 0o600);
        let (_, used) = apply(
            crate::cli::Cli::command(),
            Some(f.path().to_path_buf()),
            None,
        )
        .unwrap();
        assert_eq!(
            std::env::var("TIDEMARK_OBJECTS_LEASE_TTL").as_deref(),
            Ok("7")
        );
        assert!(used.unwrap().exported.is_empty());
    }

    #[test]
    fn a_password_in_a_file_others_can_read_is_refused() {
        let text = "[cluster.a]\npg = \"host=h user=u password=secret\"\n";
        let f = file(text, 0o644);
        let err = apply(
            crate::cli::Cli::command(),
            Some(f.path().to_path_buf()),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::SecretReadable { .. }), "{err}");
        assert!(!err.to_string().contains("secret "), "{err}");
        let f = file("[cluster.a]\npg = \"host=h user=u\"\n", 0o644);
        assert!(apply(
            crate::cli::Cli::command(),
            Some(f.path().to_path_buf()),
            None
        )
        .is_ok());
    }
}
