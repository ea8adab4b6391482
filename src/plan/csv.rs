//! The CSV encoding of a plan: RFC 4180 (through the `csv` crate), so it opens in a spreadsheet.
//!
//! The file starts with metadata records whose first cell begins with `#` (`#plan_id,…`, `#group,1,…`), then a
//! header row, then one row per change, per entry not acted on, and per member id of the precondition. It holds
//! exactly what the JSON encoding holds: decoding either gives the same [`Plan`].
//!
//! Spreadsheet formula injection: a cell that starts with `=`, `+`, `-`, `@`, tab, carriage return, line feed or
//! NUL is written with a leading `'` (OWASP's advice), so a spreadsheet shows it as text. A cell that really starts
//! with `'` gets one more, so the decoder can remove exactly one and the value comes back unchanged.

use std::collections::BTreeMap;

use super::{
    timestamp, Action, Change, Counts, Flag, GroupPlan, InputRecord, InputRole, Plan, PlanError, PlanOptions,
    Precondition, SkipKind, Skipped,
};
use crate::identity::{ActorKind, EntraActor, ObjectId};

/// The header row.
pub const HEADER: [&str; 11] = [
    "group_id",
    "section",
    "action",
    "object_id",
    "upn",
    "mail",
    "display_name",
    "email",
    "source_line",
    "reason",
    "flags",
];

/// Prefixes a cell so that no spreadsheet reads it as a formula (see the module docs).
pub fn neutralize(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r' | b'\n' | b'\0' | b'\'') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

/// Undoes [`neutralize`].
pub fn unneutralize(cell: &str) -> &str {
    cell.strip_prefix('\'').unwrap_or(cell)
}

struct Writer {
    inner: csv::Writer<Vec<u8>>,
}

impl Writer {
    fn row<'a>(&mut self, cells: impl IntoIterator<Item = &'a str>) {
        let record: Vec<std::borrow::Cow<'_, str>> = cells.into_iter().map(neutralize).collect();
        self.inner.write_record(record.iter().map(|c| c.as_bytes())).expect("writing to memory cannot fail");
    }
}

/// Encodes a plan as CSV.
pub fn encode(plan: &Plan) -> Vec<u8> {
    let inner = csv::WriterBuilder::new().flexible(true).terminator(csv::Terminator::CRLF).from_writer(Vec::new());
    let mut w = Writer { inner };
    w.row(["#writeback-plan", &plan.format_version]);
    w.row(["#plan_id", &plan.plan_id.to_string()]);
    w.row(["#created_at", &timestamp::format(&plan.created_at)]);
    w.row(["#expires_at", &timestamp::format(&plan.expires_at)]);
    w.row(["#signer", &plan.signer]);
    w.row(["#tool_version", &plan.tool_version]);
    w.row(["#tenant_id", plan.tenant_id.as_deref().unwrap_or("")]);
    if let Some(actor) = &plan.entra_actor {
        w.row(["#entra_actor.type", actor.kind.as_str()]);
        w.row(["#entra_actor.id", &actor.id]);
        w.row(["#entra_actor.name", actor.name.as_deref().unwrap_or("")]);
        w.row(["#entra_actor.tenant_id", actor.tenant_id.as_deref().unwrap_or("")]);
        w.row(["#entra_actor.auth", &actor.auth]);
    }
    for (index, group) in plan.groups.iter().enumerate() {
        let n = (index + 1).to_string();
        let meta = |w: &mut Writer, key: &str, value: &str| w.row(["#group", &n, key, value]);
        meta(&mut w, "group_id", group.group_id.as_str());
        meta(&mut w, "display_name", group.display_name.as_deref().unwrap_or(""));
        meta(&mut w, "add_only", bool_str(group.options.add_only));
        meta(&mut w, "remove_only", bool_str(group.options.remove_only));
        for input in &group.inputs {
            w.row(["#group", &n, "input", input.role.as_str(), &input.description, &input.sha256]);
        }
        meta(&mut w, "member_count", &group.precondition.member_count.to_string());
        meta(&mut w, "members_sha256", &group.precondition.members_sha256);
        w.row(["#group", &n, "count", "add", &group.counts.add.to_string()]);
        w.row(["#group", &n, "count", "remove", &group.counts.remove.to_string()]);
        for (kind, count) in &group.counts.not_acted_on {
            w.row(["#group", &n, "count", kind.as_str(), &count.to_string()]);
        }
    }
    w.row(HEADER);
    for group in &plan.groups {
        let gid = group.group_id.as_str();
        for c in &group.changes {
            let line = c.source_line.map(|l| l.to_string()).unwrap_or_default();
            let flags = c.flags.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(";");
            w.row([
                gid,
                "change",
                c.action.as_str(),
                c.user_id.as_str(),
                &c.upn,
                c.mail.as_deref().unwrap_or(""),
                c.display_name.as_deref().unwrap_or(""),
                "",
                &line,
                &c.reason,
                &flags,
            ]);
        }
        for s in &group.not_acted_on {
            let line = s.source_line.map(|l| l.to_string()).unwrap_or_default();
            w.row([
                gid,
                "not_acted_on",
                s.kind.as_str(),
                s.object_id.as_ref().map(|id| id.as_str()).unwrap_or(""),
                s.upn.as_deref().unwrap_or(""),
                "",
                s.display_name.as_deref().unwrap_or(""),
                s.email.as_deref().unwrap_or(""),
                &line,
                &s.detail,
                "",
            ]);
        }
        for id in &group.precondition.member_ids {
            w.row([gid, "member", "", id.as_str(), "", "", "", "", "", "", ""]);
        }
    }
    w.inner.into_inner().expect("writing to memory cannot fail")
}

fn bool_str(value: bool) -> &'static str {
    if value {
        "true"
    } else {
        "false"
    }
}

/// A group being rebuilt from metadata and rows.
#[derive(Default)]
struct GroupDraft {
    group_id: Option<ObjectId>,
    display_name: Option<String>,
    options: PlanOptions,
    inputs: Vec<InputRecord>,
    member_count: Option<u64>,
    members_sha256: Option<String>,
    counts: Counts,
    changes: Vec<Change>,
    not_acted_on: Vec<Skipped>,
    member_ids: Vec<ObjectId>,
    /// The metadata keys given so far (`count` per kind); each may be given once.
    seen: std::collections::BTreeSet<String>,
}

/// Decodes and validates a CSV plan.
pub fn decode(bytes: &[u8]) -> Result<Plan, PlanError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
    let mut meta: BTreeMap<String, String> = BTreeMap::new();
    let mut drafts: Vec<GroupDraft> = Vec::new();
    let mut header_seen = false;
    let mut version: Option<super::version::Version> = None;
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        let more = reader.read_record(&mut record).map_err(|e| match e.kind() {
            csv::ErrorKind::Utf8 { .. } => PlanError::Malformed(format!("line {line}: the file is not UTF-8")),
            _ => PlanError::Malformed(format!("line {line}: {e}")),
        })?;
        if !more {
            break;
        }
        // After a read, the reader's position is still on the record's first line (its terminator is consumed
        // by the next read); a record's own position can lag behind with CRLF endings.
        let line = reader.position().line().max(line);
        let bad = |msg: String| PlanError::Malformed(format!("line {line}: {msg}"));
        let cells: Vec<&str> = record.iter().map(unneutralize).collect();
        let first = cells.first().copied().unwrap_or("");
        if !header_seen && first.starts_with('#') {
            meta_row(&cells, line, &mut version, &mut meta, &mut drafts)?;
            continue;
        }
        if !header_seen {
            if cells != HEADER {
                return Err(bad(format!("expected the header row '{}'", HEADER.join(","))));
            }
            header_seen = true;
            continue;
        }
        if cells.len() != HEADER.len() {
            return Err(bad(format!("expected {} cells, found {}", HEADER.len(), cells.len())));
        }
        let group_id = ObjectId::parse(cells[0]).map_err(|e| bad(e.to_string()))?;
        let draft = drafts
            .iter_mut()
            .find(|d| d.group_id.as_ref() == Some(&group_id))
            .ok_or_else(|| bad(format!("group {group_id} has no '#group' metadata")))?;
        data_row(draft, &cells).map_err(bad)?;
    }
    if !header_seen {
        return Err(PlanError::Malformed("the header row is missing (the file may be truncated)".into()));
    }
    assemble(meta, drafts)
}

/// One metadata row before the header (`#writeback-plan`, `#plan_id`, `#group,N,…`, …).
fn meta_row(
    cells: &[&str],
    line: u64,
    version: &mut Option<super::version::Version>,
    meta: &mut BTreeMap<String, String>,
    drafts: &mut Vec<GroupDraft>,
) -> Result<(), PlanError> {
    let bad = |msg: String| PlanError::Malformed(format!("line {line}: {msg}"));
    let first = cells.first().copied().unwrap_or("");
    if line == 1 {
        if first != "#writeback-plan" {
            return Err(bad("the first line must be '#writeback-plan,<version>'".into()));
        }
        *version = Some(super::version::check(cell(cells, 1))?);
    }
    let Some(version) = version else {
        return Err(bad("the first line must be '#writeback-plan,<version>'".into()));
    };
    if first == "#group" {
        let n: usize = cell(cells, 1)
            .parse()
            .ok()
            .filter(|n| *n >= 1 && *n <= drafts.len() + 1)
            .ok_or_else(|| bad("'#group' needs the group's number (1, 2, …) in the second cell".into()))?;
        if n > drafts.len() {
            drafts.push(GroupDraft::default());
        }
        return group_meta(&mut drafts[n - 1], &cells[2.min(cells.len())..])
            .map_err(|m| bad(format!("'#group,{n}': {m}")));
    }
    let key = first.trim_start_matches('#').to_string();
    if !version.has_field(&field_of(&key)) {
        return Err(bad(format!(
            "unknown metadata '#{key}': a format {} plan has no such field, and a reviewer would never see it; the \
             file was changed by hand or made by another program",
            version.as_str()
        )));
    }
    if meta.insert(key.clone(), cell(cells, 1).to_string()).is_some() {
        return Err(bad(format!("'#{key}' appears twice; a plan says each thing once")));
    }
    Ok(())
}

/// The plan from its metadata and its groups, validated.
fn assemble(mut meta: BTreeMap<String, String>, drafts: Vec<GroupDraft>) -> Result<Plan, PlanError> {
    let version = meta.remove("writeback-plan").unwrap_or_default();
    super::check_version(&version)?;
    let take = |meta: &mut BTreeMap<String, String>, key: &str| {
        meta.remove(key).ok_or_else(|| PlanError::Malformed(format!("'#{key}' is missing")))
    };
    let plan_id = take(&mut meta, "plan_id")?;
    let plan = Plan {
        format: super::FORMAT_NAME.to_string(),
        format_version: version,
        plan_id: uuid::Uuid::parse_str(&plan_id)
            .map_err(|_| PlanError::Malformed(format!("plan_id '{plan_id}' is not a UUID")))?,
        created_at: timestamp::parse(&take(&mut meta, "created_at")?).map_err(PlanError::Malformed)?,
        expires_at: timestamp::parse(&take(&mut meta, "expires_at")?).map_err(PlanError::Malformed)?,
        signer: take(&mut meta, "signer")?,
        tool_version: take(&mut meta, "tool_version")?,
        tenant_id: Some(take(&mut meta, "tenant_id")?).filter(|t| !t.is_empty()),
        entra_actor: entra_actor(&mut meta)?,
        groups: drafts.into_iter().map(finish_group).collect::<Result<_, _>>()?,
    };
    if let Some(key) = meta.keys().next() {
        return Err(PlanError::Malformed(format!("unknown metadata '#{key}'")));
    }
    plan.validate()?;
    Ok(plan)
}

/// The `#entra_actor.*` rows, all five or none.
fn entra_actor(meta: &mut BTreeMap<String, String>) -> Result<Option<EntraActor>, PlanError> {
    const PARTS: [&str; 5] = ["type", "id", "name", "tenant_id", "auth"];
    if !meta.keys().any(|k| k.starts_with("entra_actor.")) {
        return Ok(None);
    }
    let mut parts = BTreeMap::new();
    for part in PARTS {
        let value = meta.remove(&format!("entra_actor.{part}")).ok_or_else(|| {
            PlanError::Malformed(format!("'#entra_actor.{part}' is missing (an Entra actor has all five rows)"))
        })?;
        parts.insert(part, value);
    }
    if let Some(key) = meta.keys().find(|k| k.starts_with("entra_actor.")) {
        return Err(PlanError::Malformed(format!("unknown metadata '#{key}'")));
    }
    let kind = ActorKind::parse(&parts["type"]).ok_or_else(|| {
        PlanError::Malformed(format!("'#entra_actor.type' is '{}', not user or application", parts["type"]))
    })?;
    let required = |part: &str| {
        Some(parts[part].clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| PlanError::Malformed(format!("'#entra_actor.{part}' is empty")))
    };
    Ok(Some(EntraActor {
        kind,
        id: required("id")?,
        name: opt(&parts["name"]),
        tenant_id: opt(&parts["tenant_id"]),
        auth: required("auth")?,
    }))
}

fn cell<'a>(cells: &[&'a str], index: usize) -> &'a str {
    cells.get(index).copied().unwrap_or("")
}

fn opt(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

fn number(value: &str, what: &str) -> Result<u64, String> {
    value.parse().map_err(|_| format!("{what} '{value}' is not a whole number"))
}

/// The top-level field a CSV metadata key stands for: `#writeback-plan` is the format version, `#group` rows
/// are the groups, and `#x` or `#x.part` is the field `x`.
fn field_of(key: &str) -> String {
    match key {
        "writeback-plan" => "format_version".into(),
        "group" => "groups".into(),
        other => other.split('.').next().unwrap_or(other).to_string(),
    }
}

fn group_meta(draft: &mut GroupDraft, cells: &[&str]) -> Result<(), String> {
    let key = cell(cells, 0);
    let value = cell(cells, 1);
    // Inputs are a list (one row each); everything else is said once, so no later row can silently win.
    let once = match key {
        "input" => None,
        "count" => Some(format!("count,{value}")),
        other => Some(other.to_string()),
    };
    if let Some(once) = once {
        if !draft.seen.insert(once.clone()) {
            return Err(format!("'{once}' appears twice; a plan says each thing once"));
        }
    }
    match key {
        "group_id" => draft.group_id = Some(ObjectId::parse(value).map_err(|e| e.to_string())?),
        "display_name" => draft.display_name = opt(value),
        "add_only" | "remove_only" => {
            let flag = match value {
                "true" => true,
                "false" => false,
                _ => return Err(format!("{key} must be true or false")),
            };
            if key == "add_only" {
                draft.options.add_only = flag
            } else {
                draft.options.remove_only = flag
            }
        }
        "input" => draft.inputs.push(InputRecord {
            role: InputRole::parse(value).ok_or_else(|| format!("unknown input role '{value}'"))?,
            description: cell(cells, 2).to_string(),
            sha256: cell(cells, 3).to_string(),
        }),
        "member_count" => draft.member_count = Some(number(value, "member_count")?),
        "members_sha256" => draft.members_sha256 = Some(value.to_string()),
        "count" => {
            let count = number(cell(cells, 2), "count")?;
            match value {
                "add" => draft.counts.add = count,
                "remove" => draft.counts.remove = count,
                other => {
                    let kind = SkipKind::parse(other).ok_or_else(|| format!("unknown count '{other}'"))?;
                    draft.counts.not_acted_on.insert(kind, count);
                }
            }
        }
        other => return Err(format!("unknown group metadata '{other}'")),
    }
    Ok(())
}

fn data_row(draft: &mut GroupDraft, cells: &[&str]) -> Result<(), String> {
    let object_id = |value: &str| -> Result<Option<ObjectId>, String> {
        if value.is_empty() {
            Ok(None)
        } else {
            ObjectId::parse(value).map(Some).map_err(|e| e.to_string())
        }
    };
    let source_line = if cells[8].is_empty() { None } else { Some(number(cells[8], "source_line")?) };
    match cells[1] {
        "change" => {
            let action = Action::parse(cells[2]).ok_or_else(|| format!("unknown action '{}'", cells[2]))?;
            let flags = cells[10]
                .split(';')
                .filter(|f| !f.is_empty())
                .map(|f| Flag::parse(f).ok_or_else(|| format!("unknown flag '{f}'")))
                .collect::<Result<Vec<_>, _>>()?;
            draft.changes.push(Change {
                action,
                user_id: object_id(cells[3])?.ok_or("a change needs the user's object id")?,
                upn: cells[4].to_string(),
                mail: opt(cells[5]),
                display_name: opt(cells[6]),
                source_line,
                reason: cells[9].to_string(),
                flags,
            });
        }
        "not_acted_on" => draft.not_acted_on.push(Skipped {
            kind: SkipKind::parse(cells[2]).ok_or_else(|| format!("unknown kind '{}'", cells[2]))?,
            email: opt(cells[7]),
            object_id: object_id(cells[3])?,
            upn: opt(cells[4]),
            display_name: opt(cells[6]),
            source_line,
            detail: cells[9].to_string(),
        }),
        "member" => draft.member_ids.push(object_id(cells[3])?.ok_or("a member row needs an object id")?),
        other => return Err(format!("unknown section '{other}'")),
    }
    Ok(())
}

fn finish_group(draft: GroupDraft) -> Result<GroupPlan, PlanError> {
    let missing = |what: &str| PlanError::Malformed(format!("a '#group' is missing its {what}"));
    Ok(GroupPlan {
        group_id: draft.group_id.ok_or_else(|| missing("group_id"))?,
        display_name: draft.display_name,
        options: draft.options,
        inputs: draft.inputs,
        precondition: Precondition {
            member_count: draft.member_count.ok_or_else(|| missing("member_count"))?,
            members_sha256: draft.members_sha256.ok_or_else(|| missing("members_sha256"))?,
            member_ids: draft.member_ids,
        },
        counts: draft.counts,
        changes: draft.changes,
        not_acted_on: draft.not_acted_on,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample_plan;

    #[test]
    fn neutralizes_formula_cells() {
        for dangerous in ["=1+2", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "\nx", "\0x", "'quoted"] {
            let safe = neutralize(dangerous);
            assert!(safe.starts_with('\''), "{dangerous:?}");
            assert_eq!(unneutralize(&safe), dangerous);
        }
        assert_eq!(neutralize("plain"), "plain");
    }

    #[test]
    fn json_csv_json_loses_nothing() {
        let plan = sample_plan();
        let from_json = crate::plan::json::decode(&crate::plan::json::encode(&plan)).unwrap();
        let csv_bytes = encode(&from_json);
        let from_csv = decode(&csv_bytes).unwrap();
        assert_eq!(from_csv, plan);
        assert_eq!(crate::plan::json::encode(&from_csv), crate::plan::json::encode(&plan));
    }

    #[test]
    fn hostile_cells_are_neutralized_in_the_file() {
        let mut plan = sample_plan();
        plan.groups[0].changes[0].display_name = Some("=HYPERLINK(\"http://evil\",\"click\")".into());
        let text = String::from_utf8(encode(&plan)).unwrap();
        assert!(text.contains("\"'=HYPERLINK("));
        assert_eq!(decode(text.as_bytes()).unwrap(), plan);
    }

    #[test]
    fn truncated_and_bad_files_are_errors() {
        let bytes = encode(&sample_plan());
        let cut = &bytes[..bytes.len() / 3];
        assert!(decode(cut).is_err());
        assert!(decode(b"#writeback-plan,9.0\n").is_err());
        assert!(matches!(decode(b"#writeback-plan,9.0\r\ngroup_id\r\n"), Err(PlanError::UnsupportedVersion(_))));
        assert!(matches!(decode(b"#writeback-plan,1.0\r\n"), Err(PlanError::Malformed(_))));
        assert!(decode(b"hello,world\n").is_err());
    }

    fn with_row_after(anchor: &str, row: &str) -> Vec<u8> {
        let text = String::from_utf8(encode(&sample_plan())).unwrap();
        let at = text.find(anchor).unwrap();
        let end = at + text[at..].find("\r\n").unwrap() + 2;
        format!("{}{row}\r\n{}", &text[..end], &text[end..]).into_bytes()
    }

    #[test]
    fn repeated_metadata_is_refused_not_overwritten() {
        for (anchor, row, needle) in [
            (
                "#group,1,group_id,",
                "#group,1,group_id,00000000-0000-0000-0000-000000000101",
                "'group_id' appears twice",
            ),
            ("#group,1,display_name,", "#group,1,display_name,Managers", "'display_name' appears twice"),
            ("#group,1,add_only,", "#group,1,add_only,true", "'add_only' appears twice"),
            ("#group,1,member_count,", "#group,1,member_count,2", "'member_count' appears twice"),
            ("#group,1,members_sha256,", "#group,1,members_sha256,ab", "'members_sha256' appears twice"),
            ("#group,1,count,add,", "#group,1,count,add,3", "'count,add' appears twice"),
            ("#group,1,count,kept,", "#group,1,count,kept,0", "'count,kept' appears twice"),
            ("#signer,", "#signer,someone@else", "'#signer' appears twice"),
            ("#expires_at,", "#expires_at,2099-01-01T00:00:00Z", "'#expires_at' appears twice"),
        ] {
            let err = decode(&with_row_after(anchor, row)).unwrap_err();
            assert!(matches!(&err, PlanError::Malformed(m) if m.contains(needle)), "{row}: {err}");
        }
    }

    #[test]
    fn the_planners_entra_actor_rows() {
        let plan = sample_plan();
        let text = String::from_utf8(encode(&plan)).unwrap();
        assert!(text.contains("#entra_actor.type,user\r\n#entra_actor.id,0f1e2d3c-"), "{text}");
        assert_eq!(decode(text.as_bytes()).unwrap(), plan);
        let missing = text.replacen("#entra_actor.auth,azure-cli\r\n", "", 1);
        let err = decode(missing.as_bytes()).unwrap_err();
        assert!(matches!(&err, PlanError::Malformed(m) if m.contains("'#entra_actor.auth' is missing")), "{err}");
        let odd = text.replacen("#entra_actor.type,user", "#entra_actor.type,robot", 1);
        assert!(matches!(decode(odd.as_bytes()), Err(PlanError::Malformed(m)) if m.contains("robot")));
        let old = text.replacen("#writeback-plan,1.1", "#writeback-plan,1.0", 1);
        let err = decode(old.as_bytes()).unwrap_err();
        assert!(matches!(&err, PlanError::Malformed(m) if m.contains("'#entra_actor.type'")), "{err}");
        let mut offline = plan.clone();
        offline.entra_actor = None;
        let text = String::from_utf8(encode(&offline)).unwrap();
        assert!(!text.contains("#entra_actor"));
        assert_eq!(decode(text.as_bytes()).unwrap(), offline);
    }

    #[test]
    fn unknown_metadata_and_versions() {
        let err = decode(&with_row_after("#tenant_id,", "#note,apply me")).unwrap_err();
        assert!(
            matches!(&err, PlanError::Malformed(m) if m.contains("unknown metadata '#note'") && m.contains("1.1")),
            "{err}"
        );
        let err = decode(&with_row_after("#entra_actor.auth,", "#entra_actor.role,admin")).unwrap_err();
        assert!(matches!(&err, PlanError::Malformed(m) if m.contains("'#entra_actor.role'")), "{err}");
        let text = String::from_utf8(encode(&sample_plan())).unwrap();
        let newer = text.replacen("#writeback-plan,1.1", "#writeback-plan,1.2", 1);
        assert!(matches!(decode(newer.as_bytes()), Err(PlanError::UnsupportedVersion(_))));
        let older = text.replacen("#writeback-plan,1.1", "#writeback-plan,0.3", 1);
        assert!(matches!(decode(older.as_bytes()), Err(PlanError::UnknownVersion(_))));
    }
}
