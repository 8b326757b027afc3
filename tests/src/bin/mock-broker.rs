//! A librdkafka mock cluster in its own process, so a test can SIGKILL a consumer while the
//! broker lives on. Usage: `mock-broker TOPIC PARTITIONS`; prints the bootstrap servers on one
//! line, then serves until its standard input closes.

use std::io::{BufRead, Write};

use rdkafka::mocking::MockCluster;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let topic = args.next().ok_or("usage: mock-broker TOPIC PARTITIONS")?;
    let partitions: i32 = args
        .next()
        .ok_or("usage: mock-broker TOPIC PARTITIONS")?
        .parse()?;
    let cluster = MockCluster::new(1)?;
    cluster.create_topic(&topic, partitions, 1)?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", cluster.bootstrap_servers())?;
    stdout.flush()?;
    // Serve until the test closes our stdin (or kills us).
    for line in std::io::stdin().lock().lines() {
        line?;
    }
    drop(cluster);
    Ok(())
}
