//! Lists the base migrations once, for `embed_migrations!` and `store::BASE_MIGRATIONS`.
//!
//! The root `migrations/` folder is the source (diesel users point their `diesel.toml` at
//! it). In the workspace this package's `migrations` is a symlink to it, which `cargo package`
//! follows, so the published crate ships the same files. The script writes
//! `base_migrations.rs` into `OUT_DIR`: one entry per backend and migration folder, oldest
//! first.

use std::fmt::Write as _;
use std::path::PathBuf;

const BACKENDS: [(&str, &str); 3] = [
    ("sqlite", "Sqlite"),
    ("postgres", "Postgres"),
    ("mysql", "Mysql"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let shipped = manifest.join("migrations");
    println!("cargo::rerun-if-changed=migrations");
    if manifest.join("../migrations").is_dir() {
        // Through the symlink's target too, in case the directory scan does not follow it.
        println!("cargo::rerun-if-changed=../migrations");
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
