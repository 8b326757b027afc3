//! The console's listener views: the overview's cards (throughput chart, counters, partitions)
//! and the Consumers page, whose Pause and Resume buttons call the JSON routes.

use maud::{Markup, html};

use super::super::ApiState;
use super::super::bodies::ListenerBody;
use super::pages::{encode, layout};
use crate::listener::{PartitionSnapshot, ThroughputSample};

/// The listeners as `/v1/listeners` serves them.
pub(super) fn listeners(state: &ApiState) -> Vec<ListenerBody> {
    state.listeners.iter().map(ListenerBody::from).collect()
}

/// One card per listener, for the overview.
pub(super) fn cards(listeners: &[ListenerBody]) -> Markup {
    html! {
        div.cards {
            @for listener in listeners {
                @let stats = &listener.counters;
                article.card data-listener=(listener.listener_id) {
                    h3 { (listener.listener_id) }
                    p.state {
                        @if listener.joined { span.ok { "joined" } } @else { span.bad { "not joined" } }
                        " · " (stats.assigned_partitions) " partition(s) assigned"
                    }
                    (throughput_chart(&listener.throughput))
                    dl.counters {
                        dt { "received" } dd { (stats.received) }
                        dt { "acknowledged" } dd { (stats.acknowledged) }
                        dt { "duplicates" } dd { (stats.duplicates) }
                        dt { "skipped" } dd { (stats.skipped) }
                        dt { "failures" } dd { (stats.failed) }
                        dt { "retries" } dd { (stats.retries) }
                        dt { "queued bytes" } dd { (stats.queued_bytes) }
                    }
                    @if let Some(error) = &listener.kafka_error {
                        p.bad { "Kafka: " (error) }
                    }
                    (partition_table(listener, false))
                }
            }
        }
    }
}

/// Settled messages per second between consecutive samples, as a small line chart; the
/// numbers are in its label for those who do not see it.
fn throughput_chart(samples: &[ThroughputSample]) -> Markup {
    const WIDTH: f64 = 240.0;
    const HEIGHT: f64 = 40.0;
    let rates: Vec<f64> = samples
        .windows(2)
        .map(|pair| {
            let seconds = (pair[1].at - pair[0].at).num_milliseconds() as f64 / 1_000.0;
            let settled = pair[1].settled.saturating_sub(pair[0].settled) as f64;
            if seconds > 0.0 {
                settled / seconds
            } else {
                0.0
            }
        })
        .collect();
    let Some(&last) = rates.last() else {
        return html! { p.chart-empty { "Throughput appears after ten seconds." } };
    };
    let peak = rates.iter().copied().fold(0.0_f64, f64::max);
    let minutes = (rates.len() * 5).div_ceil(60);
    // One rate is a level: drawn across the whole width.
    let drawn = if rates.len() == 1 {
        vec![last, last]
    } else {
        rates
    };
    let step = WIDTH / (drawn.len() - 1) as f64;
    let points: Vec<String> = drawn
        .iter()
        .enumerate()
        .map(|(i, rate)| {
            let y = if peak > 0.0 {
                HEIGHT - rate / peak * HEIGHT
            } else {
                HEIGHT
            };
            format!("{:.1},{:.1}", i as f64 * step, y)
        })
        .collect();
    let label =
        format!("settled per second over the last {minutes} min: now {last:.1}, peak {peak:.1}");
    html! {
        figure.chart {
            svg viewBox={"0 0 " (WIDTH) " " (HEIGHT)} preserveAspectRatio="none" role="img" aria-label=(label) {
                polyline points=(points.join(" ")) {}
            }
            figcaption { (format!("{last:.1}")) " msg/s now · peak " (format!("{peak:.1}")) " · last " (minutes) " min" }
        }
    }
}

/// How long ago `at` was, roughly.
fn ago(at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let Some(at) = at else {
        return "never".to_owned();
    };
    let seconds = (chrono::Utc::now() - at).num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds} s ago"),
        60..3600 => format!("{} min ago", seconds / 60),
        _ => format!("{} h ago", seconds / 3600),
    }
}

fn partition_state(p: &PartitionSnapshot) -> Markup {
    html! {
        @if p.paused_by_operator {
            span.bad { "paused by operator" }
        } @else if p.backing_off {
            span.bad { "backing off" }
        } @else if p.paused {
            span { "paused (backpressure)" }
        } @else {
            span.ok { "flowing" }
        }
    }
}

/// A listener's partitions; with `controls`, a Pause or Resume button on each.
fn partition_table(listener: &ListenerBody, controls: bool) -> Markup {
    let id = encode(&listener.listener_id);
    html! {
        @if listener.partitions.is_empty() {
            p { "No partition assigned." }
        } @else {
            table.partitions data-listener=(listener.listener_id) {
                thead { tr { th { "partition" } th { "lag" } th { "queued" } th { "state" } th { "last settled" } @if controls { th { "" } } } }
                tbody {
                    @for p in &listener.partitions {
                        tr data-partition=(p.partition) {
                            td { (p.partition) }
                            td.lag { @match p.lag { Some(lag) => { (lag) } None => { "—" } } }
                            td { (p.queued_messages) }
                            td.state { (partition_state(p)) }
                            td { (ago(p.last_settled)) }
                            @if controls {
                                @let key = format!("{}#{}", listener.listener_id, p.partition);
                                td {
                                    @if p.paused_by_operator {
                                        button.action type="button" data-key=(key) data-method="POST" data-url={"/v1/listeners/" (id) "/partitions/" (p.partition) "/resume"} disabled { "Resume" }
                                    } @else {
                                        button.action type="button" data-key=(key) data-method="POST" data-url={"/v1/listeners/" (id) "/partitions/" (p.partition) "/pause"} data-confirm={"Pause partition " (p.partition) "? It fetches nothing more until resumed."} disabled { "Pause" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `/ui/consumers`: the live partitions of each listener, then its settings (outside the
/// refreshed region, so an opened panel stays open).
pub(super) fn consumers(state: &ApiState, listeners: &[ListenerBody]) -> Markup {
    layout(
        state,
        "Consumers",
        "Consumers",
        html! {
            @if listeners.is_empty() {
                p.note #standalone {
                    "No listener runs in this process (the standalone API, `checkpoint api`): \
                     there is nothing to pause or resume here."
                }
            } @else {
                p #answer role="status" aria-live="polite" {}
                div #live data-refresh="/ui/consumers/live" { (consumers_live(listeners)) }
                section aria-labelledby="settings-title" {
                    h2 #settings-title { "Settings" }
                    @for listener in listeners {
                        (settings(listener))
                    }
                }
            }
        },
    )
}

/// The consumers page's refreshed part: each listener's state and partitions, and the
/// partitions it holds paused while another instance owns them.
pub(super) fn consumers_live(listeners: &[ListenerBody]) -> Markup {
    html! {
        @for listener in listeners {
            section.consumer data-listener=(listener.listener_id) {
                h2 { (listener.listener_id) }
                p.state {
                    @if listener.joined { span.ok { "joined" } } @else { span.bad { "not joined" } }
                    " · " (listener.counters.assigned_partitions) " partition(s) assigned"
                }
                (partition_table(listener, true))
                @let elsewhere: Vec<i32> = listener
                    .paused_partitions
                    .iter()
                    .copied()
                    .filter(|p| !listener.partitions.iter().any(|s| s.partition == *p))
                    .collect();
                @if !elsewhere.is_empty() {
                    @let id = encode(&listener.listener_id);
                    div.elsewhere {
                        p { "Paused here, not assigned to this instance now (they stay paused if they come back):" }
                        @for p in &elsewhere {
                            @let key = format!("{}#{}", listener.listener_id, p);
                            button.action type="button" data-key=(key) data-method="POST" data-url={"/v1/listeners/" (id) "/partitions/" (p) "/resume"} disabled { "Resume " (p) }
                        }
                    }
                }
            }
        }
    }
}

/// A listener's settings, secrets masked, in a panel.
fn settings(listener: &ListenerBody) -> Markup {
    html! {
        @if let Some(settings) = &listener.settings {
            details.settings data-listener=(listener.listener_id) {
                summary { (listener.listener_id) }
                dl.fields {
                    dt { "handler" } dd { (settings.handler) }
                    dt { "topic" } dd { (settings.topic) }
                    dt { "group_id" } dd { (settings.group_id) }
                    dt { "max_concurrency" } dd { (settings.max_concurrency) }
                    dt { "batch_size" } dd { (settings.batch_size) }
                    dt { "start_from_beginning" } dd { (settings.start_from_beginning) }
                    dt { "default_max_retries" } dd { @match settings.default_max_retries { Some(n) => { (n) } None => { "forever" } } }
                    dt { "handler_timeout" } dd { @match settings.handler_timeout_ms { Some(ms) => { (ms) " ms" } None => { "none" } } }
                    dt { "max_queued_bytes" } dd { (settings.max_queued_bytes) }
                    dt { "shutdown_timeout" } dd { (settings.shutdown_timeout_ms) " ms" }
                    dt { "revoke_timeout" } dd { (settings.revoke_timeout_ms) " ms" }
                    @for (key, value) in &settings.kafka {
                        dt { (key) } dd.kafka { (value) }
                    }
                }
            }
        }
    }
}
