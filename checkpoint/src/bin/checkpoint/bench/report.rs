//! Ratios within one run, and the text table.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Fills in each row's ratios: to `naive` and both ceilings on the same database, to `raw`.
pub(super) fn with_ratios(mut rows: Vec<BenchRow>) -> Vec<BenchRow> {
    let rate = |rows: &[BenchRow], mode: Mode, database: &str| {
        rows.iter()
            .find(|r| r.mode == mode && (mode == Mode::Raw || r.database == database))
            .map(|r| r.messages_per_second)
    };
    let snapshot = rows.clone();
    for row in &mut rows {
        let ratio = |base: Option<f64>| base.map(|b| row.messages_per_second / b);
        row.vs_naive = ratio(rate(&snapshot, Mode::Naive, &row.database));
        row.vs_db_ceiling = ratio(rate(&snapshot, Mode::DbCeiling, &row.database));
        row.vs_copy_ceiling = ratio(rate(&snapshot, Mode::CopyCeiling, &row.database));
        row.vs_raw = ratio(rate(&snapshot, Mode::Raw, &row.database));
    }
    rows
}

/// The report as a text table with a header of settings.
pub(crate) fn render(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "checkpoint bench: {} messages (~200 B JSON, keyed, {} partitions), kafka: {}",
        report.messages, report.partitions, report.kafka
    );
    let memory = report
        .memory_bytes
        .map_or_else(|| "?".to_owned(), |b| format!("{:.1} GiB", gib(b)));
    let _ = writeln!(
        out,
        "machine: {} CPUs, {memory}; batch size {}; concurrency {}",
        report.cpus, report.batch_size, report.concurrency
    );
    let settings: Vec<String> = report
        .consumer_settings
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(out, "consumer: {}", settings.join(" "));
    for skipped in &report.skipped {
        let _ = writeln!(out, "skipped: {skipped}");
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<40} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8}",
        "mode",
        "database",
        "messages",
        "seconds",
        "msg/s",
        "x naive",
        "x ceil",
        "x copy",
        "x raw",
        "peak RSS",
        "proc CPU",
        "busy"
    );
    let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
    for row in &report.rows {
        let rss = row
            .peak_rss_bytes
            .map_or_else(|| "-".to_owned(), |b| format!("{:.0} MiB", mib(b)));
        let _ = writeln!(
            out,
            "{:<20} {:<40} {:>9} {:>8.2} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8}",
            row.mode.name(),
            truncate(&row.database, 40),
            row.messages,
            row.seconds,
            row.messages_per_second,
            ratio(row.vs_naive),
            ratio(row.vs_db_ceiling),
            ratio(row.vs_copy_ceiling),
            ratio(row.vs_raw),
            rss,
            ratio(row.process_cpus),
            row.machine_busy
                .map_or_else(|| "-".to_owned(), |b| format!("{:.0} %", b * 100.0))
        );
    }
    out
}

pub(super) fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0 * 1024.0)
}

pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub(super) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let tail: String = text
        .chars()
        .rev()
        .take(max - 1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}
