//! The plan format versions this build reads, and the top-level fields each one has.
//!
//! A plan carries `format_version` (`MAJOR.MINOR`). A minor version only adds optional fields; every reader
//! knows exactly which fields each version it reads may hold, so that nothing in a plan is hidden from the
//! reviewer: a field `show` would not display is refused, never skipped.
//!
//! - a version in [`KNOWN`]: read; a top-level field that version does not have is malformed (exit 13);
//! - a newer version (a higher minor of a known major, or a higher major): refused, asking for an upgrade
//!   (exit 14);
//! - anything else (an older or unknown version): refused (exit 14).
//!
//! Adding a field to the format is one row here (`Known { version: "1.1", adds: &["entra_actor"] }`), the
//! field in [`super::Plan`], and both encoders and decoders; a CSV plan spells a top-level field `x` as
//! metadata rows `#x` or `#x.part`.

use super::PlanError;

/// One format version and the top-level fields it adds to the versions before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// `MAJOR.MINOR`.
    pub version: &'static str,
    /// The top-level fields this version adds to the rows before it (of the same major).
    pub adds: &'static [&'static str],
}

/// The top-level fields of every `1.x` plan.
const BASE_1: &[&str] = &[
    "format",
    "format_version",
    "plan_id",
    "created_at",
    "expires_at",
    "signer",
    "tool_version",
    "tenant_id",
    "groups",
];

/// The versions this build reads, oldest first. Each row's fields are [`BASE_1`] plus the `adds` of every row up
/// to and including it.
pub const KNOWN: &[Known] = &[Known { version: "1.0", adds: &[] }, Known { version: "1.1", adds: &["entra_actor"] }];

/// A version this build reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    index: usize,
}

impl Version {
    /// `MAJOR.MINOR`, as written.
    pub fn as_str(self) -> &'static str {
        KNOWN.get(self.index).map(|k| k.version).unwrap_or("")
    }

    /// True when a plan of this version may hold the top-level field `name`.
    pub fn has_field(self, name: &str) -> bool {
        BASE_1.contains(&name) || KNOWN.iter().take(self.index + 1).any(|k| k.adds.contains(&name))
    }

    /// The error for a top-level field this version does not have.
    pub fn unknown_field(self, name: &str) -> PlanError {
        PlanError::Malformed(format!(
            "unknown field '{name}': a format {} plan has no such field, and a reviewer would never see it; \
             the file was changed by hand or made by another program",
            self.as_str()
        ))
    }
}

/// The newest version this build reads (the one it writes).
pub fn newest() -> &'static str {
    KNOWN.last().map(|k| k.version).unwrap_or("")
}

fn parse(raw: &str) -> Option<(u32, u32)> {
    let (major, minor) = raw.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(major) || !digits(minor) {
        return None;
    }
    let parsed = (major.parse().ok()?, minor.parse().ok()?);
    // One spelling per version: `1.0`, never `01.0` or `1.00`.
    (format!("{}.{}", parsed.0, parsed.1) == raw).then_some(parsed)
}

/// Looks `raw` up in [`KNOWN`].
pub fn check(raw: &str) -> Result<Version, PlanError> {
    if let Some(index) = KNOWN.iter().position(|k| k.version == raw) {
        return Ok(Version { index });
    }
    let Some(wanted) = parse(raw) else {
        return Err(PlanError::Malformed(format!("format_version '{raw}' is not MAJOR.MINOR (e.g. {})", newest())));
    };
    let newest_known = parse(newest()).unwrap_or((0, 0));
    if wanted > newest_known {
        Err(PlanError::UnsupportedVersion(raw.to_string()))
    } else {
        Err(PlanError::UnknownVersion(raw.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_version_parses_and_is_in_order() {
        let parsed: Vec<(u32, u32)> = KNOWN.iter().map(|k| parse(k.version).unwrap()).collect();
        assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{parsed:?}");
        assert_eq!(newest(), super::super::FORMAT_VERSION);
    }

    #[test]
    fn versions_are_read_refused_or_sent_to_an_upgrade() {
        let v = check("1.0").unwrap();
        assert_eq!(v.as_str(), "1.0");
        assert!(v.has_field("groups") && !v.has_field("entra_actor") && !v.has_field("note"));
        for newer in ["1.9", "2.0", "10.0"] {
            assert!(matches!(check(newer), Err(PlanError::UnsupportedVersion(_))), "{newer}");
        }
        assert!(matches!(check("0.9"), Err(PlanError::UnknownVersion(_))));
        for bad in ["1", "1.", ".0", "1.0.0", "01.0", "1.00", "v1.0", "1.x", ""] {
            assert!(matches!(check(bad), Err(PlanError::Malformed(_))), "{bad}");
        }
    }
}
