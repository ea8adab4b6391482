//! The membership precondition: which users were members when the plan was made.
//!
//! `members_sha256` is the SHA-256 (lowercase hex) of the sorted, lowercase user-member object ids, each
//! followed by a line feed (`\n`). Anyone can recompute it from a member list with standard tools:
//! `sort | sha256sum` over one lowercase id per line. Only user members count: nested groups, devices and
//! other objects are never changed by writeback and do not enter the hash.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::ObjectId;

/// The user membership a group's changes were computed against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Precondition {
    /// How many user members the group had.
    pub member_count: u64,
    /// SHA-256 over the sorted member ids (see the module docs).
    pub members_sha256: String,
    /// The member ids, sorted. They let `apply` and `check` say exactly what changed since planning.
    pub member_ids: Vec<ObjectId>,
}

impl Precondition {
    /// Builds the precondition for a set of user-member ids (in any order, duplicates ignored).
    pub fn from_members<'a>(ids: impl IntoIterator<Item = &'a ObjectId>) -> Precondition {
        Precondition::from_ids(ids.into_iter().cloned().collect())
    }

    /// Like [`Precondition::from_members`], taking the ids.
    pub fn from_ids(mut member_ids: Vec<ObjectId>) -> Precondition {
        // Equal ids are identical, so an unstable sort gives the same result, faster.
        member_ids.sort_unstable();
        member_ids.dedup();
        Precondition { member_count: member_ids.len() as u64, members_sha256: membership_hash(&member_ids), member_ids }
    }

    /// True when `current` (in any order) is exactly the membership this precondition recorded.
    pub fn matches<'a>(&self, current: impl IntoIterator<Item = &'a ObjectId>) -> bool {
        let now = Precondition::from_members(current);
        now.member_count == self.member_count && now.members_sha256 == self.members_sha256
    }

    /// Checks that the count and hash agree with the listed ids.
    pub fn check(&self) -> Result<(), String> {
        if !self.member_ids.windows(2).all(|w| w[0] < w[1]) {
            return Err("the precondition's member ids are not sorted and unique".into());
        }
        if self.member_ids.len() as u64 != self.member_count {
            return Err(format!(
                "the precondition says {} members but lists {}",
                self.member_count,
                self.member_ids.len()
            ));
        }
        if membership_hash(&self.member_ids) != self.members_sha256 {
            return Err("the precondition's hash does not match its member ids".into());
        }
        Ok(())
    }
}

/// SHA-256 over sorted ids, each followed by `\n`, as lowercase hex.
pub fn membership_hash(sorted_ids: &[ObjectId]) -> String {
    let mut hasher = Sha256::new();
    for id in sorted_ids {
        hasher.update(id.as_str().as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// SHA-256 of some bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::id;

    #[test]
    fn order_does_not_matter() {
        let a = Precondition::from_members(&[id(2), id(1), id(3)]);
        let b = Precondition::from_members(&[id(3), id(2), id(1), id(1)]);
        assert_eq!(a, b);
        assert_eq!(a.member_count, 3);
        assert!(a.matches(&[id(1), id(3), id(2)]));
        assert!(!a.matches(&[id(1), id(2)]));
        a.check().unwrap();
    }

    #[test]
    fn hash_is_sha256_of_sorted_lines() {
        // printf '00000000-0000-0000-0000-000000000001\n00000000-0000-0000-0000-000000000002\n' | sha256sum
        let p = Precondition::from_members(&[id(2), id(1)]);
        let text = "00000000-0000-0000-0000-000000000001\n00000000-0000-0000-0000-000000000002\n";
        assert_eq!(p.members_sha256, sha256_hex(text.as_bytes()));
    }

    #[test]
    fn empty_group_hashes_empty_input() {
        let p = Precondition::from_members(&[]);
        assert_eq!(p.members_sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn tampered_precondition_fails_check() {
        let mut p = Precondition::from_members(&[id(1), id(2)]);
        p.member_ids.pop();
        assert!(p.check().is_err());
    }
}
