//! Arithmetic on the identifier circle `[0, 2^bits)`.
//!
//! Every interval test of the ring goes through [`IdSpace`], so that the wrap-around
//! rule lives in one place and is tested exhaustively for small circles.

use cm_types::{RING_BITS_MAX, RingKey};

/// The identifier circle of one ring: `2^bits` positions, `bits` in 1..=64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdSpace {
    bits: u32,
}

impl IdSpace {
    /// The circle of `2^bits` identifiers. Panics outside 1..=64, because the caller
    /// (configuration parsing) must have refused such a value already.
    pub fn new(bits: u32) -> IdSpace {
        assert!(
            (1..=RING_BITS_MAX).contains(&bits),
            "bits out of range: {bits}"
        );
        IdSpace { bits }
    }

    pub fn bits(self) -> u32 {
        self.bits
    }

    /// The largest identifier of the circle, `2^bits - 1`.
    pub fn id_max(self) -> RingKey {
        if self.bits == 64 {
            u64::MAX
        } else {
            (1u64 << self.bits) - 1
        }
    }

    pub fn contains(self, id: RingKey) -> bool {
        id <= self.id_max()
    }

    /// The clockwise distance from `from` to `to`, in `[0, 2^bits)`.
    pub fn distance(self, from: RingKey, to: RingKey) -> u64 {
        debug_assert!(self.contains(from) && self.contains(to));
        to.wrapping_sub(from) & self.id_max()
    }

    /// Whether `x` lies strictly inside the clockwise arc from `a` to `b`.
    ///
    /// When `a == b` the arc is the whole circle except `a`: that is the convention
    /// under which a one-node ring (successor = predecessor = itself) accepts any
    /// other node as a better successor or predecessor.
    pub fn between_open(self, a: RingKey, x: RingKey, b: RingKey) -> bool {
        let distance_to_x = self.distance(a, x);
        if a == b {
            return distance_to_x != 0;
        }
        distance_to_x != 0 && distance_to_x < self.distance(a, b)
    }

    /// Whether `x` lies in the clockwise arc `(a, b]`; the whole circle when `a == b`.
    ///
    /// This is the ownership test: key `x` belongs to node `b` whose predecessor is `a`.
    pub fn between_open_closed(self, a: RingKey, x: RingKey, b: RingKey) -> bool {
        let distance_to_x = self.distance(a, x);
        if a == b {
            return true;
        }
        distance_to_x != 0 && distance_to_x <= self.distance(a, b)
    }

    /// The start of finger `finger_idx` of node `n`: `n + 2^finger_idx mod 2^bits`.
    pub fn finger_start(self, n: RingKey, finger_idx: u32) -> RingKey {
        assert!(
            finger_idx < self.bits,
            "finger index {finger_idx} out of range"
        );
        n.wrapping_add(1u64 << finger_idx) & self.id_max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The positions visited walking clockwise from `a` (exclusive) up to `b`
    /// (exclusive), one step at a time; a full turn when `a == b`. This is the
    /// definition of an open arc, written without any modular shortcut.
    fn walk_open(bits: u32, a: u64, b: u64) -> Vec<u64> {
        let circle_len = 1u64 << bits;
        let mut visited = Vec::new();
        let mut position = (a + 1) % circle_len;
        for _ in 0..circle_len {
            if position == b {
                break;
            }
            visited.push(position);
            position = (position + 1) % circle_len;
        }
        visited
    }

    #[test]
    fn intervals_match_brute_force_for_small_circles() {
        // Goal: every (a, x, b) on circles of 2..16 positions agrees with a walk.
        for bits in 1..=4u32 {
            let space = IdSpace::new(bits);
            let circle_len = 1u64 << bits;
            for a in 0..circle_len {
                for b in 0..circle_len {
                    let open = walk_open(bits, a, b);
                    for x in 0..circle_len {
                        let expected_open = open.contains(&x);
                        let expected_open_closed = expected_open || (x == b);
                        assert_eq!(
                            space.between_open(a, x, b),
                            expected_open,
                            "bits={bits} ({a},{x},{b})"
                        );
                        assert_eq!(
                            space.between_open_closed(a, x, b),
                            expected_open_closed,
                            "bits={bits} ({a},{x},{b}]"
                        );
                    }
                    let expected_distance = if a == b { 0 } else { open.len() as u64 + 1 };
                    assert_eq!(
                        space.distance(a, b),
                        expected_distance,
                        "bits={bits} d({a},{b})"
                    );
                }
                for finger_idx in 0..bits {
                    assert_eq!(
                        space.finger_start(a, finger_idx),
                        (a + (1 << finger_idx)) % circle_len
                    );
                }
            }
        }
    }

    #[test]
    fn id_max_and_contains() {
        assert_eq!(IdSpace::new(1).id_max(), 1);
        assert_eq!(IdSpace::new(3).id_max(), 7);
        assert_eq!(IdSpace::new(64).id_max(), u64::MAX);
        assert!(IdSpace::new(3).contains(7));
        assert!(!IdSpace::new(3).contains(8));
    }

    proptest! {
        #[test]
        fn open_closed_is_open_plus_end(a: u64, x: u64, b: u64) {
            let space = IdSpace::new(64);
            let expected = space.between_open(a, x, b) || x == b;
            prop_assert_eq!(space.between_open_closed(a, x, b), expected);
        }

        #[test]
        fn every_point_splits_the_circle(a: u64, x: u64, b: u64) {
            // A point other than a and b lies on exactly one of the arcs (a, b) and (b, a).
            let space = IdSpace::new(64);
            prop_assume!(a != b && x != a && x != b);
            prop_assert!(space.between_open(a, x, b) != space.between_open(b, x, a));
        }

        #[test]
        fn distances_add_up_along_the_arc(a: u64, x: u64, b: u64) {
            let space = IdSpace::new(64);
            if space.between_open(a, x, b) && a != b {
                prop_assert_eq!(space.distance(a, x).wrapping_add(space.distance(x, b)), space.distance(a, b));
            }
        }

        #[test]
        fn finger_start_is_a_power_of_two_away(n: u64, finger_idx in 0u32..64) {
            let space = IdSpace::new(64);
            prop_assert_eq!(space.distance(n, space.finger_start(n, finger_idx)), 1u64 << finger_idx);
        }

        #[test]
        fn open_arc_is_translation_invariant(a: u64, x: u64, b: u64, shift: u64) {
            let space = IdSpace::new(64);
            prop_assert_eq!(
                space.between_open(a, x, b),
                space.between_open(a.wrapping_add(shift), x.wrapping_add(shift), b.wrapping_add(shift))
            );
        }
    }
}
