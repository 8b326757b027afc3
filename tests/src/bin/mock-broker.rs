//! A librdkafka mock cluster in its own process, so a test can SIGKILL a consumer while the
//! broker lives on. Usage: `mock-broker TOPIC PARTITIONS`; prints the bootstrap servers on one
//! line, then serves until its standard input closes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let topic = args.next().ok_or("usage: mock-broker TOPIC PARTITIONS")?;
    let partitions: i32 = args
        .next()
        .ok_or("usage: mock-broker TOPIC PARTITIONS")?
        .parse()?;
    checkpoint::testing::serve_broker(&topic, partitions)?;
    Ok(())
}
