//! Auditing: did the groups end up where the plans said, and does an archive of plans, approvals, receipts and
//! journals add up.

pub mod effect;
