//! Ships the base migrations inside this package and lists them once.
//!
//! In the workspace, the root `migrations/` folder is the source (diesel users point their
//! `diesel.toml` at it); this script mirrors it into the package's own `migrations/`, which
//! `cargo package` ships. A packaged build has no root folder and uses the shipped copy. Either
//! way the script writes `base_migrations.rs` into `OUT_DIR`: one entry per backend and
//! migration folder, oldest first, read by `embed_migrations!` and `store::BASE_MIGRATIONS`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const BACKENDS: [(&str, &str); 3] = [
    ("sqlite", "Sqlite"),
    ("postgres", "Postgres"),
    ("mysql", "Mysql"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let source = manifest.join("../migrations");
    let shipped = manifest.join("migrations");
    if source.is_dir() {
        println!("cargo::rerun-if-changed=../migrations");
        mirror(&source, &shipped)?;
    } else {
        println!("cargo::rerun-if-changed=migrations");
    }
    let mut list = String::from("&[\n");
    for (dir, backend) in BACKENDS {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(shipped.join(dir))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        for name in names {
            let file = |f: &str| {
                format!("concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/migrations/{dir}/{name}/{f}\")")
            };
            writeln!(
                list,
                "    BaseMigration {{ backend: Backend::{backend}, name: {name:?}, \
                 up: include_str!({}), down: include_str!({}) }},",
                file("up.sql"),
                file("down.sql"),
            )?;
        }
    }
    list.push_str("]\n");
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("base_migrations.rs");
    std::fs::write(out, list)?;
    Ok(())
}

/// Makes `to` a copy of `from`: files written only when they differ, extra entries removed.
fn mirror(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let mut wanted = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        wanted.insert(entry.file_name());
        if entry.file_type()?.is_dir() {
            mirror(&entry.path(), &target)?;
        } else {
            let content = std::fs::read(entry.path())?;
            if std::fs::read(&target).ok().as_deref() != Some(content.as_slice()) {
                std::fs::write(&target, content)?;
            }
        }
    }
    for entry in std::fs::read_dir(to)? {
        let entry = entry?;
        if !wanted.contains(&entry.file_name()) {
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}
