//! A typed client of tend's HTTP API.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tend_api::*;
use tend_core::{ServiceName, TeamName};

/// Errors of API calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach the tend server at {url}: {source}")]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("{}", .body.error.message)]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The error body.
        body: ErrorBody,
    },
    /// The server's answer could not be understood.
    #[error("unexpected answer from the server ({status}): {message}")]
    Protocol {
        /// HTTP status.
        status: StatusCode,
        /// What was wrong.
        message: String,
    },
    /// The client was configured wrongly (bad URL, ...).
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } | Self::Protocol { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Result type of the client.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A connection to one tend server with one token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

fn seg(s: &str) -> String {
    // Names are DNS labels, but be safe with anything a user typed.
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:7070`).
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self> {
        let base = base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Config(format!(
                "server URL {base_url:?} must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("tend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Self { http, base, token })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let resp = self.send(method, path, body).await?;
        self.decode(resp).await
    }

    async fn decode<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T> {
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            status,
            message: e.to_string(),
        })
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        self.execute(req).await
    }

    async fn execute(&self, mut req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api { status, body }),
            Err(_) => Err(ClientError::Protocol {
                status,
                message: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            }),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.send::<()>(Method::DELETE, path, None).await.map(drop)
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health> {
        self.get("/healthz").await
    }

    /// `GET /api/v1/whoami`.
    pub async fn whoami(&self) -> Result<WhoAmI> {
        self.get("/api/v1/whoami").await
    }

    /// `GET /api/v1/teams`.
    pub async fn teams(&self) -> Result<Vec<Team>> {
        self.get("/api/v1/teams").await
    }

    /// `GET /api/v1/teams/{team}`.
    pub async fn team(&self, name: &str) -> Result<Team> {
        self.get(&format!("/api/v1/teams/{}", seg(name))).await
    }

    /// `POST /api/v1/teams`.
    pub async fn create_team(&self, name: &TeamName) -> Result<Team> {
        self.call(
            Method::POST,
            "/api/v1/teams",
            Some(&CreateTeam { name: name.clone() }),
        )
        .await
    }

    /// `DELETE /api/v1/teams/{team}`.
    pub async fn delete_team(&self, name: &str) -> Result<()> {
        self.delete(&format!("/api/v1/teams/{}", seg(name))).await
    }

    /// `POST /api/v1/teams/{team}/channels`.
    pub async fn add_channel(&self, team: &str, channel: &AddChannel) -> Result<Team> {
        self.call(
            Method::POST,
            &format!("/api/v1/teams/{}/channels", seg(team)),
            Some(channel),
        )
        .await
    }

    /// `DELETE /api/v1/teams/{team}/channels/{channel}`.
    pub async fn remove_channel(&self, team: &str, channel: &str) -> Result<()> {
        self.delete(&format!(
            "/api/v1/teams/{}/channels/{}",
            seg(team),
            seg(channel)
        ))
        .await
    }

    /// `GET /api/v1/tokens`.
    pub async fn tokens(&self, all: bool) -> Result<Vec<TokenInfo>> {
        self.get(&format!("/api/v1/tokens?all={all}")).await
    }

    /// `POST /api/v1/tokens`.
    pub async fn create_token(&self, req: &CreateToken) -> Result<CreatedToken> {
        self.call(Method::POST, "/api/v1/tokens", Some(req)).await
    }

    /// `DELETE /api/v1/tokens/{name}`.
    pub async fn revoke_token(&self, name: &str) -> Result<TokenInfo> {
        self.call::<(), _>(
            Method::DELETE,
            &format!("/api/v1/tokens/{}", seg(name)),
            None,
        )
        .await
    }

    /// `POST /api/v1/services`.
    pub async fn apply(&self, manifest: &str, file_name: &str) -> Result<ApplyResponse> {
        self.call(
            Method::POST,
            "/api/v1/services",
            Some(&ApplyRequest {
                manifest: manifest.to_string(),
                file_name: Some(file_name.to_string()),
            }),
        )
        .await
    }

    /// `GET /api/v1/services`.
    pub async fn services(&self, owner: Option<&TeamName>) -> Result<Vec<ServiceSummary>> {
        match owner {
            Some(o) => {
                self.get(&format!("/api/v1/services?owner={}", seg(o.as_str())))
                    .await
            }
            None => self.get("/api/v1/services").await,
        }
    }

    /// `GET /api/v1/services/{name}`.
    pub async fn service(&self, name: &str) -> Result<Service> {
        self.get(&format!("/api/v1/services/{}", seg(name))).await
    }

    /// `DELETE /api/v1/services/{name}`.
    pub async fn delete_service(&self, name: &str) -> Result<()> {
        self.delete(&format!("/api/v1/services/{}", seg(name)))
            .await
    }

    /// `GET /api/v1/services/{name}/events`.
    pub async fn events(&self, name: &ServiceName, limit: u32) -> Result<Vec<Event>> {
        self.get(&format!(
            "/api/v1/services/{}/events?limit={limit}",
            seg(name.as_str())
        ))
        .await
    }

    /// `GET /api/v1/audit`.
    pub async fn audit(&self, team: Option<&TeamName>, limit: u32) -> Result<Vec<AuditEntry>> {
        let mut path = format!("/api/v1/audit?limit={limit}");
        if let Some(t) = team {
            path.push_str(&format!("&team={}", seg(t.as_str())));
        }
        self.get(&path).await
    }

    /// `POST /api/v1/services/{name}/deploy` with a packed service directory.
    pub async fn deploy_archive(&self, name: &str, archive: Vec<u8>) -> Result<Deployment> {
        let req = self
            .http
            .post(format!(
                "{}/api/v1/services/{}/deploy",
                self.base,
                seg(name)
            ))
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            // Uploads can be large and builds start only after them.
            .timeout(Duration::from_secs(600))
            .body(archive);
        let resp = self.execute(req).await?;
        self.decode(resp).await
    }

    /// `POST /api/v1/services/{name}/releases/{version}/deploy`.
    pub async fn deploy_release(&self, name: &str, version: u32) -> Result<Deployment> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/services/{}/releases/{version}/deploy", seg(name)),
            None,
        )
        .await
    }

    /// `GET /api/v1/services/{name}/releases`.
    pub async fn releases(&self, name: &str) -> Result<Vec<Release>> {
        self.get(&format!("/api/v1/services/{}/releases", seg(name)))
            .await
    }

    /// `GET /api/v1/services/{name}/deployments`.
    pub async fn deployments(&self, name: &str) -> Result<Vec<Deployment>> {
        self.get(&format!("/api/v1/services/{}/deployments", seg(name)))
            .await
    }

    /// `GET /api/v1/deployments/{id}`.
    pub async fn deployment(&self, id: i64) -> Result<Deployment> {
        self.get(&format!("/api/v1/deployments/{id}")).await
    }

    /// Follows `GET /api/v1/deployments/{id}/watch`, calling `on_event` for
    /// every event, and returns the final deployment.
    pub async fn watch(
        &self,
        id: i64,
        mut on_event: impl FnMut(&WatchEvent),
    ) -> Result<Deployment> {
        let req = self
            .http
            .get(format!("{}/api/v1/deployments/{id}/watch", self.base))
            .timeout(Duration::from_secs(24 * 3600));
        let mut resp = self.execute(req).await?;
        let status = resp.status();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|source| ClientError::Unreachable {
                    url: self.base.clone(),
                    source,
                })?;
            let Some(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let ev: WatchEvent =
                    serde_json::from_slice(&line).map_err(|e| ClientError::Protocol {
                        status,
                        message: format!("bad watch event: {e}"),
                    })?;
                on_event(&ev);
                if let WatchEvent::End { deployment } = ev {
                    return Ok(deployment);
                }
            }
        }
        Err(ClientError::Protocol {
            status,
            message: "the watch stream ended before the deployment did".into(),
        })
    }

    /// `GET /api/v1/services/{name}/status`.
    pub async fn status(&self, name: &str) -> Result<ServiceStatus> {
        self.get(&format!("/api/v1/services/{}/status", seg(name)))
            .await
    }

    /// `POST /api/v1/services/{name}/rollback`.
    pub async fn rollback(&self, name: &str, to: Option<u32>) -> Result<Deployment> {
        self.call(
            Method::POST,
            &format!("/api/v1/services/{}/rollback", seg(name)),
            Some(&RollbackRequest { to }),
        )
        .await
    }

    /// `POST /api/v1/services/{name}/restart`.
    pub async fn restart(&self, name: &str) -> Result<Deployment> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/services/{}/restart", seg(name)),
            None,
        )
        .await
    }

    /// `POST /api/v1/services/{name}/scale`.
    pub async fn scale(&self, name: &str, instances: u32) -> Result<ServiceStatus> {
        self.call(
            Method::POST,
            &format!("/api/v1/services/{}/scale", seg(name)),
            Some(&ScaleRequest { instances }),
        )
        .await
    }

    /// `POST /api/v1/services/{name}/stop` (or `start` when `stopped` is false).
    pub async fn set_stopped(&self, name: &str, stopped: bool) -> Result<ServiceStatus> {
        let verb = if stopped { "stop" } else { "start" };
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/services/{}/{verb}", seg(name)),
            None,
        )
        .await
    }

    /// `GET /api/v1/services/{name}/logs?...`: calls `on_item` for every line
    /// (and lag notice) until the stream ends (never, with `follow=true`,
    /// unless `on_item` returns false).
    pub async fn logs(
        &self,
        name: &str,
        params: &[(&str, String)],
        mut on_item: impl FnMut(LogItem) -> bool,
    ) -> Result<()> {
        let req = self
            .http
            .get(format!("{}/api/v1/services/{}/logs", self.base, seg(name)))
            .query(params)
            .timeout(Duration::from_secs(365 * 24 * 3600));
        let mut resp = self.execute(req).await?;
        let status = resp.status();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?
        {
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue; // keep-alive
                }
                let item: LogItem =
                    serde_json::from_slice(&line).map_err(|e| ClientError::Protocol {
                        status,
                        message: format!("bad log line: {e}"),
                    })?;
                if !on_item(item) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// `GET /api/v1/services/{name}/config`.
    pub async fn config(&self, name: &str) -> Result<ConfigView> {
        self.get(&format!("/api/v1/services/{}/config", seg(name)))
            .await
    }

    /// `POST /api/v1/services/{name}/config`.
    pub async fn change_config(&self, name: &str, change: &ConfigChange) -> Result<ConfigChanged> {
        self.call(
            Method::POST,
            &format!("/api/v1/services/{}/config", seg(name)),
            Some(change),
        )
        .await
    }

    /// `GET /api/v1/services/{name}/secrets`: names and versions, never values.
    pub async fn secrets(&self, name: &str) -> Result<tend_api::SecretsView> {
        self.get(&format!("/api/v1/services/{}/secrets", seg(name)))
            .await
    }

    /// `POST /api/v1/services/{name}/secrets`.
    pub async fn change_secrets(
        &self,
        name: &str,
        change: &tend_api::SecretsChange,
    ) -> Result<tend_api::SecretsChanged> {
        self.call(
            Method::POST,
            &format!("/api/v1/services/{}/secrets", seg(name)),
            Some(change),
        )
        .await
    }

    /// `POST /api/v1/secrets/rotate-key` (admin).
    pub async fn rotate_key(&self) -> Result<tend_api::KeyRotated> {
        self.call::<(), _>(Method::POST, "/api/v1/secrets/rotate-key", None)
            .await
    }

    /// A query of the Prometheus-compatible API (`/api/v1/query` or
    /// `/api/v1/query_range`): the `data` of a success, or the error.
    pub async fn prometheus(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<serde_json::Value> {
        let req = self.http.get(format!("{}{path}", self.base)).query(params);
        let resp = match self.execute(req).await {
            Ok(r) => r,
            // Prometheus errors have their own envelope: show their message.
            Err(ClientError::Protocol { status, message }) => {
                let msg = serde_json::from_str::<serde_json::Value>(&message)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(message);
                return Err(ClientError::Api {
                    status,
                    body: ErrorBody {
                        error: ErrorDetail {
                            code: "bad_data".into(),
                            message: msg,
                            details: None,
                        },
                    },
                });
            }
            Err(e) => return Err(e),
        };
        let v: serde_json::Value = self.decode(resp).await?;
        Ok(v["data"].clone())
    }
}

/// Alerting: incidents, on-call and escalation.
impl Client {
    /// `GET /api/v1/incidents` (`team`: one team's; `all`: resolved ones too).
    pub async fn incidents(&self, team: Option<&str>, all: bool) -> Result<Vec<Incident>> {
        let mut q = vec![format!("all={all}")];
        if let Some(t) = team {
            q.push(format!("team={}", seg(t)));
        }
        self.get(&format!("/api/v1/incidents?{}", q.join("&")))
            .await
    }

    /// `GET /api/v1/incidents/{id}`.
    pub async fn incident(&self, id: i64) -> Result<IncidentDetail> {
        self.get(&format!("/api/v1/incidents/{id}")).await
    }

    /// `POST /api/v1/incidents/{id}/ack`.
    pub async fn ack_incident(&self, id: i64) -> Result<Incident> {
        self.call::<(), _>(Method::POST, &format!("/api/v1/incidents/{id}/ack"), None)
            .await
    }

    /// `POST /api/v1/incidents/{id}/resolve`.
    pub async fn resolve_incident(&self, id: i64) -> Result<Incident> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/incidents/{id}/resolve"),
            None,
        )
        .await
    }

    /// `GET /api/v1/teams/{team}/oncall`.
    pub async fn oncall(&self, team: &str) -> Result<OnCall> {
        self.get(&format!("/api/v1/teams/{}/oncall", seg(team)))
            .await
    }

    /// `PUT /api/v1/teams/{team}/rotation`.
    pub async fn set_rotation(&self, team: &str, r: &SetRotation) -> Result<OnCall> {
        self.call(
            Method::PUT,
            &format!("/api/v1/teams/{}/rotation", seg(team)),
            Some(r),
        )
        .await
    }

    /// `DELETE /api/v1/teams/{team}/rotation`.
    pub async fn remove_rotation(&self, team: &str) -> Result<()> {
        self.delete(&format!("/api/v1/teams/{}/rotation", seg(team)))
            .await
    }

    /// `POST /api/v1/teams/{team}/overrides`.
    pub async fn add_override(&self, team: &str, o: &AddOverride) -> Result<OnCall> {
        self.call(
            Method::POST,
            &format!("/api/v1/teams/{}/overrides", seg(team)),
            Some(o),
        )
        .await
    }

    /// `DELETE /api/v1/teams/{team}/overrides/{id}`.
    pub async fn remove_override(&self, team: &str, id: i64) -> Result<()> {
        self.delete(&format!("/api/v1/teams/{}/overrides/{id}", seg(team)))
            .await
    }

    /// `PUT /api/v1/teams/{team}/escalation`.
    pub async fn set_escalation(&self, team: &str, e: &SetEscalation) -> Result<OnCall> {
        self.call(
            Method::PUT,
            &format!("/api/v1/teams/{}/escalation", seg(team)),
            Some(e),
        )
        .await
    }
}
