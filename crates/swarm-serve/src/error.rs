//! Errors: [`ApiError`] is the one table from failure to HTTP response (OpenAI's envelope
//! `{"error": {"message", "type", "param", "code"}}` with the right status); [`ServeError`] is
//! what the library's loaders and engine return before a request is involved.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Library errors (loading a swarm, training the router, starting the engine).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("model: {0}")]
    Model(#[from] swarm_model::ModelError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("swarm: {0}")]
    Swarm(String),
    /// A swarm's manifest, factors or genomes that cannot be used (the message names the
    /// file and what is wrong; transparent, so that error chains do not print it twice).
    #[error(transparent)]
    SwarmFiles(#[from] swarm_merge::MergeError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
    #[error("engine: {0}")]
    Engine(String),
}

pub type Result<T, E = ServeError> = std::result::Result<T, E>;

/// An error answered to a client, rendered as OpenAI's error envelope.
///
/// Messages say what was wrong with the request (the field, the limit, the bad value);
/// internal details are logged by the caller and never sent.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, ...
    pub kind: &'static str,
    pub message: String,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `invalid_api_key`, ...).
    pub code: Option<&'static str>,
    /// Seconds, sent as `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
}

/// The wire form: `{"error": {...}}`.
#[derive(Debug, Serialize)]
pub struct ErrorEnvelope<'a> {
    pub error: ErrorBody<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets the machine-readable `code` of the envelope.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// 400: a field has a bad value.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message).with_param(param)
    }

    /// 400: the body is not the JSON we expect (no single field to blame).
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400: a field that would change the meaning of the answer, which we do not implement.
    pub fn unsupported(param: &str) -> Self {
        Self::invalid(
            param,
            format!("`{param}` is not supported by this server; remove it from the request"),
        )
        .with_code("unsupported_parameter")
    }

    /// 401: no key or a wrong one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
            .with_code("invalid_api_key")
    }

    /// 404: no elite, skill or router by that name.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist; GET /v1/models lists the models served"),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// 404: no such route.
    pub fn route_not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("No route {path}"),
        )
        .with_code("not_found")
    }

    /// 404: a stored response asked for; swarm stores none.
    pub fn response_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "No response `{id}`: swarm stores no responses (answers are returned, not kept); \
                 send the whole conversation in `input`"
            ),
        )
        .with_code("not_found")
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "Method not allowed on this route",
        )
    }

    /// 413: body or prompt over a limit.
    pub fn too_large(param: Option<&str>, message: impl Into<String>) -> Self {
        let e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
        .with_code("request_too_large");
        match param {
            Some(p) => e.with_param(p),
            None => e,
        }
    }

    /// 429: the queue is full.
    pub fn queue_full(capacity: usize) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("The server's queue is full ({capacity} requests); retry later"),
        )
        .with_code("queue_full");
        e.retry_after = Some(1);
        e
    }

    /// 503: still loading, or draining for shutdown.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            .with_code("unavailable");
        e.retry_after = Some(5);
        e
    }

    /// 504: the request ran past its time limit.
    pub fn timeout(seconds: f64) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout_error",
            format!("The request ran past the server's limit of {seconds} s"),
        )
        .with_code("timeout")
    }

    /// 500: our fault. The detail is logged here and not sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The server had an error while processing the request",
        )
        .with_code("internal_error")
    }

    /// The envelope as JSON (also used as the payload of a final SSE error event).
    pub fn body_json(&self) -> String {
        let envelope = ErrorEnvelope {
            error: ErrorBody {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        serde_json::to_string(&envelope).unwrap_or_else(|_| {
            r#"{"error":{"message":"error","type":"server_error","param":null,"code":null}}"#
                .to_string()
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body_json(),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_every_field() {
        let e = ApiError::model_not_found("nope");
        let v: serde_json::Value = serde_json::from_str(&e.body_json()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
        let e = ApiError::bad_body("x");
        let v: serde_json::Value = serde_json::from_str(&e.body_json()).unwrap();
        assert!(v["error"]["param"].is_null());
    }

    #[test]
    fn queue_full_sets_retry_after() {
        let r = ApiError::queue_full(4).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
