//! The checks that talk to Microsoft Graph (and, for a planner, PoliteMail): signing in, the token's tenant,
//! kind and permissions, a person's directory roles, each configured group, and Graph's clock.

use super::{Check, DoctorRequest};
use crate::config::Config;
use crate::directory::graph::{ClockReading, GraphClient, GraphGroup};
use crate::identity::ObjectId;
use crate::signin::{AuthKind, Role, TokenClaims, TokenType};
use crate::source::politemail_api::{PoliteMailClient, PoliteMailConfig, PoliteMailError};

const PERMISSIONS_DOC: &str = "see docs/permissions.md";

/// Signs in as the command would, then checks the token, its permissions, a person's roles and each configured
/// group. Returns Graph's clock reading when Graph answered.
pub fn checks(request: &DoctorRequest, config: Option<&Config>, checks: &mut Vec<Check>) -> Option<ClockReading> {
    let settings = request.sign_in(config);
    let graph = match GraphClient::connect(&settings) {
        Ok(graph) => graph,
        Err(e) => {
            checks.push(Check::fail("sign-in", e.to_string(), format!("set up a way to sign in ({PERMISSIONS_DOC})")));
            return None;
        }
    };
    let runtime = match crate::http::runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            checks.push(Check::fail("sign-in", e.to_string(), "try again; if it persists, report it"));
            return None;
        }
    };
    runtime.block_on(async {
        if let Err(e) = graph.tenant_id().await {
            checks.push(Check::fail("sign-in", e.to_string(), format!("set up a way to sign in ({PERMISSIONS_DOC})")));
            return graph.clock();
        }
        let current = graph.tokens().current();
        let claims = current.as_ref().and_then(|c| c.claims.clone());
        if let Some(current) = &current {
            let chosen = if settings.auth == AuthKind::Auto { "auto chose " } else { "" };
            checks.push(Check::pass(
                "sign-in",
                format!("{chosen}{} ({}); a token was obtained", current.kind, current.reason),
            ));
        }
        checks.push(token(claims.as_ref(), current.as_ref().map(|c| c.kind), &graph).await);
        if let Some(claims) = &claims {
            checks.push(permissions(claims, request.role));
        }
        let groups = groups(config, &graph, checks).await;
        if let Some(claims) = claims.filter(|c| c.token_type() == TokenType::Delegated && request.role == Role::Admin) {
            checks.push(directory_roles(&claims, &groups, &graph).await);
        }
        match graph.clock() {
            Some(reading) => Some(reading),
            None => graph.read_clock().await.ok().flatten(),
        }
    })
}

/// The token: its tenant, and the application or person it stands for.
async fn token(claims: Option<&TokenClaims>, kind: Option<AuthKind>, graph: &GraphClient) -> Check {
    let tenant = graph.tenant_id().await.unwrap_or_default();
    let Some(claims) = claims else {
        return Check::warn(
            "token",
            format!("tenant {tenant}; the token is opaque: writeback cannot tell whose it is or what it may do"),
            "use a JWT access token for Microsoft Graph (any sign-in kind other than a ready token gives one)",
        );
    };
    let who = match (claims.token_type(), claims.actor(kind.unwrap_or_default())) {
        (TokenType::Delegated, Some(actor)) => {
            format!("person {} (object id {})", actor.name.as_deref().unwrap_or("(no name)"), actor.id)
        }
        (TokenType::Application, Some(actor)) => {
            format!("application {} (client id {})", actor.name.as_deref().unwrap_or("(no name)"), actor.id)
        }
        (TokenType::Delegated, None) => "a person (the token does not say who)".into(),
        (TokenType::Application, None) => "an application (the token does not say which)".into(),
    };
    Check::pass("token", format!("tenant {tenant}; {who}"))
}

/// The token's permissions against what the role asks of Graph.
fn permissions(claims: &TokenClaims, role: Role) -> Check {
    let kind = claims.token_type();
    let held = claims.permissions().join(", ");
    let held = if held.is_empty() { "none".to_string() } else { held };
    let missing = role.missing(claims);
    if missing.is_empty() {
        let needs: Vec<&str> = role.needs().iter().map(|n| n.permission()).collect();
        return Check::pass(
            "permissions",
            format!("the {} needs {}; the token has {held}", role.as_str(), needs.join(" + ")),
        );
    }
    let names: Vec<String> = missing.iter().map(|n| format!("{} (for {})", n.permission(), n.what())).collect();
    let fix = match kind {
        TokenType::Application => "add the application permission(s) to the app registration and grant admin consent",
        TokenType::Delegated => "ask for the delegated permission(s) (for az: sign in again after an admin consents)",
    };
    Check::fail(
        "permissions",
        format!("the {} lacks {}; the token has {held}", role.as_str(), names.join(", ")),
        format!("{fix} ({PERMISSIONS_DOC})"),
    )
}

/// Each configured group: found, manageable, its members readable. Returns the groups found.
async fn groups(config: Option<&Config>, graph: &GraphClient, checks: &mut Vec<Check>) -> Vec<GraphGroup> {
    let wanted: Vec<String> =
        config.map(|c| c.sync.iter().filter_map(|s| s.group.clone()).collect()).unwrap_or_default();
    if wanted.is_empty() {
        checks.push(Check::warn(
            "groups",
            "no [[sync]] group in the config, so no group was checked",
            "add the [[sync]] mappings to the config (see docs/configuration.md)",
        ));
        return Vec::new();
    }
    let mut found = Vec::new();
    for wanted in wanted {
        let name = format!("group {wanted}");
        let group = match graph.find_group(&wanted).await {
            Ok(group) => group,
            Err(e) => {
                checks.push(Check::fail(name, e.to_string(), "check the group's id or name in the config"));
                continue;
            }
        };
        let name = format!("group {}", group.display_name);
        match group.manageability() {
            Err(reason) => checks.push(Check::fail(
                name,
                reason,
                "choose a cloud-only security or Microsoft 365 group with assigned membership",
            )),
            Ok(warnings) => match graph.probe_members(&group.id).await {
                Err(e) => checks.push(Check::fail(name, format!("cannot read its members: {e}"), PERMISSIONS_DOC)),
                Ok(()) if !warnings.is_empty() => {
                    checks.push(Check::warn(name, warnings.join("; "), "make sure changing its members is intended"))
                }
                Ok(()) => checks.push(Check::pass(name, format!("{}: found, manageable, members readable", group.id))),
            },
        }
        found.push(group);
    }
    found
}

/// For a person applying: the active directory roles of the token's `wids`, and which configured groups they own.
async fn directory_roles(claims: &TokenClaims, groups: &[GraphGroup], graph: &GraphClient) -> Check {
    let roles = claims.role_names();
    let roles_text = if roles.is_empty() { "no directory role writeback knows".into() } else { roles.join(", ") };
    let me = claims.object_id.clone().unwrap_or_default();
    let mut blocked = Vec::new();
    for group in groups {
        let by_role = claims.roles_may_change_members(group.is_assignable_to_role == Some(true));
        if by_role || owns(graph, &group.id, &me).await {
            continue;
        }
        blocked.push(group.display_name.clone());
    }
    if blocked.is_empty() && (!groups.is_empty() || claims.roles_may_change_members(false)) {
        return Check::pass("directory roles", format!("active: {roles_text}; may change the configured groups"));
    }
    let which = if groups.is_empty() { "any group".to_string() } else { blocked.join(", ") };
    Check::warn(
        "directory roles",
        format!(
            "active: {roles_text}; none allows changing {which}, and you own none of them. Roles scoped to an \
             administrative unit, custom roles and roles waiting for PIM activation do not show in the token"
        ),
        "activate your Groups Administrator (or User Administrator) role in PIM and sign in again, or become an \
         owner of the group",
    )
}

async fn owns(graph: &GraphClient, group: &ObjectId, me: &str) -> bool {
    graph.owner_ids(group).await.is_ok_and(|owners| owners.iter().any(|o| o.eq_ignore_ascii_case(me)))
}

/// PoliteMail, for a planner whose mappings read a list through its API: reachable, credentials accepted, each
/// list found.
pub fn politemail(config: Option<&Config>, checks: &mut Vec<Check>) {
    let lists: Vec<String> = config.map(|c| c.sync.iter().filter_map(|s| s.list.clone()).collect()).unwrap_or_default();
    if lists.is_empty() {
        checks.push(Check::pass("PoliteMail", "not used: no mapping reads a list through the PoliteMail API"));
        return;
    }
    let fallback = config.and_then(|c| c.defaults.politemail_url.clone());
    let lookup = |name: &str| {
        std::env::var(name).ok().or_else(|| (name == "POLITEMAIL_URL").then(|| fallback.clone()).flatten())
    };
    let client = crate::http::HttpConfig::from_env()
        .map_err(PoliteMailError::from)
        .and_then(|http| PoliteMailConfig::from_lookup(lookup, http))
        .and_then(PoliteMailClient::new);
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            checks.push(Check::fail("PoliteMail", e.to_string(), "set POLITEMAIL_URL and the credentials"));
            return;
        }
    };
    let runtime = match crate::http::runtime() {
        Ok(runtime) => runtime,
        Err(e) => return checks.push(Check::fail("PoliteMail", e.to_string(), "try again")),
    };
    runtime.block_on(async {
        let mut reached = false;
        for list in lists {
            let result = client.find_list(&list).await;
            if !reached {
                match &result {
                    Err(PoliteMailError::Http(e)) => {
                        let fix = "check POLITEMAIL_URL and that this machine may reach it";
                        return checks.push(Check::fail("PoliteMail", e.to_string(), fix));
                    }
                    Err(PoliteMailError::Service(e)) if matches!(e.status, 401 | 403) => {
                        let fix = "check POLITEMAIL_TOKEN, or POLITEMAIL_USER and POLITEMAIL_PASSWORD";
                        return checks.push(Check::fail("PoliteMail", format!("credentials refused: {e}"), fix));
                    }
                    _ => {}
                }
                reached = true;
                let url = client.base_url().to_string();
                checks.push(Check::pass("PoliteMail", format!("{url}: reachable, credentials accepted")));
            }
            checks.push(match result {
                Ok(found) => Check::pass(format!("list {list}"), format!("found (ID {})", found.id)),
                Err(e) => {
                    Check::fail(format!("list {list}"), e.to_string(), "check the list's name or ID in the config")
                }
            });
        }
    });
}

/// Our clock against the `Date` of Graph's answers.
pub fn clock(reading: Option<ClockReading>, uses_graph: bool) -> Check {
    let Some(reading) = reading else {
        if !uses_graph {
            return Check::pass("clock", "not compared: this role does not use Microsoft Graph here");
        }
        return Check::warn(
            "clock",
            "not compared: Microsoft Graph did not answer",
            "fix the sign-in first; then doctor compares the clock with Graph's",
        );
    };
    let detail = reading.describe();
    if reading.is_off() {
        return Check::warn(
            "clock",
            detail,
            "set the clock right (turn on time synchronisation, NTP): plan expiry and key validity depend on it",
        );
    }
    Check::pass("clock", detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(skew_seconds: i64) -> ClockReading {
        let graph = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        ClockReading { graph, local: graph + chrono::Duration::seconds(skew_seconds) }
    }

    #[test]
    fn the_clock_warns_above_two_minutes_either_way() {
        assert_eq!(clock(Some(reading(119)), true).status, super::super::Status::Pass);
        let ahead = clock(Some(reading(121)), true);
        assert_eq!(ahead.status, super::super::Status::Warn);
        assert!(ahead.detail.contains("121s ahead of"), "{}", ahead.detail);
        assert!(clock(Some(reading(-300)), true).detail.contains("300s behind"));
        assert_eq!(clock(None, false).status, super::super::Status::Pass);
        assert_eq!(clock(None, true).status, super::super::Status::Warn);
    }
}
