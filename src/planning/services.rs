//! The live services a plan may read (Microsoft Graph, the PoliteMail API), each set up on first use, with the
//! async runtime that drives them. A plan from files alone creates none of them.

use std::sync::Arc;

use crate::directory::graph::GraphClient;
use crate::error::{Error, Result};
use crate::source::politemail_api::{PoliteMailClient, PoliteMailConfig};

/// Where the services are, as the flags, the environment and the config say (`None`: the default).
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// How to sign in to Microsoft Graph, and where it is.
    pub sign_in: crate::signin::SignInSettings,
    /// The PoliteMail API's URL from the config, used when `POLITEMAIL_URL` is not set.
    pub politemail_url: Option<String>,
}

/// The clients, created lazily and then reused by every mapping of one plan.
pub struct Services {
    endpoints: Endpoints,
    runtime: Option<tokio::runtime::Runtime>,
    graph: Option<GraphClient>,
    politemail: Option<Arc<PoliteMailClient>>,
}

impl Services {
    /// No client yet: each is made when first needed.
    pub fn new(endpoints: Endpoints) -> Services {
        Services { endpoints, runtime: None, graph: None, politemail: None }
    }

    /// Runs `future` to completion on the runtime (started on first use).
    pub fn block_on<F: std::future::Future>(&mut self, future: F) -> Result<F::Output> {
        if self.runtime.is_none() {
            self.runtime = Some(crate::http::runtime_on_this_thread()?);
        }
        match &self.runtime {
            Some(rt) => Ok(rt.block_on(future)),
            None => Err(Error::Internal("no async runtime".into())),
        }
    }

    /// The Graph client (signs in lazily, on its first request).
    pub fn graph(&mut self) -> Result<GraphClient> {
        if let Some(graph) = &self.graph {
            return Ok(graph.clone());
        }
        let graph = GraphClient::connect(&self.endpoints.sign_in)?;
        self.graph = Some(graph.clone());
        Ok(graph)
    }

    /// Who read Graph: the actor of the Graph client's token, when Graph was used.
    pub fn entra_actor(&self) -> Option<crate::identity::EntraActor> {
        self.graph.as_ref().and_then(GraphClient::entra_actor)
    }

    /// The PoliteMail client, from the environment (with the config's URL as fallback).
    pub fn politemail(&mut self) -> Result<Arc<PoliteMailClient>> {
        if let Some(pm) = &self.politemail {
            return Ok(pm.clone());
        }
        let fallback = self.endpoints.politemail_url.clone();
        let config = PoliteMailConfig::from_lookup(
            |name| std::env::var(name).ok().or_else(|| (name == "POLITEMAIL_URL").then(|| fallback.clone()).flatten()),
            crate::http::HttpConfig::from_env()?,
        )?;
        let pm = Arc::new(PoliteMailClient::new(config)?);
        self.politemail = Some(pm.clone());
        Ok(pm)
    }
}
