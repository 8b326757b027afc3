//! The base migrations of the checkpoint tables, per backend: embedded for
//! [`Store::migrate`](super::Store::migrate), and as text for tools that copy them into an
//! application's own diesel migrations folder. `build.rs` lists the folder once for both.

use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use crate::error::Backend;

pub(super) const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
pub(super) const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
pub(super) const MYSQL: EmbeddedMigrations = embed_migrations!("migrations/mysql");

/// One base migration of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseMigration {
    /// Backend it is written for.
    pub backend: Backend,
    /// Folder name, e.g. `2026-11-27-000001_create_checkpoint_tables`.
    pub name: &'static str,
    /// `up.sql`.
    pub up: &'static str,
    /// `down.sql`.
    pub down: &'static str,
}

/// The base migrations, per backend, oldest first: the same files [`Store::migrate`]
/// applies.
///
/// [`Store::migrate`]: super::Store::migrate
pub const BASE_MIGRATIONS: &[BaseMigration] =
    include!(concat!(env!("OUT_DIR"), "/base_migrations.rs"));

#[cfg(test)]
mod tests {
    use diesel::migration::MigrationSource;

    use super::*;

    /// The text list and the embedded migrations name the same folders, in the same order.
    #[test]
    fn text_and_embedded_migrations_agree() {
        for (backend, embedded) in [
            (Backend::Sqlite, SQLITE),
            (Backend::Postgres, POSTGRES),
            (Backend::Mysql, MYSQL),
        ] {
            let embedded: Vec<String> = MigrationSource::<diesel::pg::Pg>::migrations(&embedded)
                .expect("embedded")
                .iter()
                .map(|m| m.name().to_string())
                .collect();
            let listed: Vec<String> = BASE_MIGRATIONS
                .iter()
                .filter(|m| m.backend == backend)
                .map(|m| m.name.to_owned())
                .collect();
            assert!(!listed.is_empty(), "{backend:?}");
            assert_eq!(listed, embedded, "{backend:?}");
        }
    }
}
