//! Finding a group, judging whether Graph can change its members, and listing its direct members.

use reqwest::Method;
use serde_json::Value;

use super::{str_field, GraphClient, GraphError, Kind};
use crate::directory::{DirectoryUser, GroupInfo, GroupMember, MemberKind};
use crate::http::{encode_query_value, odata_string};
use crate::identity::ObjectId;
use crate::signin::Need;

/// The group properties writeback reads.
pub const GROUP_SELECT: &str =
    "id,displayName,groupTypes,mailEnabled,securityEnabled,onPremisesSyncEnabled,isAssignableToRole,membershipRule";

/// The member properties writeback reads.
pub const MEMBER_SELECT: &str = "id,userPrincipalName,displayName,mail";

/// A group as Graph describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphGroup {
    /// Object id.
    pub id: ObjectId,
    /// displayName (empty when Graph gave none).
    pub display_name: String,
    /// groupTypes (`Unified`, `DynamicMembership`).
    pub group_types: Vec<String>,
    /// mailEnabled.
    pub mail_enabled: bool,
    /// securityEnabled.
    pub security_enabled: bool,
    /// onPremisesSyncEnabled: `Some(true)` while synced from on-premises AD.
    pub on_premises_sync_enabled: Option<bool>,
    /// isAssignableToRole.
    pub is_assignable_to_role: Option<bool>,
    /// membershipRule, for dynamic groups.
    pub membership_rule: Option<String>,
}

impl GraphGroup {
    fn has_type(&self, name: &str) -> bool {
        self.group_types.iter().any(|t| t.eq_ignore_ascii_case(name))
    }

    /// Whether writeback may change this group's members through Graph: `Ok(warnings)` when it may,
    /// `Err(reason)` when it may not (dynamic membership, mail-enabled security group, distribution group,
    /// synced from on-premises).
    pub fn manageability(&self) -> Result<Vec<String>, String> {
        let name = format!("group '{}' ({})", self.display_name, self.id);
        if self.has_type("DynamicMembership") {
            let rule = self.membership_rule.as_deref().map(|r| format!(" (rule: {r})")).unwrap_or_default();
            return Err(format!(
                "{name} has dynamic membership{rule}; its members follow the rule and cannot be added or removed"
            ));
        }
        if self.on_premises_sync_enabled == Some(true) {
            return Err(format!(
                "{name} is synced from on-premises Active Directory; change its members there, not in Entra ID"
            ));
        }
        if !self.has_type("Unified") && self.mail_enabled {
            let kind = if self.security_enabled { "a mail-enabled security group" } else { "a distribution group" };
            return Err(format!(
                "{name} is {kind}, which Microsoft Graph cannot change; manage its members in Exchange Online"
            ));
        }
        let mut warnings = Vec::new();
        if self.is_assignable_to_role == Some(true) {
            warnings.push(format!(
                "{name} can be assigned to Entra roles: its members receive those roles, and changing them also \
                 needs RoleManagement.ReadWrite.Directory"
            ));
        }
        Ok(warnings)
    }

    /// The id and name, for planning.
    pub fn info(&self) -> GroupInfo {
        GroupInfo {
            id: self.id.clone(),
            display_name: (!self.display_name.is_empty()).then(|| self.display_name.clone()),
        }
    }

    fn from_json(value: &Value) -> Result<GraphGroup, String> {
        let raw_id = str_field(value, "id").ok_or("a group without an id")?;
        let id = ObjectId::parse(&raw_id).map_err(|e| e.to_string())?;
        Ok(GraphGroup {
            id,
            display_name: str_field(value, "displayName").unwrap_or_default(),
            group_types: value
                .get("groupTypes")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default(),
            mail_enabled: value.get("mailEnabled").and_then(Value::as_bool).unwrap_or(false),
            security_enabled: value.get("securityEnabled").and_then(Value::as_bool).unwrap_or(false),
            on_premises_sync_enabled: value.get("onPremisesSyncEnabled").and_then(Value::as_bool),
            is_assignable_to_role: value.get("isAssignableToRole").and_then(Value::as_bool),
            membership_rule: str_field(value, "membershipRule").filter(|r| !r.trim().is_empty()),
        })
    }
}

const GROUP_READ_HINT: Need = Need::ReadGroups;

impl GraphClient {
    /// Finds a group by object id, or else by exact display name. No match, or several, is an error that lists
    /// the candidates (id and name).
    pub async fn find_group(&self, id_or_name: &str) -> Result<GraphGroup, GraphError> {
        let wanted = id_or_name.trim();
        if let Ok(id) = ObjectId::parse(wanted) {
            let url = self.url(&format!("/groups/{id}?$select={GROUP_SELECT}"))?;
            let sent = self.execute(Method::GET, &url, Kind::Other, &[], None).await?;
            if sent.response.status() == 404 {
                return Err(GraphError::GroupNotFound(format!(
                    "no group with id {id} in this tenant (was it deleted, or is this the wrong tenant?)"
                )));
            }
            if !sent.response.status().is_success() {
                return Err(self.fail(&Method::GET, sent, GROUP_READ_HINT).await);
            }
            let body = super::read_json(sent, &url).await?;
            return GraphGroup::from_json(&body)
                .map_err(|reason| GraphError::Protocol { what: format!("GET /groups/{id}"), reason });
        }
        if wanted.is_empty() {
            return Err(GraphError::GroupNotFound("the group name is empty".into()));
        }
        let filter = format!("displayName eq {}", odata_string(wanted));
        let url = self.url(&format!("/groups?$filter={}&$select={GROUP_SELECT}", encode_query_value(&filter)))?;
        let mut groups = Vec::new();
        let mut next = Some(url);
        while let Some(url) = next {
            let page = self.get_json(url, Kind::Other, &[], GROUP_READ_HINT).await?;
            for item in page.get("value").and_then(Value::as_array).into_iter().flatten() {
                groups.push(
                    GraphGroup::from_json(item)
                        .map_err(|reason| GraphError::Protocol { what: "GET /groups".into(), reason })?,
                );
            }
            next = self.next_link(&page, "GET /groups")?;
        }
        match groups.len() {
            1 => Ok(groups.remove(0)),
            0 => Err(GraphError::GroupNotFound(format!(
                "no group is named '{wanted}' (names must match exactly; or give the group's object id)"
            ))),
            n => {
                let list =
                    groups.iter().map(|g| format!("{} '{}'", g.id, g.display_name)).collect::<Vec<_>>().join(", ");
                Err(GraphError::AmbiguousGroup(format!(
                    "{n} groups are named '{wanted}': {list}; give the object id of the one you mean"
                )))
            }
        }
    }

    /// The group's direct members, following every `@odata.nextLink` (999 per page, so N members take
    /// ceil(N/999) requests, and at least one). Stops with [`GraphError::MissingPermission`] when users come
    /// back without a userPrincipalName (the app lacks User.Read.All).
    pub async fn list_members(&self, group_id: &ObjectId) -> Result<Vec<GroupMember>, GraphError> {
        Ok(self.members_with_select(group_id, MEMBER_SELECT).await?.0)
    }

    /// As [`GraphClient::list_members`] (same requests), selecting the user properties too, so that the member
    /// users also come back as [`DirectoryUser`]s (account state, user type, proxy addresses). A plan needs
    /// these to flag removals of disabled or guest accounts, as it would from the users export.
    pub async fn list_members_detailed(
        &self,
        group_id: &ObjectId,
    ) -> Result<(Vec<GroupMember>, Vec<DirectoryUser>), GraphError> {
        self.members_with_select(group_id, super::users::USER_SELECT).await
    }

    async fn members_with_select(
        &self,
        group_id: &ObjectId,
        select: &str,
    ) -> Result<(Vec<GroupMember>, Vec<DirectoryUser>), GraphError> {
        let mut members = Vec::new();
        let mut users = Vec::new();
        self.each_member_with_select(group_id, select, |member, user| {
            users.extend(user);
            members.push(member);
        })
        .await?;
        Ok((members, users))
    }

    /// As [`GraphClient::list_members_detailed`] (same requests), handing each member to `each` as its page is read
    /// instead of collecting them: with the member users' [`DirectoryUser`] (`None` for other objects). A page is
    /// the most that is held at once.
    pub async fn each_member_detailed(
        &self,
        group_id: &ObjectId,
        each: impl FnMut(GroupMember, Option<DirectoryUser>),
    ) -> Result<(), GraphError> {
        self.each_member_with_select(group_id, super::users::USER_SELECT, each).await
    }

    async fn each_member_with_select(
        &self,
        group_id: &ObjectId,
        select: &str,
        mut each: impl FnMut(GroupMember, Option<DirectoryUser>),
    ) -> Result<(), GraphError> {
        let what = format!("GET /groups/{group_id}/members");
        let mut next = Some(self.url(&format!("/groups/{group_id}/members?$select={select}&$top=999"))?);
        while let Some(url) = next {
            let sent = self.execute(Method::GET, &url, Kind::MemberPage, &[], None).await?;
            if sent.response.status() == 404 {
                return Err(GraphError::GroupNotFound(format!("no group with id {group_id} in this tenant")));
            }
            if !sent.response.status().is_success() {
                return Err(self.fail(&Method::GET, sent, Need::ReadMembers).await);
            }
            let page = super::read_json(sent, &url).await?;
            for item in page.get("value").and_then(Value::as_array).into_iter().flatten() {
                let member = member_from_json(item, group_id).map_err(|e| match e {
                    MemberError::Protocol(reason) => GraphError::Protocol { what: what.clone(), reason },
                    MemberError::Permission(m) => {
                        GraphError::MissingPermission(format!("{m}: {}", self.explain_forbidden(Need::ReadUsers)))
                    }
                })?;
                let user = if member.kind == MemberKind::User && select != MEMBER_SELECT {
                    Some(
                        super::users::user_from_json(item)
                            .map_err(|reason| GraphError::Protocol { what: what.clone(), reason })?,
                    )
                } else {
                    None
                };
                each(member, user);
            }
            crate::progress::page("Microsoft Graph", super::users::page_len(&page));
            next = self.next_link(&page, &what)?;
        }
        Ok(())
    }
}

impl GraphClient {
    /// Whether the group's members can be read: asks for one member id (`$top=1`), for `doctor`.
    pub async fn probe_members(&self, group_id: &ObjectId) -> Result<(), GraphError> {
        let url = self.url(&format!("/groups/{group_id}/members?$select=id&$top=1"))?;
        self.get_json(url, Kind::Other, &[], Need::ReadMembers).await.map(|_| ())
    }

    /// The object ids of the group's owners (first page: up to 100), for `doctor`.
    pub async fn owner_ids(&self, group_id: &ObjectId) -> Result<Vec<String>, GraphError> {
        let url = self.url(&format!("/groups/{group_id}/owners?$select=id&$top=100"))?;
        let page = self.get_json(url, Kind::Other, &[], GROUP_READ_HINT).await?;
        Ok(page
            .get("value")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|o| str_field(o, "id"))
            .collect())
    }
}

enum MemberError {
    Protocol(String),
    Permission(String),
}

fn member_from_json(item: &Value, group_id: &ObjectId) -> Result<GroupMember, MemberError> {
    let raw_id = str_field(item, "id").ok_or_else(|| MemberError::Protocol("a member without an id".into()))?;
    let id = ObjectId::parse(&raw_id).map_err(|e| MemberError::Protocol(e.to_string()))?;
    let kind = str_field(item, "@odata.type")
        .map(|t| MemberKind::from_type_name(&t))
        .unwrap_or_else(|| MemberKind::Other("unknown".into()));
    let upn = str_field(item, "userPrincipalName");
    if kind == MemberKind::User && upn.is_none() {
        return Err(MemberError::Permission(format!(
            "Microsoft Graph returned member user {id} of group {group_id} without a userPrincipalName"
        )));
    }
    Ok(GroupMember {
        id,
        kind,
        upn,
        display_name: str_field(item, "displayName"),
        mail: str_field(item, "mail"),
        source_line: None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{bind, client, serve, spawn};
    use super::*;
    use axum::extract::{Path, Query};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Json;
    use std::collections::HashMap;

    fn group(types: &[&str], mail: bool, security: bool, sync: Option<bool>) -> GraphGroup {
        GraphGroup {
            id: ObjectId::parse("11111111-2222-3333-4444-555555555555").unwrap(),
            display_name: "G".into(),
            group_types: types.iter().map(|s| s.to_string()).collect(),
            mail_enabled: mail,
            security_enabled: security,
            on_premises_sync_enabled: sync,
            is_assignable_to_role: None,
            membership_rule: None,
        }
    }

    #[test]
    fn which_groups_are_manageable() {
        assert_eq!(group(&[], false, true, None).manageability(), Ok(vec![]));
        assert_eq!(group(&["Unified"], true, false, Some(false)).manageability(), Ok(vec![]));
        assert!(group(&["Unified", "DynamicMembership"], true, false, None)
            .manageability()
            .unwrap_err()
            .contains("dynamic"));
        assert!(group(&[], true, true, None).manageability().unwrap_err().contains("mail-enabled security"));
        assert!(group(&[], true, false, None).manageability().unwrap_err().contains("distribution"));
        assert!(group(&[], false, true, Some(true)).manageability().unwrap_err().contains("on-premises"));
        let mut role = group(&[], false, true, None);
        role.is_assignable_to_role = Some(true);
        assert_eq!(role.manageability().unwrap().len(), 1);
    }

    fn uid(n: usize) -> String {
        crate::fixtures::uid(n as u32)
    }

    #[tokio::test]
    async fn members_are_paged_by_next_link_taken_whole() {
        const N: usize = 2500;
        let (listener, base) = bind().await;
        let origin = base.origin().ascii_serialization();
        let router = axum::Router::new().route(
            "/v1.0/groups/{id}/members",
            get(move |Query(q): Query<HashMap<String, String>>| {
                let origin = origin.clone();
                async move {
                    assert_eq!(q.get("$top").map(String::as_str), Some("999"));
                    assert_eq!(q.get("$select").map(String::as_str), Some(MEMBER_SELECT));
                    let skip: usize =
                        q.get("$skiptoken").map(|s| s.trim_start_matches('X').parse().unwrap()).unwrap_or(0);
                    let end = (skip + 999).min(N);
                    let value: Vec<Value> = (skip..end)
                        .map(|i| {
                            if i % 500 == 7 {
                                serde_json::json!({"@odata.type": "#microsoft.graph.group", "id": uid(i)})
                            } else {
                                serde_json::json!({"@odata.type": "#microsoft.graph.user", "id": uid(i),
                                    "userPrincipalName": format!("u{i}@contoso.com"), "mail": null})
                            }
                        })
                        .collect();
                    let mut body = serde_json::json!({ "value": value });
                    if end < N {
                        // An opaque token: the client must follow the link as it is.
                        body["@odata.nextLink"] = Value::String(format!(
                            "{origin}/v1.0/groups/g/members?$select={MEMBER_SELECT}&$top=999&$skiptoken=X{end}"
                        ));
                    }
                    Json(body)
                }
            }),
        );
        spawn(listener, router);
        let client = client(&base);
        let id = ObjectId::parse("11111111-2222-3333-4444-555555555555").unwrap();
        let members = client.list_members(&id).await.unwrap();
        assert_eq!(members.len(), N);
        assert_eq!(members.iter().filter(|m| m.kind == MemberKind::Group).count(), 5);
        assert_eq!(client.counts().member_pages, N.div_ceil(999) as u64);
        assert_eq!(client.counts().total, 3);
    }

    #[tokio::test]
    async fn detailed_members_carry_user_state() {
        let router = axum::Router::new().route(
            "/v1.0/groups/{id}/members",
            get(|Query(q): Query<HashMap<String, String>>| async move {
                assert_eq!(q.get("$select").map(String::as_str), Some(super::super::USER_SELECT));
                Json(serde_json::json!({"value": [
                    {"@odata.type": "#microsoft.graph.user", "id": uid(1), "userPrincipalName": "a@x.com",
                     "accountEnabled": false, "userType": "Guest", "proxyAddresses": ["SMTP:a@x.com"]},
                    {"@odata.type": "#microsoft.graph.device", "id": uid(2), "displayName": "KIOSK"}
                ]}))
            }),
        );
        let base = serve(router).await;
        let c = client(&base);
        let (members, users) = c.list_members_detailed(&ObjectId::parse(&uid(9)).unwrap()).await.unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(users.len(), 1);
        assert!(users[0].is_disabled() && users[0].is_guest());
        assert_eq!(c.counts().member_pages, 1);
    }

    #[tokio::test]
    async fn users_without_upn_name_the_missing_permission() {
        let router = axum::Router::new().route(
            "/v1.0/groups/{id}/members",
            get(|| async {
                Json(serde_json::json!({"value": [{"@odata.type": "#microsoft.graph.user", "id": uid(1),
                    "userPrincipalName": null, "mail": null, "displayName": null}]}))
            }),
        );
        let base = serve(router).await;
        let err = client(&base).list_members(&ObjectId::parse(&uid(9)).unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("User.Read.All"), "{err}");
    }

    #[tokio::test]
    async fn find_group_by_name_escapes_and_reports_candidates() {
        let router = axum::Router::new()
            .route(
                "/v1.0/groups",
                get(|Query(q): Query<HashMap<String, String>>| async move {
                    let filter = q.get("$filter").cloned().unwrap_or_default();
                    let value = match filter.as_str() {
                        "displayName eq 'O''Brien & Co'" => {
                            vec![serde_json::json!({"id": uid(1), "displayName": "O'Brien & Co",
                        "groupTypes": [], "mailEnabled": false, "securityEnabled": true})]
                        }
                        "displayName eq 'Twins'" => vec![
                            serde_json::json!({"id": uid(2), "displayName": "Twins"}),
                            serde_json::json!({"id": uid(3), "displayName": "Twins"}),
                        ],
                        _ => vec![],
                    };
                    Json(serde_json::json!({ "value": value }))
                }),
            )
            .route(
                "/v1.0/groups/{id}",
                get(|Path(id): Path<String>| async move {
                    if id == uid(4) {
                        Json(serde_json::json!({"id": uid(4), "displayName": "By id", "groupTypes": ["Unified"]}))
                            .into_response()
                    } else {
                        (
                            axum::http::StatusCode::NOT_FOUND,
                            Json(serde_json::json!({"error": {"code": "Request_ResourceNotFound", "message": "nope"}})),
                        )
                            .into_response()
                    }
                }),
            );
        let base = serve(router).await;
        let client = client(&base);
        assert_eq!(client.find_group("O'Brien & Co").await.unwrap().id.as_str(), uid(1));
        let err = client.find_group("Twins").await.unwrap_err();
        assert!(matches!(err, GraphError::AmbiguousGroup(_)));
        assert!(err.to_string().contains(&uid(2)) && err.to_string().contains(&uid(3)), "{err}");
        assert!(matches!(client.find_group("Nobody").await.unwrap_err(), GraphError::GroupNotFound(_)));
        assert_eq!(client.find_group(&uid(4).to_uppercase()).await.unwrap().display_name, "By id");
        assert!(matches!(client.find_group(&uid(5)).await.unwrap_err(), GraphError::GroupNotFound(_)));
    }
}
