//! A Microsoft Graph PowerShell script that carries out a plan.
//!
//! The script:
//! - starts with a comment block naming the plan (id, SHA-256, signer, expiry, groups) so the file can be matched
//!   with the signed plan it came from;
//! - refuses to run after the plan's expiry;
//! - connects with `Connect-MgGraph -Scopes GroupMember.ReadWrite.All`;
//! - makes one call per change (`New-MgGroupMemberByRef` to add, `Remove-MgGroupMemberDirectoryObjectByRef` to
//!   remove), through two small functions that treat "already a member" (400, "already exist") and "already
//!   absent" (404) as done, so running the script twice is harmless;
//! - prints one line per change (added, already a member, removed, already absent, FAILED with the message) and
//!   exits 1 when any change failed.
//!
//! Only object ids (GUIDs, validated again by the script) appear in code, single-quoted. Names and UPNs appear only
//! in comments, with line breaks and comment delimiters neutralized.

use chrono::{DateTime, Utc};

use crate::plan::{timestamp, Action, GroupPlan, Plan};

use super::ExportFile;

/// Who signed the plan and what it hashes to, for the header.
#[derive(Debug, Clone)]
pub struct ScriptHeader<'a> {
    /// The plan's SHA-256 (hex).
    pub sha256: &'a str,
    /// The verified signer principal.
    pub signer: &'a str,
    /// The signing key's fingerprint.
    pub fingerprint: &'a str,
    /// The approvers that counted, as `principal (fingerprint)`.
    pub approvers: Vec<String>,
    /// When the export was made.
    pub generated_at: DateTime<Utc>,
}

/// A PowerShell single-quoted string literal. PowerShell reads the typographic quotes U+2018–U+201B as single
/// quotes too, so every one of them is doubled, as are control characters replaced.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => out.push('?'),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Text made safe to put after `#` on one line: no line breaks or other control characters, no block-comment
/// delimiters.
pub fn comment_text(value: &str) -> String {
    let flat: String = value
        .chars()
        .map(|c| if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{0085}') { '?' } else { c })
        .collect();
    flat.replace("<#", "< #").replace("#>", "# >")
}

/// The script for the whole plan, named `<stem>.ps1`.
pub fn export(plan: &Plan, stem: &str, header: &ScriptHeader<'_>) -> ExportFile {
    let text = render(plan, header);
    let changes = plan.groups.iter().map(|g| g.changes.len()).sum();
    ExportFile { name: format!("{stem}.ps1"), bytes: text.into_bytes(), changes, group: None }
}

const GUID_PATTERN: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// The script's text: the comment header, the preamble (expiry check, counters, helper functions, sign-in), one
/// section per group, and the summary line.
pub fn render(plan: &Plan, header: &ScriptHeader<'_>) -> String {
    let total: usize = plan.groups.iter().map(|g| g.changes.len()).sum();
    let (adds, removes) = plan.totals();
    let mut s = String::new();
    comment_header(&mut s, plan, header);
    preamble(&mut s, plan, total);
    let mut index = 0usize;
    for group in &plan.groups {
        group_section(&mut s, group, &mut index);
    }
    line(
        &mut s,
        "Write-Output ('Done: {0} added, {1} already members, {2} removed, {3} already absent, {4} FAILED (plan {5})' -f $Counts.Added, $Counts.AlreadyMember, $Counts.Removed, $Counts.AlreadyAbsent, $Counts.Failed, $PlanId)",
    );
    line(&mut s, "if ($Counts.Failed -gt 0) { exit 1 }");
    debug_assert_eq!(index, (adds + removes) as usize);
    s
}

/// Appends `text` and a line feed.
fn line(s: &mut String, text: &str) {
    s.push_str(text);
    s.push('\n');
}

/// The comments at the top: which plan, who signed and approved it, its groups, and how to run the script.
fn comment_header(s: &mut String, plan: &Plan, header: &ScriptHeader<'_>) {
    line(s, "# Microsoft Graph PowerShell script exported by writeback from a signed plan.");
    line(s, "# Do not edit: re-export from the signed plan instead.");
    line(s, "#");
    line(s, &format!("# Plan id:      {}", plan.plan_id));
    line(s, &format!("# Plan SHA-256: {}", header.sha256));
    line(s, &format!("# Signed by:    {} (key {})", comment_text(header.signer), comment_text(header.fingerprint)));
    if header.approvers.is_empty() {
        line(s, "# Approved by:  (no approvals were required)");
    }
    for approver in &header.approvers {
        line(s, &format!("# Approved by:  {}", comment_text(approver)));
    }
    line(s, &format!("# Created:      {}", timestamp::format(&plan.created_at)));
    line(s, &format!("# Expires:      {}", timestamp::format(&plan.expires_at)));
    if let Some(tenant) = &plan.tenant_id {
        line(s, &format!("# Tenant:       {}", comment_text(tenant)));
    }
    for group in &plan.groups {
        line(
            s,
            &format!(
                "# Group:        {}: {} adds, {} removes",
                comment_text(&group.label()),
                group.counts.add,
                group.counts.remove
            ),
        );
    }
    line(s, &format!("# Exported:     {} by {}", timestamp::format(&header.generated_at), crate::tool_version()));
    line(s, "#");
    line(s, "# Run it with:  pwsh -File <this file>   (needs the Microsoft.Graph PowerShell modules and an account");
    line(s, "# that may change these groups). Running it twice is harmless. Afterwards, check the result with");
    line(s, "# `writeback check PLAN`.");
    line(s, "#Requires -Modules Microsoft.Graph.Authentication, Microsoft.Graph.Groups");
    line(s, "");
}

/// Strict mode, the expiry check, the counters, the helper functions and the sign-in.
fn preamble(s: &mut String, plan: &Plan, total: usize) {
    line(s, "Set-StrictMode -Version 3.0");
    line(s, "$ErrorActionPreference = 'Stop'");
    line(s, "");
    line(s, &format!("$PlanId = {}", quote(&plan.plan_id.to_string())));
    line(
        s,
        &format!(
            "$PlanExpiresAt = [DateTimeOffset]::Parse({}, [Globalization.CultureInfo]::InvariantCulture)",
            quote(&timestamp::format(&plan.expires_at))
        ),
    );
    line(s, "if ([DateTimeOffset]::UtcNow -gt $PlanExpiresAt) {");
    line(s, "    [Console]::Error.WriteLine(('Plan {0} expired at {1:u}; make and approve a new plan.' -f $PlanId, $PlanExpiresAt))");
    line(s, "    exit 12");
    line(s, "}");
    line(s, "");
    line(s, &format!("$Total = {total}"));
    line(s, "$GroupOk = $false");
    line(s, "$Counts = @{ Added = 0; AlreadyMember = 0; Removed = 0; AlreadyAbsent = 0; Failed = 0 }");
    line(s, "");
    s.push_str(FUNCTIONS.replace("GUID_PATTERN", &quote(GUID_PATTERN)).as_str());
    line(s, "");
    line(s, "Connect-MgGraph -Scopes GroupMember.ReadWrite.All");
    line(s, "");
}

/// One group: its check, then one guarded call per change. `index` numbers the changes across groups.
fn group_section(s: &mut String, group: &GroupPlan, index: &mut usize) {
    line(s, &format!("# ---- {}", comment_text(&group.label())));
    line(s, &format!("$GroupId = {}", quote(&group.group_id.to_string())));
    line(s, &format!("Test-PlanGroup -GroupId $GroupId -Changes {}", group.changes.len()));
    for change in &group.changes {
        *index += 1;
        let function = match change.action {
            Action::Add => "Add-PlanMember",
            Action::Remove => "Remove-PlanMember",
        };
        let mut note = change.upn.clone();
        if let Some(name) = change.display_name.as_deref().filter(|n| !n.is_empty()) {
            note.push_str(&format!(" ({name})"));
        }
        line(
            s,
            &format!(
                "if ($GroupOk) {{ {function} -Index {index} -GroupId $GroupId -UserId {} }}  # {}",
                quote(&change.user_id.to_string()),
                comment_text(&note)
            ),
        );
    }
    line(s, "");
}

/// The helper functions every script carries. `GUID_PATTERN` is replaced by the quoted pattern.
const FUNCTIONS: &str = r#"function Get-PlanErrorText {
    param($ErrorRecord)
    $parts = @($ErrorRecord.Exception.Message)
    if ($ErrorRecord.ErrorDetails -and $ErrorRecord.ErrorDetails.Message) { $parts += $ErrorRecord.ErrorDetails.Message }
    return (($parts -join ' ') -replace '\s+', ' ').Trim()
}

# Sets $GroupOk: whether the group can be read (a missing group must not look like "already absent").
function Test-PlanGroup {
    param(
        [Parameter(Mandatory)][ValidatePattern(GUID_PATTERN)][string]$GroupId,
        [Parameter(Mandatory)][int]$Changes
    )
    try {
        $null = Get-MgGroup -GroupId $GroupId -Property 'id' -ErrorAction Stop
        $script:GroupOk = $true
    } catch {
        $script:GroupOk = $false
        $Counts.Failed += $Changes
        Write-Output ('group {0}: FAILED: the group cannot be read, so none of its {1} changes were made: {2}' -f $GroupId, $Changes, (Get-PlanErrorText $_))
    }
}

function Add-PlanMember {
    param(
        [Parameter(Mandatory)][int]$Index,
        [Parameter(Mandatory)][ValidatePattern(GUID_PATTERN)][string]$GroupId,
        [Parameter(Mandatory)][ValidatePattern(GUID_PATTERN)][string]$UserId
    )
    $where = '[{0}/{1}] add user {2} to group {3}' -f $Index, $Total, $UserId, $GroupId
    try {
        New-MgGroupMemberByRef -GroupId $GroupId -BodyParameter @{ '@odata.id' = ('https://graph.microsoft.com/v1.0/directoryObjects/{0}' -f $UserId) } -ErrorAction Stop
        $Counts.Added++
        Write-Output ('{0}: added' -f $where)
    } catch {
        $text = Get-PlanErrorText $_
        if ($text -match 'already exist') {
            $Counts.AlreadyMember++
            Write-Output ('{0}: already a member' -f $where)
        } else {
            $Counts.Failed++
            Write-Output ('{0}: FAILED: {1}' -f $where, $text)
        }
    }
}

function Remove-PlanMember {
    param(
        [Parameter(Mandatory)][int]$Index,
        [Parameter(Mandatory)][ValidatePattern(GUID_PATTERN)][string]$GroupId,
        [Parameter(Mandatory)][ValidatePattern(GUID_PATTERN)][string]$UserId
    )
    $where = '[{0}/{1}] remove user {2} from group {3}' -f $Index, $Total, $UserId, $GroupId
    try {
        Remove-MgGroupMemberDirectoryObjectByRef -GroupId $GroupId -DirectoryObjectId $UserId -ErrorAction Stop
        $Counts.Removed++
        Write-Output ('{0}: removed' -f $where)
    } catch {
        $text = Get-PlanErrorText $_
        if ($text -match 'does not exist|Request_ResourceNotFound|NotFound|\b404\b') {
            $Counts.AlreadyAbsent++
            Write-Output ('{0}: already absent' -f $where)
        } else {
            $Counts.Failed++
            Write-Output ('{0}: FAILED: {1}' -f $where, $text)
        }
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample_plan;
    use chrono::TimeZone;

    fn header() -> ScriptHeader<'static> {
        ScriptHeader {
            sha256: "ab12",
            signer: "planner@contoso.example",
            fingerprint: "SHA256:xyz",
            approvers: vec!["approver@contoso.example (SHA256:abc)".into()],
            generated_at: Utc.with_ymd_and_hms(2025, 3, 2, 9, 0, 0).unwrap(),
        }
    }

    #[test]
    fn quoting_doubles_every_kind_of_single_quote() {
        assert_eq!(quote("a'b"), "'a''b'");
        assert_eq!(quote("a\u{2019}b"), "'a\u{2019}\u{2019}b'");
        assert_eq!(quote("a\nb$x`"), "'a?b$x`'");
        assert_eq!(comment_text("x\r\n#> Remove-Everything <# y"), "x??# > Remove-Everything < # y");
    }

    #[test]
    fn script_has_header_connect_and_one_call_per_change() {
        let plan = sample_plan();
        let text = render(&plan, &header());
        assert!(text.contains(&format!("# Plan id:      {}", plan.plan_id)));
        assert!(text.contains("# Plan SHA-256: ab12"));
        assert!(text.contains("Connect-MgGraph -Scopes GroupMember.ReadWrite.All\n"));
        assert!(text.contains("$ErrorActionPreference = 'Stop'"));
        let (adds, removes) = plan.totals();
        let calls = |f: &str| text.lines().filter(|l| l.starts_with("if ($GroupOk) {") && l.contains(f)).count();
        assert_eq!(calls("Add-PlanMember -Index"), adds as usize);
        assert_eq!(calls("Remove-PlanMember -Index"), removes as usize);
        assert_eq!(text.matches("New-MgGroupMemberByRef -GroupId").count(), 1);
        assert_eq!(text.matches("Remove-MgGroupMemberDirectoryObjectByRef -GroupId").count(), 1);
        for group in &plan.groups {
            for change in &group.changes {
                let id = change.user_id.to_string();
                assert_eq!(text.matches(&format!("-UserId '{id}' }}")).count(), 1, "{id}");
            }
        }
    }

    #[test]
    fn hostile_names_stay_in_comments() {
        let mut plan = sample_plan();
        let change = plan.groups[0].changes.first_mut().unwrap();
        change.display_name = Some("x'); Remove-MgGroup -GroupId 'g' #\n$(Get-Secret)\u{2028}<#".into());
        change.upn = "evil\r\nRemove-Everything@contoso.example".into();
        let text = render(&plan, &header());
        for l in text.lines() {
            if l.contains("Remove-Everything") || l.contains("Get-Secret") {
                let code = l.split_once("  # ").map(|(c, _)| c).unwrap_or(l);
                assert!(!code.contains("Remove-Everything") && !code.contains("Get-Secret"), "{l}");
                assert!(l.starts_with("if ($GroupOk) {"), "injected line: {l}");
            }
        }
        assert!(!text.contains("<#"));
    }
}
