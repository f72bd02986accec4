//! Outbound calls behind the [`Transport`] trait: [`Host`] sends through the
//! agent, tests answer with a fake. Also the clock, so that token expiry and
//! Shopee timestamps can be tested with a fixed time.
//!
//! Error texts name a call by method and URL **without its query**: Shopee
//! puts the access token and signature there.

use rollback_plugin_sdk::clock;
use rollback_plugin_sdk::http::{self, Request, Response};
use serde::de::DeserializeOwned;

use crate::errors;

/// One outbound request, as plain data so tests can inspect it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Absolute URL, query included.
    pub url: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body, if any.
    pub body: Option<Vec<u8>>,
    /// A call to the marketplace that spends its quota: sent without host
    /// retries, and a 429 to it is noted in [`crate::quota`].
    pub metered: bool,
}

impl Call {
    /// `GET url`.
    pub fn get(url: impl Into<String>) -> Self {
        Call {
            method: "GET".to_string(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            metered: false,
        }
    }

    /// `POST url` with an `application/x-www-form-urlencoded` body of
    /// `pairs` (values percent-encoded).
    pub fn post_form(url: impl Into<String>, pairs: &[(&str, &str)]) -> Self {
        Call {
            method: "POST".to_string(),
            url: url.into(),
            headers: vec![(
                "Content-Type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            )],
            body: Some(form(pairs).into_bytes()),
            metered: false,
        }
    }

    /// `POST url` with `value` as an `application/json` body.
    pub fn post_json(url: impl Into<String>, value: &serde_json::Value) -> Self {
        Call {
            method: "POST".to_string(),
            url: url.into(),
            headers: vec![("Content-Type".to_string(), "application/json".to_string())],
            body: Some(value.to_string().into_bytes()),
            metered: false,
        }
    }

    /// Marks the call as one that spends the marketplace's quota.
    #[must_use]
    pub fn metered(mut self) -> Self {
        self.metered = true;
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The first header called `name` (case-insensitive).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `METHOD url-without-query`, for error texts and logs.
    pub fn target(&self) -> String {
        format!("{} {}", self.method, without_query(&self.url))
    }
}

/// Sends calls and tells the time.
pub trait Transport {
    /// Sends `call` and waits for the whole response (any status).
    fn send(&self, call: &Call) -> Result<Response, http::Error>;

    /// Wall-clock time, milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The agent: requests go through the host's `http` import (allow-list,
/// body cap, 429/503 retries), time comes from its clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct Host;

impl Transport for Host {
    fn send(&self, call: &Call) -> Result<Response, http::Error> {
        let mut request = Request::new(&call.method, &call.url);
        for (name, value) in &call.headers {
            request = request.header(name, value);
        }
        if let Some(body) = &call.body {
            request = request.body(body.clone());
        }
        if call.metered {
            // A quick retry would only spend the quota the seller's app needs.
            request = request.max_retries(0);
        }
        request.send()
    }

    fn now_ms(&self) -> u64 {
        clock::now_ms()
    }
}

/// Sends `call`; a transport failure becomes a text naming the call. A 429
/// to a metered call sets when the next may go ([`crate::quota`]).
pub fn send(transport: &dyn Transport, call: &Call) -> Result<Response, String> {
    let response = transport
        .send(call)
        .map_err(|err| format!("{}: {err}", call.target()))?;
    if call.metered && response.status() == 429 {
        crate::quota::throttled(transport.now_ms(), &response);
    }
    Ok(response)
}

/// The response when its status is 2xx, else a text with the status and
/// the provider's error message (see [`errors::describe`]).
pub fn expect_success(call: &Call, response: Response) -> Result<Response, String> {
    if response.is_success() {
        return Ok(response);
    }
    Err(status_error(call, &response))
}

/// `GET ... -> HTTP 429 after 4 retries: QuotaExceeded: ...`.
pub fn status_error(call: &Call, response: &Response) -> String {
    let retries = match response.retries() {
        0 => String::new(),
        1 => " after 1 retry".to_string(),
        n => format!(" after {n} retries"),
    };
    format!(
        "{} -> HTTP {}{retries}: {}",
        call.target(),
        response.status(),
        errors::describe(response.body())
    )
}

/// The body of a 2xx `response` decoded as JSON into `T`; malformed or
/// unexpected JSON is an error naming the call.
pub fn decode<T: DeserializeOwned>(call: &Call, response: &Response) -> Result<T, String> {
    serde_json::from_slice(response.body())
        .map_err(|e| format!("{}: unexpected answer: {e}", call.target()))
}

/// The body of `response` as JSON of type `T` when its status is 2xx; else
/// the error of [`expect_success`].
pub fn expect_json<T: DeserializeOwned>(call: &Call, response: Response) -> Result<T, String> {
    let response = expect_success(call, response)?;
    decode(call, &response)
}

/// `GET url`, expecting 2xx and JSON of type `T` (an app's own endpoints).
pub fn get_json<T: DeserializeOwned>(transport: &dyn Transport, url: &str) -> Result<T, String> {
    let call = Call::get(url).header("Accept", "application/json");
    expect_json(&call, send(transport, &call)?)
}

/// `url` up to its `?`.
pub fn without_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

/// Characters kept as they are in a query value or form field: RFC 3986's
/// unreserved set. Everything else is percent-encoded.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` percent-encoded for use as a query value or form field.
pub fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, QUERY_VALUE).to_string()
}

/// `k1=v1&k2=v2` with keys and values percent-encoded.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&encode(key));
        out.push('=');
        out.push_str(&encode(value));
    }
    out
}

/// `Basic base64(user:password)`.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[cfg(any(test, feature = "testing"))]
pub mod fake {
    //! A scripted server for unit tests (cargo feature `testing`).

    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;

    use super::*;

    /// Answers calls in order from a script, records them, and tells a
    /// settable time. Once the script is used up, calls fail as refused.
    pub struct Fake {
        /// The answers still to give: status and body.
        pub answers: RefCell<VecDeque<(u16, String)>>,
        /// The calls received so far.
        pub calls: RefCell<Vec<Call>>,
        /// What `now_ms` returns.
        pub now: Cell<u64>,
    }

    impl Fake {
        /// A fake at time `now_ms` that gives `answers` in order.
        pub fn new(now_ms: u64, answers: &[(u16, &str)]) -> Self {
            Fake {
                answers: RefCell::new(
                    answers
                        .iter()
                        .map(|(s, b)| (*s, (*b).to_string()))
                        .collect(),
                ),
                calls: RefCell::new(Vec::new()),
                now: Cell::new(now_ms),
            }
        }

        /// The calls received so far.
        pub fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }

        /// The URLs of the calls received so far.
        pub fn urls(&self) -> Vec<String> {
            self.calls.borrow().iter().map(|c| c.url.clone()).collect()
        }
    }

    impl Transport for Fake {
        fn send(&self, call: &Call) -> Result<Response, http::Error> {
            self.calls.borrow_mut().push(call.clone());
            match self.answers.borrow_mut().pop_front() {
                Some((status, body)) => Ok(Response::new(status, vec![], body)),
                None => Err(http::Error::Transport("connection refused".to_string())),
            }
        }

        fn now_ms(&self) -> u64 {
            self.now.get()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(encode("a b&c=d/é~._-"), "a%20b%26c%3Dd%2F%C3%A9~._-");
        assert_eq!(
            form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "Atzr|x+y")
            ]),
            "grant_type=refresh_token&refresh_token=Atzr%7Cx%2By"
        );
        assert_eq!(basic_auth("client", "s3cret"), "Basic Y2xpZW50OnMzY3JldA==");
    }

    #[test]
    fn targets_hide_the_query() {
        let call = Call::get("https://x.test/api/v2/a?access_token=t&sign=s");
        assert_eq!(call.target(), "GET https://x.test/api/v2/a");
        let err = expect_success(
            &call,
            Response::new(
                403,
                vec![],
                r#"{"errors":[{"code":"Unauthorized","message":"Access to requested resource is denied."}]}"#,
            ),
        )
        .expect_err("403");
        assert_eq!(
            err,
            "GET https://x.test/api/v2/a -> HTTP 403: Unauthorized: Access to requested resource is denied."
        );
    }

    #[test]
    fn decode_errors_name_the_call() {
        let call = Call::get("http://app/status");
        let err = decode::<u32>(&call, &Response::new(200, vec![], "{")).expect_err("bad");
        assert!(
            err.starts_with("GET http://app/status: unexpected answer: "),
            "{err}"
        );
        let fake = fake::Fake::new(0, &[(200, "[1,2]")]);
        assert_eq!(get_json::<Vec<u8>>(&fake, "http://app/x"), Ok(vec![1, 2]));
        let err = get_json::<Vec<u8>>(&fake, "http://app/x").expect_err("no answer");
        assert_eq!(err, "GET http://app/x: transport error: connection refused");
    }
}
