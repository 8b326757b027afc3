//! The `checkpoint` binary as a user runs it: exit codes, one-line errors, the demo.

use std::process::{Command, Output};

fn checkpoint(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_checkpoint"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .output()
        .expect("run checkpoint")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = checkpoint(&["version"], dir.path());
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("checkpoint {}", env!("CARGO_PKG_VERSION"))
    );
    for command in ["demo", "migrate", "rollback", "status", "version"] {
        let out = checkpoint(&[command, "--help"], dir.path());
        assert!(out.status.success(), "{command} --help");
        assert!(
            text(&out.stdout).contains("Usage: checkpoint"),
            "{command} --help"
        );
    }
}

#[test]
fn migrate_status_rollback_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = ["--database", "sqlite://cp.db"];
    let out = checkpoint(&[&["migrate"][..], &db].concat(), dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("applied  "),
        "{}",
        text(&out.stdout)
    );
    let out = checkpoint(&[&["migrate"][..], &db].concat(), dir.path());
    assert_eq!(text(&out.stdout).trim(), "up to date");
    let out = checkpoint(&[&["status"][..], &db].concat(), dir.path());
    assert!(
        text(&out.stdout).starts_with("applied  "),
        "{}",
        text(&out.stdout)
    );
    let out = checkpoint(&[&["rollback"][..], &db].concat(), dir.path());
    assert!(
        text(&out.stdout).starts_with("reverted "),
        "{}",
        text(&out.stdout)
    );
    let out = checkpoint(&[&["status"][..], &db].concat(), dir.path());
    assert!(
        text(&out.stdout).starts_with("pending  "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn errors_are_one_line_and_exit_non_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: [(&[&str], &str); 3] = [
        (
            &["migrate", "--database", "oracle://db"],
            "error: invalid database URL `oracle://db`",
        ),
        (
            &["migrate"],
            "error: no database: pass --database URL, create checkpoint.toml, or set DATABASE_URL",
        ),
        (
            &["migrate", "--database", "postgres://root@127.0.0.1:1/test"],
            "error: postgres database unavailable",
        ),
    ];
    for (args, expected) in cases {
        let out = checkpoint(args, dir.path());
        assert!(!out.status.success(), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    }
    std::fs::write(dir.path().join("checkpoint.toml"), "[database]\nurl = 3\n").expect("write");
    let out = checkpoint(&["status"], dir.path());
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: checkpoint.toml: database.url: expected a string, found integer `3` (line 2)"
        ),
        "{stderr}"
    );
}

#[test]
fn the_demo_runs_once_and_adds_fresh_events_on_every_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = [
        "demo",
        "--once",
        "--messages",
        "400",
        "--database",
        "sqlite://demo.db",
    ];
    let first = checkpoint(&args, dir.path());
    assert!(first.status.success(), "{}", text(&first.stderr));
    let stdout = text(&first.stdout);
    // The figure right after a summary label.
    let line = |name: &str, out: &str| -> String {
        out.lines()
            .find_map(|l| l.trim_start().strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_owned()
    };
    // 400 messages: 4 not JSON, 16 byte-identical repeats, 1 order without a customer. One
    // repeat is of that failing order: not a stored event, so it is consumed, fails again and
    // updates the same failure row. 379 + 15 + 6 = 400.
    assert_eq!(line("consumed", &stdout), "400", "{stdout}");
    assert_eq!(line("acknowledged", &stdout), "379", "{stdout}");
    assert_eq!(line("duplicates skipped", &stdout), "15", "{stdout}");
    assert_eq!(line("failures recorded", &stdout), "6", "{stdout}");
    assert!(
        stdout.contains("database now holds  379 events and 5 failures"),
        "{stdout}"
    );
    let second = checkpoint(&args, dir.path());
    assert!(second.status.success(), "{}", text(&second.stderr));
    let stdout = text(&second.stdout);
    assert_eq!(line("acknowledged", &stdout), "379", "{stdout}");
    // Fresh ids: the events add up, and so does the order without a customer; the 4 poison
    // payloads are byte-identical to the first run's and update their failure rows.
    assert!(
        stdout.contains("database now holds  758 events and 6 failures"),
        "{stdout}"
    );
}
