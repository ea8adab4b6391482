//! The `azure-cli` kind: the person signed in to the Azure CLI.
//!
//! Runs `az account get-access-token --resource {resource} [--tenant T] --output json` (the `az` found on
//! `PATH`; `az.cmd` on Windows) and reads `accessToken` and `expires_on` (epoch seconds, az 2.54+) or `expiresOn`
//! (local time). The Azure CLI keeps its own sign-in; writeback asks it again whenever its token is about to
//! expire, so a long apply keeps going. Its standard output (the token) is never shown; a failure shows the first
//! lines of its standard error.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

use super::{seconds_field, AccessToken, Attempt, Secret};

/// How long `az` may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The arguments writeback passes to `az`.
pub fn arguments(resource: &str, tenant: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> =
        ["account", "get-access-token", "--resource", resource].iter().map(|s| s.to_string()).collect();
    if let Some(tenant) = tenant {
        args.push("--tenant".into());
        args.push(tenant.into());
    }
    args.push("--output".into());
    args.push("json".into());
    args
}

/// Runs `az` and reads its token. Any failure of `az` (not installed properly, not signed in, no access to the
/// tenant) is [`Attempt::Unavailable`] with what `az` said, so `auto` can go on to the next kind.
pub(crate) async fn get_token(
    program: &Path,
    resource: &str,
    tenant: Option<&str>,
    timeout: Duration,
) -> Result<AccessToken, Attempt> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(arguments(resource, tenant))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|e| Attempt::Unavailable(format!("cannot run {}: {e}", program.display())))?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(Attempt::Unavailable(format!("{} failed: {e}", program.display()))),
        Err(_) => {
            return Err(Attempt::Unavailable(format!(
                "`az account get-access-token` gave no answer within {} seconds",
                timeout.as_secs()
            )))
        }
    };
    if !output.status.success() {
        return Err(Attempt::Unavailable(failure_reason(&String::from_utf8_lossy(&output.stderr))));
    }
    parse_output(&output.stdout, Utc::now()).map_err(Attempt::Unavailable)
}

/// What to tell the person when `az` failed: its first error lines (escaped, at most 300 characters), and to run
/// `az login` when that is what it asks for.
pub fn failure_reason(stderr: &str) -> String {
    let said: String = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("WARNING"))
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let said: String = crate::terminal::escape(&said).chars().take(300).collect();
    let said = if said.is_empty() { "no message".to_string() } else { said };
    if said.contains("az login") {
        format!("the Azure CLI is not signed in (it said: {said}); run `az login`")
    } else {
        format!("`az account get-access-token` failed: {said}")
    }
}

/// Reads az's JSON: `accessToken`, and `expires_on` or `expiresOn` (local time, `2026-01-31 21:59:10.000000`).
pub fn parse_output(stdout: &[u8], now: DateTime<Utc>) -> Result<AccessToken, String> {
    let value: serde_json::Value = serde_json::from_slice(stdout)
        .map_err(|_| "`az account get-access-token` printed something that is not JSON".to_string())?;
    let token = value
        .get("accessToken")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or("`az account get-access-token` printed no accessToken")?;
    let expires_at = seconds_field(value.get("expires_on"))
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .or_else(|| value.get("expiresOn").and_then(|v| v.as_str()).and_then(local_time))
        .or(Some(now + chrono::Duration::minutes(5)));
    Ok(AccessToken { token: Secret::new(token), expires_at })
}

fn local_time(text: &str) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S%.f").ok()?;
    chrono::Local.from_local_datetime(&naive).earliest().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_ask_for_the_cloud_resource() {
        assert_eq!(
            arguments("https://graph.microsoft.com", Some("contoso.example")).join(" "),
            "account get-access-token --resource https://graph.microsoft.com --tenant contoso.example --output json"
        );
        assert_eq!(
            arguments("https://graph.microsoft.us", None).join(" "),
            "account get-access-token --resource https://graph.microsoft.us --output json"
        );
    }

    #[test]
    fn output_and_failures() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let t = parse_output(
            br#"{"accessToken":"tok","expiresOn":"2023-11-14 23:13:20.000000","expires_on":1700003600,"tenant":"t","tokenType":"Bearer"}"#,
            now,
        )
        .unwrap();
        assert_eq!(t.token.expose(), "tok");
        assert_eq!(t.expires_at, DateTime::from_timestamp(1_700_003_600, 0));
        let old = parse_output(br#"{"accessToken":"tok","expiresOn":"2023-11-14 23:13:20.000000"}"#, now).unwrap();
        assert!(old.expires_at.is_some());
        assert!(parse_output(b"", now).is_err());
        let reason = failure_reason("ERROR: Please run 'az login' to setup account.\n");
        assert!(reason.contains("run `az login`"), "{reason}");
        let reason = failure_reason("ERROR: AADSTS50076 \u{1b}[31m\n");
        assert!(reason.contains("AADSTS50076") && !reason.contains('\u{1b}'), "{reason}");
    }
}
