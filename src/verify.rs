//! `tidemark verify`: read back what the repository holds and report, object by object,
//! what is damaged and what a restore would lose by it (the work is
//! `restorer::verify`'s). Exit 0 when everything is sound, 8 when anything is damaged.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tidemark_restorer::verify::{verify as run, Progress, Report, VerifyRequest};
use tidemark_store::repository::Repository;
use tidemark_store::retry::{RetryPolicy, READ_BUDGET};
use tidemark_store::storage::S3Options;

use crate::cli::{Cli, VerifyArgs};
use crate::commands::{open_existing_catalog, repo_url};
use crate::failure::DAMAGED;
use crate::output::outln;

pub async fn verify(cli: &Cli, args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let url = repo_url(cli)?;
    let policy = RetryPolicy::reads(READ_BUDGET);
    let s3 = S3Options::from_env()?;
    let repo = Repository::open_for_reads(&url, &s3, policy).await?;
    // The catalog first: every record then names an object stored before the listing.
    let catalog = match open_existing_catalog(cli, &url) {
        Ok(catalog) => Some(catalog.segments()?),
        Err(e) => {
            tracing::info!(error = %format!("{e:#}"), "no local catalog to compare with the repository");
            None
        }
    };
    let req = VerifyRequest {
        backup: args.backup.as_deref().map(str::parse).transpose()?,
        since: args.since.map(|t| t.with_timezone(&chrono::Utc)),
        jobs: usize::from(args.jobs),
        catalog,
        app_s3: Some(s3),
    };
    let mut bar = Bar::new(std::io::stderr().is_terminal() && !args.json);
    let report = run(&repo, &req, |p| bar.show(p)).await?;
    bar.clear();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(match report.problems.is_empty() {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(DAMAGED),
    })
}

fn print(r: &Report) {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    outln!(
        "WAL: {} segment(s), {} partial, {} history file(s), {} marker(s), {:.2} GiB read",
        r.segments,
        r.partials,
        r.histories,
        r.markers,
        gib(r.wal_bytes)
    );
    for b in &r.backups {
        let state = if b.sound { "sound" } else { "DAMAGED" };
        let reach = match &b.restorable_to {
            Some(lsn) => format!("restorable to {lsn}"),
            None => "not restorable".to_string(),
        };
        outln!(
            "backup {}: {state}, {} chunk(s), {} file(s), {:.2} GiB; {reach}{}",
            b.id,
            b.chunks,
            b.files,
            gib(b.bytes),
            b.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
    for b in &r.buckets {
        outln!(
            "bucket {} ({}): {}, {} pass record(s), {} cop{}, {} version(s) in the bucket{}",
            b.bucket,
            b.mode,
            if b.sound { "sound" } else { "DAMAGED" },
            b.passes,
            b.copies,
            if b.copies == 1 { "y" } else { "ies" },
            b.versions,
            b.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
    match r.catalog_records {
        Some(n) => outln!("catalog: {n} record(s) compared with the repository"),
        None => outln!("catalog: none here, not compared"),
    }
    if r.problems.is_empty() {
        outln!("everything read back as stored");
        return;
    }
    outln!("{} problem(s):", r.problems.len());
    for p in &r.problems {
        outln!("  {}: {}", p.key, p.problem);
        outln!("    loses: {}", p.loses);
    }
}

/// A progress line on a terminal, redrawn at most five times a second.
struct Bar {
    on: bool,
    last: Option<Instant>,
}

impl Bar {
    fn new(on: bool) -> Bar {
        Bar { on, last: None }
    }

    fn show(&mut self, p: Progress) {
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(200));
        if !self.on || !(due || p.done == p.total) {
            return;
        }
        self.last = Some(Instant::now());
        let width = 30;
        let filled = (p.done * width).checked_div(p.total).unwrap_or(width);
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r[{}{}] {}/{} objects, {:.1} MiB",
            "#".repeat(filled),
            " ".repeat(width - filled),
            p.done,
            p.total,
            p.bytes as f64 / (1 << 20) as f64
        );
        let _ = err.flush();
    }

    fn clear(&self) {
        if self.on && self.last.is_some() {
            eprint!("\r{}\r", " ".repeat(72));
        }
    }
}
