//! The Graph client as `apply`'s backend: the gates' reads ([`DirectoryReads`]) and the `$batch` transport
//! ([`Transport`]). This is the only file of `apply` that knows the client's types.

use reqwest::Method as HttpMethod;

use super::executor::{BatchAnswer, ItemResponse, Method, Request, Transport, TransportError};
use super::gates::{DirectoryReads, GroupState};
use super::GraphFailure;
use crate::directory::graph::{BatchItem, GraphClient, GraphError};
use crate::error::Result;
use crate::http::HttpError;
use crate::identity::ObjectId;

/// A Graph client used by `apply`.
#[derive(Debug, Clone)]
pub struct GraphBackend {
    client: GraphClient,
}

impl GraphBackend {
    /// Wraps a client.
    pub fn new(client: GraphClient) -> GraphBackend {
        GraphBackend { client }
    }

    /// A client for the sign-in settings of the flags, the environment and the config.
    pub fn connect(settings: &crate::signin::SignInSettings) -> Result<GraphBackend> {
        Ok(GraphBackend::new(GraphClient::connect(settings)?))
    }

    /// The client.
    pub fn client(&self) -> &GraphClient {
        &self.client
    }

    /// The Graph base URL without a trailing `/`, for `members@odata.bind` references.
    pub fn bind_base(&self) -> String {
        self.client.base_url().as_str().trim_end_matches('/').to_string()
    }
}

impl DirectoryReads for GraphBackend {
    async fn tenant_id(&self) -> Result<String> {
        Ok(self.client.tenant_id().await?)
    }

    async fn group(&self, id: &ObjectId) -> Result<Option<GroupState>> {
        match self.client.find_group(id.as_str()).await {
            Ok(group) => Ok(Some(GroupState {
                display_name: (!group.display_name.is_empty()).then(|| group.display_name.clone()),
                not_manageable: group.manageability().err(),
            })),
            Err(GraphError::GroupNotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn members(&self, id: &ObjectId) -> Result<Vec<crate::directory::GroupMember>> {
        Ok(self.client.list_members(id).await?)
    }

    async fn users_by_id(&self, ids: &[ObjectId]) -> Result<Vec<crate::directory::DirectoryUser>> {
        Ok(self.client.users_by_id(ids).await?)
    }

    async fn deleted_items(&self, ids: &[ObjectId]) -> Result<Vec<(ObjectId, crate::directory::graph::DeletedItem)>> {
        Ok(self.client.deleted_items(ids).await?)
    }
}

impl Transport for GraphBackend {
    async fn send(&self, items: Vec<Request>) -> Result<BatchAnswer, TransportError> {
        let batch: Vec<BatchItem> = items
            .iter()
            .map(|r| BatchItem {
                id: r.id().to_string(),
                method: match r.method() {
                    Method::Patch => HttpMethod::PATCH,
                    Method::Delete => HttpMethod::DELETE,
                },
                url: r.url().to_string(),
                body: r.body().cloned(),
            })
            .collect();
        let reply = self.client.batch(batch).await.map_err(transport_error)?;
        let items = reply
            .items
            .into_iter()
            .map(|a| ItemResponse {
                error: a.error.map(|e| GraphFailure {
                    status: a.status,
                    code: Some(e.code).filter(|c| !c.is_empty()),
                    message: Some(e.message).filter(|m| !m.is_empty()),
                    request_id: e.request_id,
                }),
                id: a.id,
                status: a.status,
                retry_after: a.retry_after,
                request_id: a.request_id,
                throttle_information: a.throttle_information,
            })
            .collect();
        Ok(BatchAnswer { items, client_request_id: reply.client_request_id, request_id: reply.request_id })
    }
}

/// Whether sending the same `$batch` again can help, and the request's status and Retry-After.
fn transport_error(e: GraphError) -> TransportError {
    let service = match &e {
        GraphError::Http(h) => h.service_error(),
        GraphError::Service(s) => Some(s.as_ref()),
        _ => None,
    };
    let status = service.map(|s| s.status);
    let retry_after = service.and_then(|s| s.retry_after);
    let retryable = match &e {
        GraphError::Http(HttpError::Transport { .. }) | GraphError::Protocol { .. } => true,
        _ => status.is_some_and(|s| crate::retry::classify(s) != crate::retry::Verdict::Final),
    };
    TransportError { message: e.to_string(), retryable, status, retry_after }
}

impl super::backend::Backend for GraphBackend {
    fn bind_base(&self) -> String {
        GraphBackend::bind_base(self)
    }

    fn retry_policy(&self) -> crate::retry::RetryPolicy {
        self.client.retry_policy().clone()
    }

    fn explain_forbidden(&self) -> Option<String> {
        Some(self.client.explain_forbidden(crate::signin::Need::WriteMembers))
    }

    fn clock(&self) -> Option<crate::directory::graph::ClockReading> {
        self.client.clock()
    }

    fn entra_actor(&self) -> Option<crate::identity::EntraActor> {
        self.client.entra_actor()
    }
}
