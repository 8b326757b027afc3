//! The file-writing commands: `init`, `copy-migrations` and
//! `migration`. Each reports what it did per file (`create`, `exists`, `identical`,
//! `overwrite`) and never overwrites a changed file unless forced.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{NaiveDateTime, Timelike as _, Utc};

use checkpoint::error::Backend;
use checkpoint::store::{BASE_MIGRATIONS, DatabaseUrl};

/// What happened to one file or folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// It did not exist and was written.
    Create,
    /// It exists with other content and was left alone.
    Exists,
    /// It exists with the same content.
    Identical,
    /// It existed with other content and was replaced (`--force`).
    Overwrite,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Create => "create",
            Self::Exists => "exists",
            Self::Identical => "identical",
            Self::Overwrite => "overwrite",
        })
    }
}

/// A line of a command's report: the action and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    /// What happened.
    pub action: Action,
    /// To which path.
    pub path: PathBuf,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>10}  {}",
            self.action.to_string(),
            self.path.display()
        )
    }
}

/// An error of a file-writing command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CliError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database URL is invalid.
    #[error(transparent)]
    Url(#[from] checkpoint::store::StoreError),
    /// A migration name has no letters or digits.
    #[error("migration name `{0}` has no letters or digits")]
    EmptyName(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `content` to `path` unless a different file is there (replaced only with `force`).
pub(crate) fn write_file(path: &Path, content: &str, force: bool) -> Result<Report, CliError> {
    let action = match std::fs::read(path) {
        Ok(existing) if existing == content.as_bytes() => Action::Identical,
        Ok(_) if !force => Action::Exists,
        Ok(_) => Action::Overwrite,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Action::Create,
        Err(e) => return Err(io(path)(e)),
    };
    if matches!(action, Action::Create | Action::Overwrite) {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(path, content).map_err(io(path))?;
    }
    Ok(Report {
        action,
        path: path.to_owned(),
    })
}

/// `checkpoint init`: `checkpoint.toml`, `.env.example` and the migrations folder of the
/// backend of `database` (default SQLite) in `dir`.
pub(crate) fn init(
    dir: &Path,
    database: Option<&str>,
    force: bool,
) -> Result<Vec<Report>, CliError> {
    let url = database.unwrap_or("sqlite://checkpoint.db");
    let backend = DatabaseUrl::parse(url)?.backend();
    let config = checkpoint::config::example().replace(
        "\"${DATABASE_URL:-sqlite://checkpoint.db}\"",
        &format!("\"${{DATABASE_URL:-{url}}}\""),
    );
    let env = format!(
        "# Copy to .env and adjust; checkpoint.toml reads these with ${{VAR:-default}}.\n\
         DATABASE_URL={url}\nKAFKA_BROKERS=127.0.0.1:9092\nCHECKPOINT_API_TOKEN=\n"
    );
    let mut reports = vec![
        write_file(&dir.join(checkpoint::config::DEFAULT_PATH), &config, force)?,
        write_file(&dir.join(".env.example"), &env, force)?,
    ];
    reports.extend(copy_migrations(&dir.join("migrations"), backend, force)?);
    Ok(reports)
}

/// `checkpoint copy-migrations`: the base migrations of `backend` into `dir`, one folder each.
pub(crate) fn copy_migrations(
    dir: &Path,
    backend: Backend,
    force: bool,
) -> Result<Vec<Report>, CliError> {
    let mut reports = Vec::new();
    for migration in BASE_MIGRATIONS.iter().filter(|m| m.backend == backend) {
        let folder = dir.join(migration.name);
        let up = write_file(&folder.join("up.sql"), migration.up, force)?;
        let down = write_file(&folder.join("down.sql"), migration.down, force)?;
        // One line per migration: the "worst" of its two files.
        let action = [up.action, down.action]
            .into_iter()
            .max_by_key(|a| match a {
                Action::Identical => 0,
                Action::Create => 1,
                Action::Overwrite => 2,
                Action::Exists => 3,
            })
            .unwrap_or(Action::Identical);
        reports.push(Report {
            action,
            path: folder,
        });
    }
    Ok(reports)
}

/// Lowercase snake_case of `name`: `add-new-column-` → `add_new_column`.
pub(crate) fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_owned()
}

const VERSION_FORMAT: &str = "%Y-%m-%d-%H%M%S";

/// `checkpoint migration NAME`: an empty `up.sql`/`down.sql` pair in
/// `dir/<timestamp>_<snake_name>/`. The timestamp is later than every migration already in
/// `dir`, even when several are created within one second.
pub(crate) fn new_migration(dir: &Path, name: &str) -> Result<Report, CliError> {
    new_migration_at(dir, name, Utc::now().naive_utc())
}

fn new_migration_at(dir: &Path, name: &str, now: NaiveDateTime) -> Result<Report, CliError> {
    let snake = snake_case(name);
    if snake.is_empty() {
        return Err(CliError::EmptyName(name.to_owned()));
    }
    let latest = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                NaiveDateTime::parse_from_str(name.get(..17)?, VERSION_FORMAT).ok()
            })
            .max(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(dir)(e)),
    };
    let now = now.with_nanosecond(0).unwrap_or(now);
    let version = match latest {
        Some(latest) if latest >= now => latest + chrono::Duration::seconds(1),
        _ => now,
    };
    let folder = dir.join(format!("{}_{snake}", version.format(VERSION_FORMAT)));
    write_file(
        &folder.join("up.sql"),
        &format!("-- {name}: your SQL here\n"),
        false,
    )?;
    write_file(
        &folder.join("down.sql"),
        &format!("-- revert {name}\n"),
        false,
    )?;
    Ok(Report {
        action: Action::Create,
        path: folder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_snake_case() {
        assert_eq!(snake_case("add-new-column-"), "add_new_column");
        assert_eq!(snake_case("  Add New  Column!! "), "add_new_column");
        assert_eq!(snake_case("---"), "");
    }

    #[test]
    fn versions_strictly_increase_within_one_second() {
        let dir = tempfile::tempdir().expect("temp dir");
        let now = NaiveDateTime::parse_from_str("2026-11-27-101500", VERSION_FORMAT).expect("time");
        let a = new_migration_at(dir.path(), "first", now).expect("first");
        let b = new_migration_at(dir.path(), "second", now).expect("second");
        let c = new_migration_at(dir.path(), "add-new-column-", now).expect("third");
        let name = |r: &Report| {
            r.path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        };
        assert_eq!(name(&a), "2026-11-27-101500_first");
        assert_eq!(name(&b), "2026-11-27-101501_second");
        assert_eq!(name(&c), "2026-11-27-101502_add_new_column");
        assert!(matches!(
            new_migration_at(dir.path(), "!!", now),
            Err(CliError::EmptyName(_))
        ));
    }
}
