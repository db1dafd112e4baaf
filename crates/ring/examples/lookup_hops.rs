//! Lookup path lengths and lookup failures after massive node failure, measured in
//! the deterministic simulation (the figures of the Chord paper, §V-B and §V-D).
//!
//! Run: `cargo run -p cm-ring --release --features sim --example lookup_hops`
//! (`RING_SIM_SEED` changes the seed). Prints a Markdown table for BENCHMARKS.md.

use cm_ring::RingConfig;
use cm_ring::sim::Sim;

const RING_SIZES: [usize; 4] = [16, 64, 256, 1024];
const LOOKUPS_PER_MEASURE: usize = 10_000;
const STABILIZATION_ROUNDS_MAX: u32 = 200;

struct Measure {
    hops_mean: f64,
    hops_p99: u32,
    timeouts_mean: f64,
    failed_fraction: f64,
}

/// `LOOKUPS_PER_MEASURE` lookups of random keys from random live nodes; a lookup
/// fails when it errs or names a node other than the key's true live successor.
fn measure(sim: &mut Sim) -> Measure {
    let live = sim.live_slots();
    let mut hops: Vec<u32> = Vec::with_capacity(LOOKUPS_PER_MEASURE);
    let mut n_timeouts: u64 = 0;
    let mut n_failed = 0usize;
    for _ in 0..LOOKUPS_PER_MEASURE {
        let from = live[sim.rng.index(live.len())];
        let key = sim.rng.next_u64() & sim.node(from).space().id_max();
        let expected = sim.true_owner(key).expect("live nodes");
        match sim.lookup(from, key) {
            Ok(found) if found.owner == expected => {
                hops.push(found.hops);
                n_timeouts += u64::from(found.timeouts);
            }
            _ => n_failed += 1,
        }
    }
    hops.sort_unstable();
    let hops_mean = hops.iter().map(|&h| f64::from(h)).sum::<f64>() / hops.len().max(1) as f64;
    let hops_p99 = hops.get(hops.len() * 99 / 100).copied().unwrap_or(0);
    Measure {
        hops_mean,
        hops_p99,
        timeouts_mean: n_timeouts as f64 / hops.len().max(1) as f64,
        failed_fraction: n_failed as f64 / LOOKUPS_PER_MEASURE as f64,
    }
}

fn main() {
    let seed: u64 = std::env::var("RING_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2001);
    println!(
        "seed {seed}, bits 64, {LOOKUPS_PER_MEASURE} lookups of random keys from random nodes per cell\n"
    );
    println!(
        "| N | s = 2·log2 N | ½·log2 N | hops mean | hops p99 | failed after 50% crash | timeouts/lookup | rounds to correct ring | failed after stabilization | hops mean after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for n_nodes in RING_SIZES {
        let log2_n = (n_nodes as f64).log2();
        let successor_list_len = (2.0 * log2_n).ceil() as usize;
        let ring = RingConfig {
            bits: 64,
            successor_list_len,
            replicas: 3,
        };
        let mut sim = Sim::with_correct_ring(ring, n_nodes, seed ^ n_nodes as u64, false);
        let stable = measure(&mut sim);
        assert_eq!(
            stable.failed_fraction, 0.0,
            "a correct ring answers every lookup"
        );

        // Half of the nodes fail at once; nobody has noticed yet.
        let mut victims = sim.live_slots();
        sim.rng.shuffle(&mut victims);
        for &victim in &victims[..n_nodes / 2] {
            sim.crash(victim);
        }
        let after_failure = measure(&mut sim);

        let rounds = match sim.converge(STABILIZATION_ROUNDS_MAX) {
            Ok(rounds) => rounds.to_string(),
            Err(error) => format!("> {STABILIZATION_ROUNDS_MAX} ({error})"),
        };
        let after_stabilization = measure(&mut sim);
        println!(
            "| {n_nodes} | {successor_list_len} | {:.1} | {:.2} | {} | {:.2} % | {:.2} | {rounds} | {:.2} % | {:.2} |",
            log2_n / 2.0,
            stable.hops_mean,
            stable.hops_p99,
            after_failure.failed_fraction * 100.0,
            after_failure.timeouts_mean,
            after_stabilization.failed_fraction * 100.0,
            after_stabilization.hops_mean,
        );
    }
}
