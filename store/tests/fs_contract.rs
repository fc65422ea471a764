//! The `Storage` contract suite against `FsStorage`, plus filesystem-only guarantees.

mod contract;

use std::sync::Arc;

use tidemark_store::storage::FsStorage;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fs_storage_meets_the_storage_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract::run_all(Arc::new(FsStorage::open(dir.path()).unwrap())).await;
    // Nothing escaped the root despite the hostile keys.
    let parent_entries: Vec<_> = std::fs::read_dir(dir.path().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy() == "escape")
        .collect();
    assert!(parent_entries.is_empty());
}
