//! The JSON encoding of a plan: pretty-printed once, with the field order of the [`Plan`] struct, and a final
//! line feed. The signature covers these exact bytes.

use super::{Plan, PlanError};

/// Encodes a plan as pretty JSON.
pub fn encode(plan: &Plan) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(plan).expect("a plan always serializes");
    bytes.push(b'\n');
    bytes
}

/// Decodes and validates a JSON plan.
pub fn decode(bytes: &[u8]) -> Result<Plan, PlanError> {
    let text = std::str::from_utf8(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
        .map_err(|e| PlanError::Malformed(format!("the file is not UTF-8 (byte {})", e.valid_up_to())))?;
    // Check the version before the full shape, so a future format gets the version message, not a field error.
    if let Ok(probe) = serde_json::from_str::<VersionProbe>(text) {
        if probe.format.as_deref() == Some(super::FORMAT_NAME) {
            if let Some(version) = &probe.format_version {
                super::check_version(version)?;
            }
        }
    }
    let plan: Plan = serde_json::from_str(text)
        .map_err(|e| PlanError::Malformed(format!("line {}, column {}: {e}", e.line(), e.column())))?;
    plan.validate()?;
    Ok(plan)
}

#[derive(serde::Deserialize)]
struct VersionProbe {
    format: Option<String>,
    format_version: Option<String>,
}
