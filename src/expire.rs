//! `tidemark expire`: applies the retention window and prints what went.

use tidemark_archiver::expire::{ExpireOptions, ExpireReport};
use tidemark_store::catalog::Catalog;

use crate::cli::{Cli, ExpireArgs};
use crate::commands::{catalog_path, open_identified};
use crate::output::outln;

pub async fn expire(cli: &Cli, args: &ExpireArgs) -> anyhow::Result<()> {
    let (url, repo, identity, seg) = open_identified(cli).await?;
    // The repository is the truth; a catalog on this machine is kept in step with it.
    let path = catalog_path(cli, &url);
    let mut catalog = match path.exists() {
        true => Some(Catalog::open(&path)?),
        false => None,
    };
    if let Some(catalog) = &catalog {
        // Never edit the catalog of another repository.
        catalog.bind(&url.to_string(), identity.system_identifier)?;
    }
    let options = ExpireOptions {
        retention: args.retention,
        dry_run: args.dry_run,
        lease_wait: std::time::Duration::from_secs(60),
        copy_grace: tidemark_archiver::expire::COPY_GRACE,
    };
    let report = tidemark_archiver::expire::expire(&repo, catalog.as_mut(), seg, options).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, catalog.is_none());
    }
    Ok(())
}

fn print_report(r: &ExpireReport, no_catalog: bool) {
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string();
    let verb = if r.dry_run { "would remove" } else { "removed" };
    outln!("retention window begins {}", time(r.cutoff));
    let removed_bytes: u64 = r.backups_removed.iter().map(|b| b.bytes).sum();
    outln!(
        "{verb} {} backups ({:.1} MB){}",
        r.backups_removed.len(),
        mb(removed_bytes),
        r.backups_removed
            .iter()
            .map(|b| format!("\n  {} (ended {})", b.id, time(b.stop_time)))
            .collect::<String>()
    );
    outln!(
        "kept {} backups: {}",
        r.backups_kept.len(),
        r.backups_kept
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    outln!(
        "{verb} {} WAL objects ({:.1} MB)",
        r.wal_removed,
        mb(r.wal_bytes_removed)
    );
    match r.database_window_from {
        Some(t) => outln!("database restorable from {}", time(t)),
        None => outln!("database: no complete backup, so nothing is expired"),
    }
    for b in &r.buckets {
        match &b.skipped {
            Some(why) => outln!("bucket {}: left as it is: {why}", b.bucket),
            None => outln!(
                "bucket {}: {verb} {} versions and {} copies ({:.1} MB), folding {} pass records into one{}",
                b.bucket,
                b.versions_dropped,
                b.blobs_removed,
                mb(b.blob_bytes_removed),
                b.passes_folded,
                b.window_from
                    .map(|t| format!("; restorable from {}", time(t)))
                    .unwrap_or_default()
            ),
        }
    }
    if no_catalog && !r.dry_run {
        outln!("no catalog on this machine was updated; run `tidemark reindex` where one is");
    }
}
