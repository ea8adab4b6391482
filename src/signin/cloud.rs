//! National clouds: each fixes the sign-in host, Graph's base URL and the resource tokens are asked for.
//!
//! URLs can be overridden (tests, proxies): the sign-in host by `--login-url` > `WRITEBACK_LOGIN_URL` > config
//! `login_url` > `AZURE_AUTHORITY_HOST` > the cloud's host; Graph by `--graph-url` > `WRITEBACK_GRAPH_URL` > config
//! `graph_url` > the cloud's Graph URL. Overriding a URL never changes the resource: every kind asks for the
//! cloud's Graph resource (`https://graph.microsoft.com` in the public cloud).

use reqwest::Url;

use super::{Env, SignInError, SignInSettings};
use crate::http::parse_endpoint;

/// A Microsoft cloud (`--cloud`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    /// The global (public) cloud.
    #[default]
    Public,
    /// Azure Government (GCC High).
    Usgov,
    /// Azure Government, Department of Defense.
    UsgovDod,
    /// Azure China (operated by 21Vianet).
    China,
}

impl Cloud {
    /// The name on the command line and in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Public => "public",
            Cloud::Usgov => "usgov",
            Cloud::UsgovDod => "usgov-dod",
            Cloud::China => "china",
        }
    }

    /// The sign-in host (the authority), scheme and host only.
    pub fn login_url(self) -> &'static str {
        match self {
            Cloud::Public => "https://login.microsoftonline.com",
            Cloud::Usgov | Cloud::UsgovDod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }

    /// Graph's resource: what tokens are asked for (`{resource}/.default`).
    pub fn graph_resource(self) -> &'static str {
        match self {
            Cloud::Public => "https://graph.microsoft.com",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::UsgovDod => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    /// Graph's v1.0 base URL.
    pub fn graph_url(self) -> String {
        format!("{}/v1.0", self.graph_resource())
    }
}

/// Where the sign-in endpoint and Graph are, and which resource tokens are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The cloud.
    pub cloud: Cloud,
    /// The sign-in host, e.g. `https://login.microsoftonline.com`.
    pub login_url: Url,
    /// Graph's base URL, e.g. `https://graph.microsoft.com/v1.0`.
    pub graph_url: Url,
    /// Graph's resource, e.g. `https://graph.microsoft.com`; never taken from an overridden URL.
    pub resource: String,
}

impl Endpoints {
    /// The cloud's own endpoints, whatever the environment says.
    pub fn of(cloud: Cloud) -> Result<Endpoints, SignInError> {
        Endpoints::resolve(&SignInSettings { cloud, ..SignInSettings::default() }, &|_: &str| None)
    }

    /// The endpoints for `settings`, with the precedence of the module documentation. `env` supplies
    /// `WRITEBACK_GRAPH_URL`, `WRITEBACK_LOGIN_URL` (when the settings lack them) and `AZURE_AUTHORITY_HOST`.
    pub fn resolve(settings: &SignInSettings, env: &dyn Env) -> Result<Endpoints, SignInError> {
        let cloud = settings.cloud;
        let (login, login_from) = match (settings.login_url.clone(), env.get("WRITEBACK_LOGIN_URL")) {
            (Some(url), _) => (url, "--login-url"),
            (None, Some(url)) => (url, "WRITEBACK_LOGIN_URL"),
            (None, None) => match env.get("AZURE_AUTHORITY_HOST") {
                Some(url) => (url, "AZURE_AUTHORITY_HOST"),
                None => (cloud.login_url().to_string(), "--cloud"),
            },
        };
        let graph =
            settings.graph_url.clone().or_else(|| env.get("WRITEBACK_GRAPH_URL")).unwrap_or_else(|| cloud.graph_url());
        Ok(Endpoints {
            cloud,
            login_url: parse_endpoint(&login, login_from)?,
            graph_url: parse_endpoint(&graph, "--graph-url")?,
            resource: cloud.graph_resource().to_string(),
        })
    }

    /// The scope a client-credentials or managed-identity token is asked for: `{resource}/.default`.
    pub fn default_scope(&self) -> String {
        format!("{}/.default", self.resource)
    }

    /// The token endpoint of `tenant`: `{login_url}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self, tenant: &str) -> Result<Url, SignInError> {
        self.tenant_url(tenant, "token")
    }

    /// The device-code endpoint of `tenant`: `{login_url}/{tenant}/oauth2/v2.0/devicecode`.
    pub fn device_code_url(&self, tenant: &str) -> Result<Url, SignInError> {
        self.tenant_url(tenant, "devicecode")
    }

    fn tenant_url(&self, tenant: &str, leaf: &str) -> Result<Url, SignInError> {
        let base = crate::http::base_str(&self.login_url);
        Url::parse(&format!("{base}/{tenant}/oauth2/v2.0/{leaf}"))
            .map_err(|e| SignInError::Config { location: "--login-url".into(), message: e.to_string() })
    }
}

/// Checks a tenant id or domain: letters, digits, `-` and `.` only (it becomes part of a URL path).
pub fn check_tenant(tenant: &str, from: &str) -> Result<(), SignInError> {
    if tenant.is_empty() || !tenant.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return Err(SignInError::Config {
            location: from.into(),
            message: "must be a tenant id (GUID) or domain name".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn each_cloud_sets_the_three_together() {
        for (cloud, login, graph, resource) in [
            (
                Cloud::Public,
                "https://login.microsoftonline.com/",
                "https://graph.microsoft.com/v1.0",
                "https://graph.microsoft.com",
            ),
            (
                Cloud::Usgov,
                "https://login.microsoftonline.us/",
                "https://graph.microsoft.us/v1.0",
                "https://graph.microsoft.us",
            ),
            (
                Cloud::UsgovDod,
                "https://login.microsoftonline.us/",
                "https://dod-graph.microsoft.us/v1.0",
                "https://dod-graph.microsoft.us",
            ),
            (
                Cloud::China,
                "https://login.chinacloudapi.cn/",
                "https://microsoftgraph.chinacloudapi.cn/v1.0",
                "https://microsoftgraph.chinacloudapi.cn",
            ),
        ] {
            let settings = SignInSettings { cloud, ..SignInSettings::default() };
            let e = Endpoints::resolve(&settings, &env(&[])).unwrap();
            assert_eq!((e.login_url.as_str(), e.graph_url.as_str(), e.resource.as_str()), (login, graph, resource));
            assert_eq!(e, Endpoints::of(cloud).unwrap());
            assert_eq!(e.default_scope(), format!("{resource}/.default"));
        }
    }

    #[test]
    fn url_precedence_and_the_resource_never_moves() {
        let settings = SignInSettings { cloud: Cloud::Usgov, ..SignInSettings::default() };
        let authority = env(&[("AZURE_AUTHORITY_HOST", "https://authority.example")]);
        assert_eq!(Endpoints::resolve(&settings, &authority).unwrap().login_url.as_str(), "https://authority.example/");
        let both = env(&[
            ("AZURE_AUTHORITY_HOST", "https://authority.example"),
            ("WRITEBACK_LOGIN_URL", "http://127.0.0.1:9/"),
            ("WRITEBACK_GRAPH_URL", "http://127.0.0.1:9/v1.0"),
        ]);
        let e = Endpoints::resolve(&settings, &both).unwrap();
        assert_eq!(e.login_url.as_str(), "http://127.0.0.1:9/");
        assert_eq!(e.graph_url.as_str(), "http://127.0.0.1:9/v1.0");
        assert_eq!(e.resource, "https://graph.microsoft.us");
        let flags = SignInSettings {
            login_url: Some("https://flag.example".into()),
            graph_url: Some("https://graph.flag.example/beta".into()),
            ..settings
        };
        let e = Endpoints::resolve(&flags, &both).unwrap();
        assert_eq!(e.login_url.as_str(), "https://flag.example/");
        assert_eq!(e.graph_url.as_str(), "https://graph.flag.example/beta");
        assert_eq!(e.resource, "https://graph.microsoft.us");
        assert_eq!(
            e.token_url("contoso.example").unwrap().as_str(),
            "https://flag.example/contoso.example/oauth2/v2.0/token"
        );
        let plain = env(&[("AZURE_AUTHORITY_HOST", "http://evil.example")]);
        assert!(Endpoints::resolve(&SignInSettings::default(), &plain).is_err());
    }

    #[test]
    fn tenants_are_path_safe() {
        assert!(check_tenant("contoso.onmicrosoft.com", "x").is_ok());
        assert!(check_tenant("bf88b34e-db80-46f7-8aa4-acb3c54f52e1", "x").is_ok());
        for bad in ["", "../evil", "a/b", "a?b", "a b"] {
            assert!(check_tenant(bad, "x").is_err(), "{bad}");
        }
    }
}
