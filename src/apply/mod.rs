//! `apply`: gates, the batching executor, the journal and the receipt.
