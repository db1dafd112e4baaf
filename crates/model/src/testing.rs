//! What the model's property tests share: versions made from two numbers, and the
//! three laws every merge obeys, checked the same way for every mergeable type.

use std::fmt::Debug;

use proptest::prelude::*;

use crate::{Flags, FolderState, Folders, Mailbox, Outbound, UidMap, Version};

/// A version at `wall_ms` written by `node`, counter 0.
pub fn version(wall_ms: u64, node: u64) -> Version {
    Version {
        wall_ms,
        counter: 0,
        node,
    }
}

/// A type whose copies merge in place.
pub trait Merge: Clone + PartialEq + Debug {
    fn merge_from(&mut self, other: &Self);
}

macro_rules! merge_in_place {
    ($($kind:ty),*) => {$(
        impl Merge for $kind {
            fn merge_from(&mut self, other: &Self) {
                self.merge(other);
            }
        }
    )*};
}
merge_in_place!(Mailbox, Flags, Folders, FolderState, Outbound, UidMap);

/// `a` merged with `b`.
pub fn merged<T: Merge>(a: &T, b: &T) -> T {
    let mut result = a.clone();
    result.merge_from(b);
    result
}

/// Merging is commutative, associative and idempotent on these copies, so that
/// replicas reconcile to one state whatever the order and repetition of what they
/// exchange.
pub fn check_merge_laws<T: Merge>(a: &T, b: &T, c: &T) -> Result<(), TestCaseError> {
    prop_assert_eq!(merged(a, b), merged(b, a));
    prop_assert_eq!(merged(&merged(a, b), c), merged(a, &merged(b, c)));
    prop_assert_eq!(merged(&merged(a, b), b), merged(a, b));
    prop_assert_eq!(merged(a, a), a.clone());
    Ok(())
}
