//! `rooms`: fan-out in R rooms at once (R × N readers, one writer per room), to see what many
//! small rooms cost next to one big one. The measuring is `fanout`'s; this file owns the flags.

use crate::fanout::{self, Shape};
use crate::harness::Harness;
use crate::report::Run;

/// The flags of `rooms`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Readers per room.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Changes per second per room.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

pub async fn run(h: &mut Harness, a: Args) -> anyhow::Result<Run> {
    let shape = Shape { rooms: a.rooms, clients: a.clients, rate: a.rate, payload: a.payload };
    fanout::measure(h, "rooms", &shape).await
}
