//! Placeholder until the ring engineer writes the experiment.
fn main() {}
