//! Outbound HTTP through the host.
//!
//! The host only lets requests through to the entry's `allow_hosts`, caps
//! the response body and ends every request at the call's deadline; it also
//! retries 429 and 503 answers itself. Any status code is a [`Response`]; use
//! [`Response::error_for_status`] to treat non-2xx answers as errors.
//!
//! ```ignore
//! let health: Health = http::get("http://127.0.0.1:8080/health")?.json()?;
//! http::post_json(&url, &serde_json::json!({"text": "hi"}))?.error_for_status()?;
//! let resp = http::Request::new("PUT", &url)
//!     .header("Authorization", &format!("Bearer {token}"))
//!     .json(&body)
//!     .timeout(Duration::from_secs(2))
//!     .send()?;
//! ```

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bindings::rollback::plugin::http as wit;

/// Why a request produced no usable response.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The host refused the URL: its host and port are not allow-listed.
    Denied(String),
    /// The request is malformed: bad URL, method, header or JSON body.
    InvalidRequest(String),
    /// No complete response within the timeout.
    Timeout,
    /// Connection, TLS or protocol failure.
    Transport(String),
    /// The response body exceeded the host's cap (in bytes).
    TooLarge(u64),
    /// A non-2xx status, from [`Response::error_for_status`]: the code and
    /// the start of the body.
    Status(u16, String),
    /// The body could not be decoded, from [`Response::json`].
    Decode(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Denied(text) => write!(f, "denied by host: {text}"),
            Error::InvalidRequest(text) => write!(f, "invalid request: {text}"),
            Error::Timeout => f.write_str("timed out"),
            Error::Transport(text) => write!(f, "transport error: {text}"),
            Error::TooLarge(cap) => {
                write!(f, "response body larger than the host cap of {cap} bytes")
            }
            Error::Status(status, body) if body.is_empty() => write!(f, "HTTP status {status}"),
            Error::Status(status, body) => write!(f, "HTTP status {status}: {body}"),
            Error::Decode(text) => write!(f, "unexpected response body: {text}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for String {
    fn from(err: Error) -> String {
        err.to_string()
    }
}

impl From<wit::Error> for Error {
    fn from(err: wit::Error) -> Self {
        match err {
            wit::Error::Denied(text) => Error::Denied(text),
            wit::Error::InvalidRequest(text) => Error::InvalidRequest(text),
            wit::Error::Timeout => Error::Timeout,
            wit::Error::Transport(text) => Error::Transport(text),
            wit::Error::TooLarge(cap) => Error::TooLarge(cap),
        }
    }
}

/// A request body that is already JSON: text (`&str`, `String`) is sent as
/// is, a [`serde_json::Value`] is serialized.
pub trait JsonBody {
    /// The body's bytes.
    fn into_json_bytes(self) -> Vec<u8>;
}

impl JsonBody for &str {
    fn into_json_bytes(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl JsonBody for String {
    fn into_json_bytes(self) -> Vec<u8> {
        self.into_bytes()
    }
}

impl JsonBody for &String {
    fn into_json_bytes(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl JsonBody for &serde_json::Value {
    fn into_json_bytes(self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl JsonBody for serde_json::Value {
    fn into_json_bytes(self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, Error> {
    Request::get(url).send()
}

/// `POST url` with a JSON body and `Content-Type: application/json`.
pub fn post_json(url: &str, body: impl JsonBody) -> Result<Response, Error> {
    Request::post(url).json_body(body).send()
}

/// An outbound request, built step by step and sent with [`Request::send`].
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
    max_retries: Option<u8>,
    /// A JSON serialization error, reported by `send`.
    error: Option<String>,
}

impl Request {
    /// A request with `method` (upper-cased) to `url`.
    pub fn new(method: &str, url: &str) -> Self {
        Request {
            method: method.trim().to_ascii_uppercase(),
            url: url.to_string(),
            headers: Vec::new(),
            body: None,
            timeout: None,
            max_retries: None,
            error: None,
        }
    }

    /// `GET url`.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// `POST url`.
    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header (names are case-insensitive; repeats are kept).
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sets a body that is already JSON, and `Content-Type: application/json`.
    #[must_use]
    pub fn json_body(self, body: impl JsonBody) -> Self {
        self.body(body.into_json_bytes())
            .header("Content-Type", "application/json")
    }

    /// Serializes `value` as the JSON body, and sets
    /// `Content-Type: application/json`. A value that cannot be serialized
    /// makes [`Request::send`] fail with [`Error::InvalidRequest`].
    #[must_use]
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.body(bytes).header("Content-Type", "application/json"),
            Err(err) => {
                self.error = Some(format!("JSON body: {err}"));
                self
            }
        }
    }

    /// Sets the per-request timeout (the host caps it at the call's deadline).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// At most this many retries by the host after a 429 or 503 (default
    /// and most: 4). `0` for an API whose quota a quick retry would only
    /// spend: the 429 comes back and the plugin decides when to call again.
    #[must_use]
    pub fn max_retries(mut self, retries: u8) -> Self {
        self.max_retries = Some(retries);
        self
    }

    /// The method, upper-cased.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The request as the WIT record (the timeout rounded up to whole
    /// milliseconds).
    fn into_wit(self) -> Result<wit::Request, Error> {
        if let Some(err) = self.error {
            return Err(Error::InvalidRequest(err));
        }
        let timeout_ms = self.timeout.map(|t| {
            let ms = t.as_micros().div_ceil(1000);
            u32::try_from(ms).unwrap_or(u32::MAX)
        });
        Ok(wit::Request {
            method: self.method,
            url: self.url,
            headers: self
                .headers
                .into_iter()
                .map(|(name, value)| wit::Header { name, value })
                .collect(),
            body: self.body,
            timeout_ms,
            max_retries: self.max_retries,
        })
    }

    /// Sends the request through the host and waits for the whole response.
    pub fn send(self) -> Result<Response, Error> {
        let request = self.into_wit()?;
        send(&request).map(Response::from)
    }
}

#[cfg(target_arch = "wasm32")]
fn send(request: &wit::Request) -> Result<wit::Response, Error> {
    wit::send(request).map_err(Error::from)
}

#[cfg(not(target_arch = "wasm32"))]
fn send(_request: &wit::Request) -> Result<wit::Response, Error> {
    Err(Error::Transport(
        "no host to send requests through in a native build".to_string(),
    ))
}

/// A response, with any status code.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    elapsed_us: u64,
    retries: u32,
}

impl From<wit::Response> for Response {
    fn from(r: wit::Response) -> Self {
        Response {
            status: r.status,
            headers: r.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            body: r.body,
            elapsed_us: r.elapsed_us,
            retries: r.retries,
        }
    }
}

impl Response {
    /// A response built by hand, for tests.
    pub fn new(status: u16, headers: Vec<(String, String)>, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers,
            body: body.into(),
            elapsed_us: 0,
            retries: 0,
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The response itself when its status is 2xx, else
    /// [`Error::Status`] with the code and the body's first 200 characters.
    pub fn error_for_status(self) -> Result<Self, Error> {
        if self.is_success() {
            return Ok(self);
        }
        let text = self.text();
        let text = text.trim();
        let excerpt = match text.char_indices().nth(200) {
            Some((end, _)) => format!("{}...", &text[..end]),
            None => text.to_string(),
        };
        Err(Error::Status(self.status, excerpt))
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The body's bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text; invalid UTF-8 is replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body decoded as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Decode(e.to_string()))
    }

    /// From sending the first attempt to receiving the whole final body, as
    /// measured by the host.
    pub fn elapsed(&self) -> Duration {
        Duration::from_micros(self.elapsed_us)
    }

    /// [`Response::elapsed`] in microseconds.
    pub fn elapsed_us(&self) -> u64 {
        self.elapsed_us
    }

    /// How many times the host retried after a 429 or 503.
    pub fn retries(&self) -> u32 {
        self.retries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_to_wit() {
        let r = Request::new("post", "http://x/")
            .header("X-A", "1")
            .json(&serde_json::json!({"a": 1}))
            .timeout(Duration::from_micros(1_500_001))
            .into_wit()
            .expect("valid");
        assert_eq!(r.method, "POST");
        assert_eq!(r.body.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(r.timeout_ms, Some(1501));
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.headers[1].name, "Content-Type");
        let raw = Request::post("http://x/")
            .json_body("{\"b\":2}")
            .into_wit()
            .expect("valid");
        assert_eq!(raw.body.as_deref(), Some(&b"{\"b\":2}"[..]));
    }

    #[test]
    fn bad_json_body_fails_at_send() {
        let mut map = std::collections::HashMap::new();
        map.insert((1, 2), 3);
        let err = Request::post("http://x/")
            .json(&map)
            .send()
            .expect_err("bad");
        assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    }

    #[test]
    fn response_helpers() {
        let r = Response::new(
            200,
            vec![("Content-Type".into(), "application/json".into())],
            "{\"ok\":true}",
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x"), None);
        let v: serde_json::Value = r.json().expect("json");
        assert_eq!(v["ok"], true);
        assert!(r.json::<Vec<u8>>().is_err());
        let long = "x".repeat(300);
        let err = Response::new(503, vec![], long)
            .error_for_status()
            .expect_err("503");
        let Error::Status(503, excerpt) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(excerpt.len(), 203);
        assert_eq!(
            Error::Status(404, String::new()).to_string(),
            "HTTP status 404"
        );
    }
}
