//! Hybrid logical clocks: versions that follow wall time but never run backwards.

use std::sync::Mutex;

/// The version of a last-writer-wins value: a hybrid logical clock reading plus the
/// id of the node that wrote it, so that two writes never share a version.
///
/// Field order is significant: the derived `Ord` compares wall time, then the
/// logical counter, then the node id.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Version {
    pub wall_ms: u64,
    pub counter: u32,
    pub node: u64,
}

/// Issues strictly increasing [`Version`]s on one node.
///
/// A std `Mutex` because the critical section is a few integer operations and is
/// never held across an `.await`.
#[derive(Debug)]
pub struct HybridClock {
    node: u64,
    last: Mutex<(u64, u32)>,
}

impl HybridClock {
    pub fn new(node: u64) -> HybridClock {
        HybridClock {
            node,
            last: Mutex::new((0, 0)),
        }
    }

    /// A version greater than every version this clock issued or observed, as long
    /// as one exists: at the very top of the range (a forged version near `u64::MAX`
    /// observed) the clock saturates and repeats its last reading instead of
    /// overflowing. Replicas refuse such versions on arrival, so that needs a
    /// corrupt store.
    pub fn tick(&self, wall_ms: u64) -> Version {
        let mut last = self.last.lock().expect("clock mutex poisoned");
        let (last_ms, last_counter) = *last;
        let next = if wall_ms > last_ms {
            (wall_ms, 0)
        } else if let Some(counter) = last_counter.checked_add(1) {
            (last_ms, counter)
        } else if let Some(ms) = last_ms.checked_add(1) {
            (ms, 0)
        } else {
            (last_ms, last_counter)
        };
        *last = next;
        Version {
            wall_ms: next.0,
            counter: next.1,
            node: self.node,
        }
    }

    /// Moves the clock past a version seen from another node.
    pub fn observe(&self, seen: Version) {
        let mut last = self.last.lock().expect("clock mutex poisoned");
        if (seen.wall_ms, seen.counter) > *last {
            *last = (seen.wall_ms, seen.counter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_even_when_wall_time_stalls_or_goes_back() {
        let clock = HybridClock::new(7);
        let first = clock.tick(1000);
        let second = clock.tick(1000);
        let third = clock.tick(900);
        assert!(first < second && second < third);
        clock.observe(Version {
            wall_ms: 5000,
            counter: 3,
            node: 1,
        });
        let fourth = clock.tick(1000);
        assert_eq!((fourth.wall_ms, fourth.counter, fourth.node), (5000, 4, 7));
    }

    #[test]
    fn the_clock_saturates_at_the_top_instead_of_overflowing() {
        let clock = HybridClock::new(7);
        clock.observe(Version {
            wall_ms: 5000,
            counter: u32::MAX,
            node: 1,
        });
        let carried = clock.tick(1000);
        assert_eq!((carried.wall_ms, carried.counter), (5001, 0));
        clock.observe(Version {
            wall_ms: u64::MAX,
            counter: u32::MAX,
            node: 1,
        });
        let top = clock.tick(1000);
        assert_eq!((top.wall_ms, top.counter), (u64::MAX, u32::MAX));
        assert_eq!(clock.tick(u64::MAX), top);
    }
}
