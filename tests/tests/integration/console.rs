//! The web console in a real browser: headless Chromium driven over WebDriver (chromedriver
//! and fantoccini), against an API served over a socket next to a running listener on the mock
//! cluster, as an `App` serves it. Screenshots of each page are written to
//! `target/tmp/console-screenshots/`.
//!
//! Outside CI, a machine without Chromium and chromedriver skips with a printed reason; under
//! `CI` the test fails instead (`.ci/run` installs both).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::TestDb;
use crate::support::kafka::Cluster;
use checkpoint::api::{self, ApiState, Handlers, ListenerProbe};
use checkpoint::handler::BoxFuture;
use checkpoint::listener::{Listener, ListenerSpec};
use checkpoint::prelude::*;
use checkpoint::store::ListQuery;
use checkpoint::{Engine, Store};
use fantoccini::{Client, ClientBuilder, Locator};

const TOPIC: &str = "orders";
const GROUP: &str = "console";
const TOKEN: &str = "s3cret";
const XSS: &str = "<script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\">";

/// JSON orders `{"id", "kind"}`: `ok` acks; `flaky` fails the first time it is consumed and
/// acks on a retry; `poison` always fails. A payload that is not JSON acks as entity `xss`.
struct Orders {
    seen: Mutex<HashSet<String>>,
}

#[derive(serde::Deserialize)]
struct Order {
    id: String,
    kind: String,
}

impl Handler for Orders {
    fn name(&self) -> &str {
        "console-orders"
    }

    fn max_retries(&self) -> Option<u32> {
        Some(0)
    }

    fn consume<'a>(
        &'a self,
        message: &'a Message,
        _ctx: &'a mut Context<'_>,
    ) -> BoxFuture<'a, Result<Outcome, HandlerError>> {
        Box::pin(async move {
            let Ok(order) = serde_json::from_slice::<Order>(&message.payload) else {
                return Ok(Outcome::ack("xss", Utc::now()));
            };
            let first = self.seen.lock().expect("seen").insert(order.id.clone());
            match order.kind.as_str() {
                "flaky" if first => Err(HandlerError::msg("flaky downstream, try again")),
                "poison" => Err(HandlerError::msg("poison order refused")),
                _ => Ok(Outcome::ack(order.id, Utc::now())),
            }
        })
    }
}

/// chromedriver on a free port, killed when dropped, with a fresh profile directory.
struct Driver {
    process: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The first of `names` found on `PATH`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// chromedriver and Chromium, or why not.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let driver = on_path(&["chromedriver"]).ok_or("chromedriver is not on PATH")?;
    let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"])
        .ok_or("Chromium is not on PATH")?;
    Ok((driver, chromium))
}

impl Driver {
    async fn start(exe: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let process = Command::new(exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Self {
            process,
            port,
            profile: tempfile::tempdir().expect("profile dir"),
        };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not listen within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver
    }

    async fn client(&self, chromium: &std::path::Path) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", self.profile.path().display()),
                ]
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session")
    }
}

/// Where the screenshots go.
fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(shots().join(format!("{name}.png")), png).expect("write screenshot");
}

async fn text(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("text")
}

/// Polls `css`'s text until `done` holds; panics with the last text after 20 s.
async fn wait_for_text(client: &Client, css: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let seen = match client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if done(&seen) {
            return seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{css}: still {seen:?} after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fits_the_width(client: &Client) -> bool {
    client
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            vec![],
        )
        .await
        .expect("script")
        .as_bool()
        .unwrap_or(false)
}

/// Clicks the element `css` names.
async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Waits for the answer the failure page shows next to its buttons.
async fn answer(client: &Client) -> String {
    wait_for_text(client, "#answer", |t| {
        t.starts_with('2') || t.starts_with('4')
    })
    .await
}

async fn set_token(client: &Client, token: &str) {
    let input = client
        .find(Locator::Css("#token-input"))
        .await
        .expect("token input");
    input.send_keys(token).await.expect("type token");
    click(client, "#token-form button[type=submit]").await;
}

async fn failure_id(store: &Store, id: &str) -> i64 {
    store
        .list_failures(&ListQuery {
            entity_id: None,
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .expect("failures")
        .into_iter()
        .find(|f| String::from_utf8_lossy(&f.payload).contains(id))
        .unwrap_or_else(|| panic!("a failure for {id}"))
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser() {
    let (driver_exe, chromium) = match browser() {
        Ok(found) => found,
        Err(reason) if std::env::var_os("CI").is_some() => {
            panic!("CI needs a browser for the console tests: {reason}")
        }
        Err(reason) => {
            eprintln!(
                "skipping the browser tests: {reason} (install chromium and chromium-driver)"
            );
            return;
        }
    };
    let db = TestDb::sqlite().await;
    let cluster = Cluster::new(TOPIC, 2);
    let mut produced: Vec<(i32, String, Vec<u8>)> = (0..12)
        .map(|i| {
            (
                i % 2,
                format!("k-{i}"),
                format!(r#"{{"id":"order-{i}","kind":"ok"}}"#).into_bytes(),
            )
        })
        .collect();
    produced.push((
        0,
        "k-flaky".into(),
        br#"{"id":"flaky-1","kind":"flaky"}"#.to_vec(),
    ));
    produced.push((
        1,
        "k-poison".into(),
        br#"{"id":"poison-1","kind":"poison"}"#.to_vec(),
    ));
    produced.push((
        0,
        "k-doomed".into(),
        br#"{"id":"doomed-1","kind":"poison"}"#.to_vec(),
    ));
    produced.push((1, "k-xss".into(), XSS.as_bytes().to_vec()));
    cluster.produce(TOPIC, &produced).await;

    let handler: Arc<dyn Handler> = Arc::new(Orders {
        seen: Mutex::new(HashSet::new()),
    });
    let mut spec = ListenerSpec::new(Arc::clone(&handler), TOPIC, GROUP);
    spec.kafka = cluster.kafka();
    // A secret the consumers page must mask (librdkafka uses it only with TLS client keys).
    spec.kafka
        .insert("ssl.key.password".to_owned(), "hunter22".to_owned());
    let listener = Listener::new(spec, Engine::new(db.store.clone()));
    let probe = ListenerProbe::of(&listener);
    let listener_id = probe.listener_id.clone();
    let (stop_listener, listener_stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(listener.run(async {
        let _ = listener_stopped.await;
    }));
    let state = ApiState::new(Engine::new(db.store.clone()))
        .handlers(Handlers::new().register(TOPIC, GROUP, handler))
        .token(Some(TOKEN.to_owned()))
        .listeners([probe]);
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", socket.local_addr().expect("addr"));
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(api::serve(socket, api::router(state), async {
        let _ = api_stopped.await;
    }));
    let started = Instant::now();
    while db.event_count().await < 13 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the listener settled the workload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let driver = Driver::start(&driver_exe).await;
    let client = driver.client(&chromium).await;

    // The overview shows the listener, its counters, and the newest failures; it refreshes.
    client.goto(&format!("{base}/ui")).await.expect("overview");
    let card = wait_for_text(&client, "article.card", |t| {
        t.contains("joined") && t.contains("13")
    })
    .await;
    assert!(card.contains(&listener_id), "{card}");
    // Its partitions with their state, and a throughput chart once two samples exist.
    let partitions = wait_for_text(&client, "article.card table.partitions", |t| {
        t.matches("flowing").count() == 2
    })
    .await;
    assert!(partitions.contains("lag"), "{partitions}");
    wait_for_text(&client, "article.card figure.chart figcaption", |t| {
        t.contains("msg/s")
    })
    .await;
    let failures = text(&client, "#failures").await;
    assert!(failures.contains("poison order refused"), "{failures}");
    assert!(fits_the_width(&client).await);
    screenshot(&client, "overview").await;

    // Filtering events by entity_id narrows the table.
    client
        .goto(&format!("{base}/ui/events"))
        .await
        .expect("events");
    let rows = client
        .find_all(Locator::Css("#events tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 13);
    screenshot(&client, "events").await;
    client
        .find(Locator::Css("input[name=entity_id]"))
        .await
        .expect("entity_id filter")
        .send_keys("order-3")
        .await
        .expect("type");
    click(&client, "form.filters button[type=submit]").await;
    let table = wait_for_text(&client, "main", |t| {
        t.contains("order-3") && !t.contains("order-4")
    })
    .await;
    let rows = client
        .find_all(Locator::Css("#events tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1, "{table}");
    assert!(table.contains("order-3"), "{table}");

    // A payload with markup shows as text and runs nothing.
    let xss = db
        .store
        .list_events(&ListQuery {
            entity_id: Some("xss".into()),
            ..ListQuery::default()
        })
        .await
        .expect("events")
        .pop()
        .expect("the xss event");
    client
        .goto(&format!("{base}/ui/events/{}", xss.id))
        .await
        .expect("event");
    assert_eq!(text(&client, "pre.payload").await, XSS);
    // The checksum and time-range filters are on the form, and the checksum narrows to one.
    client
        .goto(&format!(
            "{base}/ui/events?checksum={}&created_from=",
            xss.checksum
        ))
        .await
        .expect("events by checksum");
    let rows = client
        .find_all(Locator::Css("#events tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1);
    assert!(
        client
            .find(Locator::Css(
                "input[name=created_from][type=datetime-local]"
            ))
            .await
            .is_ok()
    );
    client
        .goto(&format!("{base}/ui/events/{}", xss.id))
        .await
        .expect("event");
    let ran = client
        .execute("return typeof window.__xss;", vec![])
        .await
        .expect("script");
    assert_eq!(
        ran,
        serde_json::json!("undefined"),
        "the payload's script ran"
    );
    screenshot(&client, "event").await;

    // Open a failure: the buttons wait for the token; Retry then shows the API's answer.
    let flaky = failure_id(&db.store, "flaky-1").await;
    client
        .goto(&format!("{base}/ui/failures/{flaky}"))
        .await
        .expect("failure");
    let retry = client.find(Locator::Css("#retry")).await.expect("retry");
    assert!(!retry.is_enabled().await.expect("enabled?"), "no token yet");
    assert!(
        text(&client, "#token-status")
            .await
            .contains("need the API token")
    );
    screenshot(&client, "failure").await;
    set_token(&client, TOKEN).await;
    assert!(retry.is_enabled().await.expect("enabled?"));
    retry.click().await.expect("retry");
    assert_eq!(answer(&client).await, "200: acknowledged true");
    assert!(db.store.get_failure(flaky).await.expect("get").is_none());

    // A retry the handler fails again shows the 422 and its message.
    let poison = failure_id(&db.store, "poison-1").await;
    client
        .goto(&format!("{base}/ui/failures/{poison}"))
        .await
        .expect("failure");
    click(&client, "#retry").await;
    assert_eq!(answer(&client).await, "422: poison order refused");
    assert_eq!(text(&client, "#attempts").await, "1", "the page as loaded");

    // Delete with a wrong token is refused; with the right one the row goes.
    let doomed = failure_id(&db.store, "doomed-1").await;
    client
        .goto(&format!("{base}/ui/failures/{doomed}"))
        .await
        .expect("failure");
    click(&client, "#token-forget").await;
    set_token(&client, "wrong").await;
    click(&client, "#delete").await;
    client.accept_alert().await.expect("confirm");
    assert_eq!(
        answer(&client).await,
        "401: missing or invalid bearer token"
    );
    assert!(db.store.get_failure(doomed).await.expect("get").is_some());
    set_token(&client, TOKEN).await;
    click(&client, "#delete").await;
    client.accept_alert().await.expect("confirm");
    let started = Instant::now();
    while db.store.get_failure(doomed).await.expect("get").is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the failure was deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = wait_for_text(&client, "main", |t| t.contains("failure(s) match")).await;
    assert!(!list.contains("doomed-1"), "{list}");
    screenshot(&client, "failures").await;

    // Bulk: retry every failure the filters match, then delete them all, each confirmed.
    client
        .goto(&format!("{base}/ui/failures"))
        .await
        .expect("failures");
    click(&client, "#bulk-retry").await;
    client.accept_alert().await.expect("confirm");
    assert_eq!(answer(&client).await, "200: 1 of 1 taken: 1 failed again");
    click(&client, "#bulk-delete").await;
    client.accept_alert().await.expect("confirm");
    wait_for_text(&client, "main", |t| t.contains("0 failure(s) match")).await;
    let left = db.store.count_failures(&ListQuery::default()).await;
    assert_eq!(left.expect("count"), 0);

    // Consumers: the settings with secrets masked, and each partition's state.
    client
        .goto(&format!("{base}/ui/consumers"))
        .await
        .expect("consumers");
    let partitions = wait_for_text(&client, "table.partitions", |t| {
        t.matches("flowing").count() == 2
    })
    .await;
    assert!(partitions.contains("ago"), "{partitions}");
    click(&client, "details.settings summary").await;
    let settings = text(&client, "details.settings dl.fields").await;
    assert!(settings.contains("bootstrap.servers"), "{settings}");
    assert!(settings.contains("***"), "{settings}");
    assert!(!settings.contains("hunter22"), "{settings}");

    // Pause partition 0: it applies nothing more while partition 1 flows on.
    click(&client, "tr[data-partition='0'] button.action").await;
    client.accept_alert().await.expect("confirm");
    assert_eq!(answer(&client).await, "200: partition 0 paused");
    wait_for_text(&client, "tr[data-partition='0'] td.state", |t| {
        t == "paused by operator"
    })
    .await;
    let before = db.event_count().await;
    let late: Vec<(i32, String, Vec<u8>)> = (0..8)
        .map(|i| {
            let id = format!("late-{}-{i}", i % 2);
            let payload = format!(r#"{{"id":"{id}","kind":"ok"}}"#).into_bytes();
            (i % 2, id, payload)
        })
        .collect();
    cluster.produce(TOPIC, &late).await;
    let started = Instant::now();
    while db.event_count().await < before + 4 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "partition 1 went on"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        db.event_count().await,
        before + 4,
        "the paused partition moved"
    );
    screenshot(&client, "consumers").await;

    // Resume it from the keyboard: from the first link of the page, Tab to its button, Enter.
    let key = format!("{listener_id}#0");
    client
        .execute("document.querySelector('nav a').focus();", vec![])
        .await
        .expect("focus the first link");
    let mut presses = 0;
    loop {
        let focused = client
            .execute("return document.activeElement.dataset.key || '';", vec![])
            .await
            .expect("script");
        if focused == serde_json::json!(key) {
            break;
        }
        presses += 1;
        assert!(presses < 60, "Tab never reached the Resume button");
        // The live region is redrawn every 2 s: an element found just before may be gone,
        // and then the press is simply made again.
        if let Ok(focused) = client.active_element().await {
            let _ = focused.send_keys("\u{e004}").await;
        }
    }
    assert!(presses > 1, "the button was reached with the keyboard");
    // A redraw between finding the focused button and pressing Enter replaces it (the console
    // moves the focus to the new one). WebDriver refuses a stale element before it sends any
    // key, so the press did not happen, and is made again on the button now focused.
    let mut stale = 0;
    loop {
        let focused = client.active_element().await.expect("focus");
        let pressed = match focused.text().await {
            Ok(label) => {
                assert_eq!(label, "Resume");
                focused.send_keys("\u{e007}").await
            }
            Err(error) => Err(error),
        };
        match pressed {
            Ok(()) => break,
            Err(error) if error.is_stale_element_reference() && stale < 5 => stale += 1,
            Err(error) => panic!("Enter on the Resume button: {error}"),
        }
    }
    assert_eq!(answer(&client).await, "200: partition 0 resumed");
    let started = Instant::now();
    while db.event_count().await < before + 8 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "partition 0 went on after the resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Readable at phone width.
    client.set_window_size(390, 844).await.expect("resize");
    client.goto(&format!("{base}/ui")).await.expect("overview");
    assert!(
        fits_the_width(&client).await,
        "the overview scrolls sideways at 390 px"
    );
    screenshot(&client, "overview-phone").await;

    client.close().await.expect("close the session");
    drop(driver);
    let _ = stop_api.send(());
    serving.await.expect("api task").expect("api");
    let _ = stop_listener.send(());
    running.await.expect("listener task").expect("listener");
    db.cleanup().await;
}
