//! The CSV encoding of a plan.

use super::{Plan, PlanError};

/// Encodes a plan as CSV.
pub fn encode(_plan: &Plan) -> Vec<u8> {
    Vec::new()
}

/// Decodes a CSV plan.
pub fn decode(_bytes: &[u8]) -> Result<Plan, PlanError> {
    Err(PlanError::Malformed("CSV plans are not readable yet".into()))
}
