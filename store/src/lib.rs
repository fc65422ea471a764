//! tidemark-store: the repository (layout, storage backends, envelope, identity) and the
//! local SQLite catalog. Architecture invariant: knows nothing of replication.

pub mod catalog;
