//! The JSON encoding of a plan: pretty-printed once, with the field order of the [`Plan`] struct, and a final
//! line feed. The signature covers these exact bytes.
//!
//! Decoding refuses anything a reviewer would not see: a field the plan's format version does not have (at the
//! top level, checked against [`super::version`]; inside, every object refuses unknown fields), a key given
//! twice, and trailing text.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::{version, Plan, PlanError};

/// Encodes a plan as pretty JSON.
pub fn encode(plan: &Plan) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(plan).expect("a plan always serializes");
    bytes.push(b'\n');
    bytes
}

/// Writes [`encode`]'s bytes to `out` as they are made, without holding them (a plan of a million members is
/// 130 MB).
pub fn encode_to(plan: &Plan, out: &mut impl std::io::Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, plan).map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}

/// Decodes and validates a JSON plan.
pub fn decode(bytes: &[u8]) -> Result<Plan, PlanError> {
    let text = std::str::from_utf8(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
        .map_err(|e| PlanError::Malformed(format!("the file is not UTF-8 (byte {})", e.valid_up_to())))?;
    // Check the version and the top-level fields before the full shape, so a future format gets the version
    // message, and a field of a newer version the "unknown field" message, not a type error.
    if let Ok(probe) = serde_json::from_str::<TopLevel>(text) {
        if probe.format.as_deref() == Some(super::FORMAT_NAME) {
            if let Some(raw) = &probe.format_version {
                let version = version::check(raw)?;
                if let Some(field) = probe.keys.iter().find(|k| !version.has_field(k)) {
                    return Err(version.unknown_field(field));
                }
            }
        }
    }
    let plan: Plan = serde_json::from_str(text).map_err(|e| PlanError::Malformed(error_at(&e)))?;
    plan.validate()?;
    Ok(plan)
}

/// A JSON error as `line L, column C: what`, the position said once (serde_json's own text ends with it too).
pub fn error_at(e: &serde_json::Error) -> String {
    format!("line {}, column {}: {}", e.line(), e.column(), error_text(e))
}

/// A JSON error's text without serde_json's ` at line L column C` ending, for a message that gives the position
/// its own way.
pub fn error_text(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let ending = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&ending).map(str::to_string).unwrap_or(text)
}

/// The top level of a JSON object: its `format` and `format_version` (when they are strings) and every key.
struct TopLevel {
    format: Option<String>,
    format_version: Option<String>,
    keys: Vec<String>,
}

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = TopLevel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
                let mut top = TopLevel { format: None, format_version: None, keys: Vec::new() };
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "format" => top.format = map.next_value::<serde_json::Value>()?.as_str().map(str::to_string),
                        "format_version" => {
                            top.format_version = map.next_value::<serde_json::Value>()?.as_str().map(str::to_string)
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                    top.keys.push(key);
                }
                Ok(top)
            }
        }
        deserializer.deserialize_map(Keys).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample_plan;

    fn text() -> String {
        String::from_utf8(encode(&sample_plan())).unwrap()
    }

    #[test]
    fn an_unknown_top_level_field_is_refused_by_name() {
        let t = text().replacen("\"plan_id\"", "\"note\": \"apply me twice\",\n  \"plan_id\"", 1);
        let err = decode(t.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, PlanError::Malformed(m) if m.contains("unknown field 'note'") && m.contains("1.1")),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_inside_are_refused() {
        for (anchor, extra) in [
            ("\"group_id\"", "\"hidden\": 1, "),
            ("\"action\"", "\"also_group\": \"x\", "),
            ("\"member_count\"", "\"x\": [], "),
            ("\"add_only\"", "\"y\": true, "),
            ("\"role\"", "\"z\": null, "),
            ("\"kind\"", "\"w\": 2, "),
        ] {
            let t = text().replacen(anchor, &format!("{extra}{anchor}"), 1);
            let err = decode(t.as_bytes()).unwrap_err();
            assert!(matches!(&err, PlanError::Malformed(m) if m.contains("unknown field")), "{anchor}: {err}");
        }
    }

    #[test]
    fn a_newer_minor_asks_for_an_upgrade_and_an_older_one_is_refused() {
        let t = text().replacen("\"1.1\"", "\"1.7\"", 1);
        assert!(matches!(decode(t.as_bytes()), Err(PlanError::UnsupportedVersion(_))));
        let t = text().replacen("\"1.1\"", "\"1.7\"", 1).replacen("\"plan_id\"", "\"later\": {},\n  \"plan_id\"", 1);
        assert!(matches!(decode(t.as_bytes()), Err(PlanError::UnsupportedVersion(_))));
        let err = decode(text().replacen("\"1.1\"", "\"0.9\"", 1).as_bytes()).unwrap_err();
        assert!(matches!(err, PlanError::UnknownVersion(_)) && err.is_version());
    }

    #[test]
    fn the_planners_entra_actor_is_a_1_1_field() {
        let plan = sample_plan();
        let t = text();
        assert!(t.contains("\"entra_actor\": {\n    \"type\": \"user\""), "{t}");
        assert_eq!(decode(t.as_bytes()).unwrap(), plan);
        // A 1.0 plan is still read; it has no entra_actor, so one in a 1.0 plan is hidden content.
        let mut old = plan.clone();
        old.format_version = "1.0".into();
        old.entra_actor = None;
        assert_eq!(decode(&encode(&old)).unwrap(), old);
        let err = decode(t.replacen("\"1.1\"", "\"1.0\"", 1).as_bytes()).unwrap_err();
        assert!(matches!(&err, PlanError::Malformed(m) if m.contains("unknown field 'entra_actor'")), "{err}");
        let err =
            decode(t.replacen("\"type\": \"user\"", "\"type\": \"user\", \"role\": \"x\"", 1).as_bytes()).unwrap_err();
        assert!(matches!(&err, PlanError::Malformed(m) if m.contains("unknown field")), "{err}");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let t = text().replacen("\"signer\"", "\"signer\": \"someone@else\",\n  \"signer\"", 1);
        assert!(matches!(decode(t.as_bytes()), Err(PlanError::Malformed(m)) if m.contains("duplicate")));
    }

    #[test]
    fn a_json_error_gives_its_position_once() {
        let e = serde_json::from_str::<serde_json::Value>("{\n  \"a\": ,\n}").unwrap_err();
        let text = error_at(&e);
        assert!(text.starts_with("line 2, column 8: "), "{text}");
        assert_eq!(text.matches("line 2").count(), 1, "{text}");
    }
}
