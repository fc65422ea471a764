//! The local SQLite catalog: a derived index of the repository (DESIGN §4).
