//! Last-writer-wins registers, the building block of folder names and flags.

use crate::Version;

/// One value and the version that wrote it; the higher version wins a merge.
///
/// Versions carry the writer's node id, so two different writes never tie. Should a
/// tie ever be forged by a peer, the larger value wins, which keeps the merge
/// commutative whatever the peer sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Lww<T> {
    pub version: Version,
    pub value: T,
}

impl<T: Ord + Clone> Lww<T> {
    pub fn new(version: Version, value: T) -> Lww<T> {
        Lww { version, value }
    }

    /// Keeps whichever of `self` and `other` was written last.
    pub fn merge(&mut self, other: &Lww<T>) {
        if (other.version, &other.value) > (self.version, &self.value) {
            *self = other.clone();
        }
    }
}
