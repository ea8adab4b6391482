//! What a Graph access token says about who holds it and what they may do, read from its claims.
//!
//! Application tokens carry `roles` (application permissions); delegated tokens (a person signed in) carry `scp`
//! (delegated scopes), the person's `oid` and name, and `wids` (the directory roles active when the token was
//! issued). writeback never checks a Graph token's signature (Graph does; the token is not meant for the client):
//! it reads the claims only to explain a refusal, to check a role's needs in `doctor`, and to record who acted.
//!
//! Graph enforces the permissions; writeback explains them. A broader permission counts for a narrower one
//! (`Group.ReadWrite.All` for `GroupMember.ReadWrite.All`; the `Directory.AccessAsUser.All` scope that Azure CLI
//! tokens carry for everything the signed-in person may do).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};

use crate::identity::{ActorKind, EntraActor};

/// Directory role template id: Global Administrator.
pub const GLOBAL_ADMINISTRATOR: &str = "62e90394-69f5-4237-9190-012177145e10";
/// Directory role template id: Groups Administrator.
pub const GROUPS_ADMINISTRATOR: &str = "fdd7a751-b60b-444a-984c-02652fe8fa1c";
/// Directory role template id: User Administrator.
pub const USER_ADMINISTRATOR: &str = "fe930be7-5e62-47db-91af-98c3a49a38b1";
/// Directory role template id: Privileged Role Administrator.
pub const PRIVILEGED_ROLE_ADMINISTRATOR: &str = "e8611ab8-c189-46e8-94e1-60213ab1f814";

/// Application or delegated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// An application acting as itself (`roles`).
    Application,
    /// A person signed in through an application (`scp`).
    Delegated,
}

/// The claims writeback reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenClaims {
    /// `tid`: the tenant.
    pub tenant_id: Option<String>,
    /// `oid`: the person's (or the service principal's) object id.
    pub object_id: Option<String>,
    /// `appid` (v1) or `azp` (v2): the application's client id.
    pub app_id: Option<String>,
    /// `app_displayname`, when present.
    pub app_name: Option<String>,
    /// `upn`, `preferred_username` or `unique_name`: the person's sign-in name.
    pub user_name: Option<String>,
    /// `idtyp`: `app` or `user`, when the token says.
    pub idtyp: Option<String>,
    /// `roles`: application permissions.
    pub roles: Vec<String>,
    /// `scp`: delegated scopes.
    pub scopes: Vec<String>,
    /// `wids`: directory role template ids of a person.
    pub wids: Vec<String>,
    /// `exp`.
    pub expires_at: Option<DateTime<Utc>>,
}

impl TokenClaims {
    /// Reads the claims of a JWT without checking its signature; `None` for an opaque token.
    pub fn parse(token: &str) -> Option<TokenClaims> {
        let payload = token.split('.').nth(1)?;
        let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let text = |name: &str| v.get(name).and_then(|x| x.as_str()).filter(|x| !x.is_empty()).map(str::to_string);
        let list = |name: &str| -> Vec<String> {
            v.get(name)
                .and_then(|x| x.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_str()).map(str::to_string).collect())
                .unwrap_or_default()
        };
        Some(TokenClaims {
            tenant_id: text("tid"),
            object_id: text("oid"),
            app_id: text("appid").or_else(|| text("azp")),
            app_name: text("app_displayname"),
            user_name: text("upn").or_else(|| text("preferred_username")).or_else(|| text("unique_name")),
            idtyp: text("idtyp"),
            roles: list("roles"),
            scopes: text("scp").map(|s| s.split_whitespace().map(str::to_string).collect()).unwrap_or_default(),
            wids: list("wids"),
            expires_at: v.get("exp").and_then(|x| x.as_i64()).and_then(|s| DateTime::from_timestamp(s, 0)),
        })
    }

    /// Application or delegated: `idtyp` when present, else delegated when there are scopes.
    pub fn token_type(&self) -> TokenType {
        match self.idtyp.as_deref() {
            Some("app") => TokenType::Application,
            Some("user") => TokenType::Delegated,
            _ if !self.scopes.is_empty() => TokenType::Delegated,
            _ => TokenType::Application,
        }
    }

    /// The permissions the token carries: `roles` of an application token, `scp` of a delegated one.
    pub fn permissions(&self) -> &[String] {
        match self.token_type() {
            TokenType::Application => &self.roles,
            TokenType::Delegated => &self.scopes,
        }
    }

    /// True when the token carries a permission that allows `need`.
    pub fn allows(&self, need: Need) -> bool {
        let kind = self.token_type();
        self.permissions().iter().any(|p| need.satisfied_by(kind).iter().any(|s| s.eq_ignore_ascii_case(p)))
    }

    /// The names of the directory roles in `wids` that writeback knows.
    pub fn role_names(&self) -> Vec<&'static str> {
        self.wids.iter().filter_map(|w| role_name(w)).collect()
    }

    /// For a delegated token: whether the person's active directory roles allow changing the members of any group
    /// that is not role-assignable (`role_assignable`: of a role-assignable group).
    pub fn roles_may_change_members(&self, role_assignable: bool) -> bool {
        let allowed: &[&str] = if role_assignable {
            &[GLOBAL_ADMINISTRATOR, PRIVILEGED_ROLE_ADMINISTRATOR]
        } else {
            &[GLOBAL_ADMINISTRATOR, GROUPS_ADMINISTRATOR, USER_ADMINISTRATOR]
        };
        self.wids.iter().any(|w| allowed.iter().any(|a| a.eq_ignore_ascii_case(w)))
    }
}

impl TokenClaims {
    /// Who the token stands for, signed in with `auth`: the person (object id, UPN) of a delegated token, the
    /// application (client id, display name) of an application token. `None` when the claims do not say.
    pub fn actor(&self, auth: super::AuthKind) -> Option<EntraActor> {
        let (kind, id, name) = match self.token_type() {
            TokenType::Delegated => (ActorKind::User, self.object_id.clone()?, self.user_name.clone()),
            TokenType::Application => (ActorKind::Application, self.app_id.clone()?, self.app_name.clone()),
        };
        Some(EntraActor { kind, id, name, tenant_id: self.tenant_id.clone(), auth: auth.as_str().to_string() })
    }
}

/// The name of a directory role template id writeback knows.
pub fn role_name(template_id: &str) -> Option<&'static str> {
    [
        (GLOBAL_ADMINISTRATOR, "Global Administrator"),
        (GROUPS_ADMINISTRATOR, "Groups Administrator"),
        (USER_ADMINISTRATOR, "User Administrator"),
        (PRIVILEGED_ROLE_ADMINISTRATOR, "Privileged Role Administrator"),
    ]
    .iter()
    .find(|(id, _)| id.eq_ignore_ascii_case(template_id))
    .map(|(_, name)| *name)
}

/// Something a command asks Graph to do, and the permissions that allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Find a group and read its properties.
    ReadGroups,
    /// List a group's members.
    ReadMembers,
    /// Read users with their `proxyAddresses`.
    ReadUsers,
    /// Add and remove members.
    WriteMembers,
    /// Add and remove members of a role-assignable group.
    WriteRoleAssignableMembers,
}

impl Need {
    /// The least privileged permission that allows it.
    pub fn permission(self) -> &'static str {
        match self {
            Need::ReadGroups | Need::ReadMembers => "GroupMember.Read.All",
            Need::ReadUsers => "User.Read.All",
            Need::WriteMembers => "GroupMember.ReadWrite.All",
            Need::WriteRoleAssignableMembers => "RoleManagement.ReadWrite.Directory",
        }
    }

    /// Every permission that allows it, for tokens of `kind`.
    pub fn satisfied_by(self, kind: TokenType) -> &'static [&'static str] {
        let delegated = kind == TokenType::Delegated;
        match (self, delegated) {
            (Need::ReadGroups | Need::ReadMembers, false) => &[
                "GroupMember.Read.All",
                "GroupMember.ReadWrite.All",
                "Group.Read.All",
                "Group.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
            (Need::ReadGroups | Need::ReadMembers, true) => &[
                "GroupMember.Read.All",
                "GroupMember.ReadWrite.All",
                "Group.Read.All",
                "Group.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
                "Directory.AccessAsUser.All",
            ],
            (Need::ReadUsers, false) => {
                &["User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"]
            }
            (Need::ReadUsers, true) => &[
                "User.Read.All",
                "User.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
                "Directory.AccessAsUser.All",
            ],
            (Need::WriteMembers, false) => {
                &["GroupMember.ReadWrite.All", "Group.ReadWrite.All", "Directory.ReadWrite.All"]
            }
            (Need::WriteMembers, true) => &[
                "GroupMember.ReadWrite.All",
                "Group.ReadWrite.All",
                "Directory.ReadWrite.All",
                "Directory.AccessAsUser.All",
            ],
            (Need::WriteRoleAssignableMembers, _) => &["RoleManagement.ReadWrite.Directory"],
        }
    }

    /// What it is, for messages: "reading groups".
    pub fn what(self) -> &'static str {
        match self {
            Need::ReadGroups => "reading groups",
            Need::ReadMembers => "listing a group's members",
            Need::ReadUsers => "reading users (with their proxyAddresses)",
            Need::WriteMembers => "adding and removing group members",
            Need::WriteRoleAssignableMembers => "changing the members of a role-assignable group",
        }
    }

    fn is_write(self) -> bool {
        matches!(self, Need::WriteMembers | Need::WriteRoleAssignableMembers)
    }
}

/// Who runs a command, for the permissions it needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Makes plans: reads groups, members and users.
    #[default]
    Planner,
    /// Approves plans: needs no Graph access.
    Approver,
    /// Applies plans: changes members and reads users.
    Admin,
}

impl Role {
    /// `planner`, `approver` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Planner => "planner",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    /// What the role asks of Graph.
    pub fn needs(self) -> &'static [Need] {
        match self {
            Role::Planner => &[Need::ReadMembers, Need::ReadUsers],
            Role::Approver => &[],
            Role::Admin => &[Need::WriteMembers, Need::ReadUsers],
        }
    }

    /// The needs `claims` does not cover.
    pub fn missing(self, claims: &TokenClaims) -> Vec<Need> {
        self.needs().iter().copied().filter(|n| !claims.allows(*n)).collect()
    }
}

fn listed(items: &[String], none: &str) -> String {
    if items.is_empty() {
        none.to_string()
    } else {
        items.join(", ")
    }
}

/// Why Graph answered 403 to `need`, in words that name the missing permission or role. `claims` is `None` for an
/// opaque token.
pub fn explain_forbidden(claims: Option<&TokenClaims>, need: Need) -> String {
    let Some(claims) = claims else {
        return format!("{} needs the {} permission (see docs/permissions.md)", need.what(), need.permission());
    };
    let kind = claims.token_type();
    if !claims.allows(need) {
        return match kind {
            TokenType::Application => format!(
                "{} needs the application permission {} (with admin consent); the app's token has: {}. Add it to \
                 the app registration (see docs/permissions.md)",
                need.what(),
                need.permission(),
                listed(&claims.roles, "no application permissions")
            ),
            TokenType::Delegated => format!(
                "{} needs the delegated permission {} (with admin consent); your token has: {}. Consent to it for \
                 the app you sign in with (see docs/permissions.md)",
                need.what(),
                need.permission(),
                listed(&claims.scopes, "no scopes")
            ),
        };
    }
    match (kind, need.is_write()) {
        (TokenType::Application, true) => format!(
            "the app has {}, so Graph refused for another reason: a role-assignable group also needs \
             RoleManagement.ReadWrite.Directory, and groups that are dynamic, mail-enabled or synced from \
             on-premises cannot be changed through Graph (see docs/permissions.md)",
            listed(&claims.roles, "")
        ),
        (TokenType::Delegated, true) => {
            let roles = claims.role_names();
            format!(
                "your token has the scope, so Graph refused because of what you may do in the directory: to change a \
                 group's members you must own the group or hold Groups Administrator or User Administrator \
                 (Privileged Role Administrator and the RoleManagement.ReadWrite.Directory scope for a \
                 role-assignable group); your token shows {}. A role granted through PIM must be activated first, \
                 and roles scoped to an administrative unit or custom roles do not show in the token",
                if roles.is_empty() { "no such directory role".to_string() } else { roles.join(", ") }
            )
        }
        (_, false) => format!(
            "the token has {}, so Graph refused for another reason (a guest account, or access limited by an \
             administrative unit)",
            listed(claims.permissions(), "")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(claims: serde_json::Value) -> String {
        format!("eyJhbGciOiJub25lIn0.{}.sig", URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    #[test]
    fn application_and_delegated_tokens() {
        let app = TokenClaims::parse(&token(serde_json::json!({
            "tid": "t1", "oid": "sp", "appid": "client-1", "app_displayname": "writeback admin", "idtyp": "app",
            "roles": ["GroupMember.ReadWrite.All", "User.Read.All"], "exp": 1_700_000_000
        })))
        .unwrap();
        assert_eq!(app.token_type(), TokenType::Application);
        assert!(Role::Admin.missing(&app).is_empty());
        assert!(Role::Planner.missing(&app).is_empty(), "ReadWrite includes Read");
        assert_eq!(app.expires_at, DateTime::from_timestamp(1_700_000_000, 0));
        let person = TokenClaims::parse(&token(serde_json::json!({
            "tid": "t1", "oid": "u1", "azp": "04b07795-8ddb-461a-bbee-02f9e1bf7b46", "upn": "ada@contoso.example",
            "scp": "GroupMember.Read.All User.ReadBasic.All", "wids": [GROUPS_ADMINISTRATOR, "b79fbf4d-3ef9-4689-8143-76b194e85509"]
        })))
        .unwrap();
        assert_eq!(person.token_type(), TokenType::Delegated);
        assert_eq!(person.user_name.as_deref(), Some("ada@contoso.example"));
        assert_eq!(Role::Planner.missing(&person), [Need::ReadUsers], "ReadBasic lacks proxyAddresses");
        assert_eq!(Role::Admin.missing(&person), [Need::WriteMembers, Need::ReadUsers]);
        assert_eq!(person.role_names(), ["Groups Administrator"]);
        assert!(person.roles_may_change_members(false));
        assert!(!person.roles_may_change_members(true));
        // Azure CLI tokens carry Directory.AccessAsUser.All, which counts for a person but is no app permission.
        let az = TokenClaims { scopes: vec!["Directory.AccessAsUser.All".into()], ..TokenClaims::default() };
        assert!(Role::Admin.missing(&az).is_empty());
        let odd = TokenClaims { roles: vec!["Directory.AccessAsUser.All".into()], ..TokenClaims::default() };
        assert_eq!(Role::Planner.missing(&odd), [Need::ReadMembers, Need::ReadUsers]);
        assert!(TokenClaims::parse("opaque").is_none());
    }

    #[test]
    fn the_actor_of_each_token_type() {
        use crate::signin::AuthKind;
        let person = TokenClaims {
            tenant_id: Some("t1".into()),
            object_id: Some("u1".into()),
            app_id: Some("04b07795-8ddb-461a-bbee-02f9e1bf7b46".into()),
            user_name: Some("ada@contoso.example".into()),
            scopes: vec!["User.Read.All".into()],
            ..TokenClaims::default()
        };
        let actor = person.actor(AuthKind::AzureCli).unwrap();
        assert_eq!(actor.kind, ActorKind::User);
        assert_eq!((actor.id.as_str(), actor.name.as_deref()), ("u1", Some("ada@contoso.example")));
        assert_eq!(actor.auth, "azure-cli");
        assert_eq!(actor.label(), "user ada@contoso.example (id u1, azure-cli)");
        let app = TokenClaims {
            tenant_id: Some("t1".into()),
            object_id: Some("sp".into()),
            app_id: Some("client-1".into()),
            roles: vec!["User.Read.All".into()],
            ..TokenClaims::default()
        };
        let actor = app.actor(AuthKind::Secret).unwrap();
        assert_eq!((actor.kind, actor.id.as_str(), actor.name.as_deref()), (ActorKind::Application, "client-1", None));
        assert!(actor.other_tenant_than(Some("T2")) && !actor.other_tenant_than(Some("T1")));
        assert!(TokenClaims::default().actor(AuthKind::Token).is_none());
    }

    #[test]
    fn a_refusal_names_the_missing_scope_or_role() {
        let person = TokenClaims {
            scopes: vec!["GroupMember.Read.All".into(), "User.Read.All".into()],
            ..TokenClaims::default()
        };
        let text = explain_forbidden(Some(&person), Need::WriteMembers);
        assert!(text.contains("delegated permission GroupMember.ReadWrite.All"), "{text}");
        assert!(text.contains("GroupMember.Read.All, User.Read.All"), "{text}");
        let admin_scope = TokenClaims { scopes: vec!["GroupMember.ReadWrite.All".into()], ..TokenClaims::default() };
        let text = explain_forbidden(Some(&admin_scope), Need::WriteMembers);
        assert!(text.contains("own the group") && text.contains("Groups Administrator"), "{text}");
        assert!(text.contains("no such directory role") && text.contains("PIM"), "{text}");
        let app = TokenClaims { roles: vec!["GroupMember.Read.All".into()], ..TokenClaims::default() };
        let text = explain_forbidden(Some(&app), Need::ReadUsers);
        assert!(text.contains("application permission User.Read.All"), "{text}");
        assert!(explain_forbidden(None, Need::ReadMembers).contains("GroupMember.Read.All"));
    }
}
