//! [`TokenSource`]: gets access tokens from the chain's first kind that works, caches them in memory, and renews
//! them the way each kind allows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::chain::{Chain, Method, Skipped};
use super::claims::TokenClaims;
use super::client_credentials::{client_credentials, Proof, Tokens};
use super::{azure_cli, device_code, managed_identity};
use super::{AccessToken, Attempt, AuthKind, Endpoints, Secret, SignInError};
use crate::http::{wall_clock, Http};

/// Tokens are renewed this long before they expire.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// When to renew a token that is valid for `lifetime` from now: [`REFRESH_MARGIN`] before it expires, or halfway
/// for a short-lived one.
pub fn refresh_after(lifetime: Duration) -> Duration {
    if lifetime > REFRESH_MARGIN * 2 {
        lifetime - REFRESH_MARGIN
    } else {
        lifetime / 2
    }
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
}

#[derive(Default)]
struct State {
    /// The index of the candidate that gave a token.
    active: Option<usize>,
    /// Candidates tried that could not work here.
    unavailable: Vec<Skipped>,
    cached: Option<Cached>,
    /// A device-code sign-in's refresh token.
    refresh_token: Option<Secret>,
}

/// What the source knows about the token in use, for the actor, `doctor` and explanations.
#[derive(Debug, Clone)]
pub struct Current {
    /// The kind that gave it.
    pub kind: AuthKind,
    /// Why that kind was in the chain.
    pub reason: String,
    /// The token's claims (`None` for an opaque token).
    pub claims: Option<TokenClaims>,
}

/// Gets and caches access tokens for Graph; renews them [`REFRESH_MARGIN`] before they expire, or after a 401
/// ([`TokenSource::invalidate`]). Clones of a Graph client share one source.
pub struct TokenSource {
    http: Http,
    endpoints: Endpoints,
    chain: Chain,
    state: tokio::sync::Mutex<State>,
    current: Mutex<Option<Current>>,
    requests: AtomicU64,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource").field("chain", &self.chain).field("endpoints", &self.endpoints).finish()
    }
}

impl TokenSource {
    /// A source that tries `chain` against `endpoints`, sending through `http`.
    pub fn new(http: Http, chain: Chain, endpoints: Endpoints) -> TokenSource {
        TokenSource {
            http,
            endpoints,
            chain,
            state: tokio::sync::Mutex::new(State::default()),
            current: Mutex::new(None),
            requests: AtomicU64::new(0),
        }
    }

    /// The chain.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// How many token requests were made (to the sign-in endpoint, the managed identity endpoint or `az`).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The kind in use and the last token's claims, once a token was obtained.
    pub fn current(&self) -> Option<Current> {
        self.current.lock().ok().and_then(|c| c.clone())
    }

    /// The tenant the first candidate names, when it names one.
    pub fn configured_tenant(&self) -> Option<String> {
        self.chain.candidates.first().and_then(|c| c.method.tenant()).map(str::to_string)
    }

    /// False when the token in use cannot be renewed (a ready token).
    pub fn can_refresh(&self) -> bool {
        match self.current() {
            Some(current) => current.kind != AuthKind::Token,
            None => !matches!(self.chain.candidates.first().map(|c| &c.method), Some(Method::Token(_))),
        }
    }

    /// A valid access token, from the cache or freshly obtained.
    pub async fn token(&self) -> Result<Secret, SignInError> {
        let mut state = self.state.lock().await;
        if let Some(cached) = &state.cached {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        let (index, token) = match state.active {
            Some(index) => match self.fetch(index, &mut state).await {
                Ok(token) => (index, token),
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Unavailable(reason)) => {
                    let kind = self.chain.candidates[index].kind;
                    return Err(SignInError::Failed { kind, message: reason });
                }
            },
            None => self.first_that_works(&mut state).await?,
        };
        let lifetime = token
            .expires_at
            .map(|at| (at - wall_clock()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(3600));
        let candidate = &self.chain.candidates[index];
        if let Ok(mut current) = self.current.lock() {
            *current = Some(Current {
                kind: candidate.kind,
                reason: candidate.reason.clone(),
                claims: TokenClaims::parse(token.token.expose()),
            });
        }
        state.active = Some(index);
        state.cached =
            Some(Cached { token: token.token.clone(), refresh_at: Instant::now() + refresh_after(lifetime) });
        Ok(token.token)
    }

    /// Tries the candidates in order until one gives a token.
    async fn first_that_works(&self, state: &mut State) -> Result<(usize, AccessToken), SignInError> {
        for index in 0..self.chain.candidates.len() {
            match self.fetch(index, state).await {
                Ok(token) => {
                    let candidate = &self.chain.candidates[index];
                    tracing::info!("signed in with {} ({})", candidate.kind, candidate.reason);
                    return Ok((index, token));
                }
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Unavailable(reason)) => {
                    let kind = self.chain.candidates[index].kind;
                    tracing::info!("{kind}: {reason}; trying the next kind");
                    state.unavailable.push(Skipped { kind, reason });
                }
            }
        }
        if self.chain.requested != AuthKind::Auto {
            if let Some(s) = state.unavailable.first() {
                return Err(SignInError::Failed { kind: s.kind, message: s.reason.clone() });
            }
        }
        Err(SignInError::NoCredential(self.chain.nothing_worked(&state.unavailable)))
    }

    /// Forgets the cached token (after a 401). Returns false when the token cannot be renewed.
    pub async fn invalidate(&self) -> bool {
        if !self.can_refresh() {
            return false;
        }
        self.state.lock().await.cached = None;
        true
    }

    async fn fetch(&self, index: usize, state: &mut State) -> Result<AccessToken, Attempt> {
        let candidate = &self.chain.candidates[index];
        let resource = &self.endpoints.resource;
        let scope = self.endpoints.default_scope();
        let count = || {
            self.requests.fetch_add(1, Ordering::Relaxed);
        };
        let tokens = |t: Tokens| t.access;
        match &candidate.method {
            Method::Token(token) => Ok(AccessToken {
                token: token.clone(),
                expires_at: TokenClaims::parse(token.expose()).and_then(|c| c.expires_at),
            }),
            Method::ClientSecret { tenant, client_id, secret } => {
                count();
                let url = self.endpoints.token_url(tenant)?;
                Ok(client_credentials(&self.http, &url, client_id, &scope, Proof::Secret(secret)).await.map(tokens)?)
            }
            Method::Certificate { tenant, client_id, key, .. } => {
                count();
                let url = self.endpoints.token_url(tenant)?;
                Ok(client_credentials(&self.http, &url, client_id, &scope, Proof::Certificate(key))
                    .await
                    .map(tokens)?)
            }
            Method::WorkloadIdentity { tenant, client_id, token_file } => {
                count();
                let url = self.endpoints.token_url(tenant)?;
                let proof = Proof::FederatedFile(token_file);
                Ok(client_credentials(&self.http, &url, client_id, &scope, proof).await.map(tokens)?)
            }
            Method::ManagedIdentity { endpoint, client_id } => {
                count();
                managed_identity::get_token(&self.http, endpoint, resource, client_id.as_deref()).await
            }
            Method::AzureCli { program, tenant } => {
                count();
                azure_cli::get_token(program, resource, tenant.as_deref(), azure_cli::TIMEOUT).await
            }
            Method::DeviceCode { tenant, client_id } => {
                let url = self.endpoints.token_url(tenant)?;
                let scope = device_code::scope(resource);
                if let Some(refresh) = state.refresh_token.take() {
                    count();
                    match device_code::refresh(&self.http, &url, client_id, &refresh, &scope).await {
                        Ok(t) => {
                            state.refresh_token = t.refresh.or(Some(refresh));
                            return Ok(t.access);
                        }
                        Err(e) => tracing::info!("device-code: the refresh token was refused ({e}); signing in again"),
                    }
                }
                count();
                let start_url = self.endpoints.device_code_url(tenant)?;
                let authorization = device_code::start(&self.http, &start_url, client_id, &scope).await?;
                crate::eoutln!("{}", authorization.prompt());
                count();
                let t = device_code::poll(&self.http, &url, client_id, &authorization, tokio::time::sleep).await?;
                state.refresh_token = t.refresh;
                Ok(t.access)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_before_expiry() {
        let s = Duration::from_secs;
        assert_eq!(refresh_after(s(3599)), s(3299));
        assert_eq!(refresh_after(s(600)), s(300));
        assert_eq!(refresh_after(s(60)), s(30));
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }
}
