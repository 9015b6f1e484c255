//! The layers every request passes before a handler: the `Host` check (DNS
//! rebinding), CORS, the API key (compared in constant time), JSON bodies only, bodies
//! that stall or announce too much refused, and the request counted in `/metrics`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ServerOptions;
use crate::api::{ApiError, clip};
use crate::metrics::{self, Metrics};
use crate::routes::AppState;

/// Who may call: the `Host` names accepted and the origins CORS lets read answers.
pub(crate) struct Guard {
    /// Check `Host` (the server listens on loopback): only loopback names and
    /// `allowed_hosts` are answered, which defeats DNS rebinding.
    check_host: bool,
    /// Host names (lowercase) answered besides the loopback ones; `*`: any.
    allowed_hosts: Vec<String>,
    /// Origins (as browsers send them) that CORS lets read answers; `*`: any.
    cors_origins: Vec<String>,
}

impl Guard {
    /// The guard of a server started with `options`, listening on a loopback address
    /// or not.
    pub(crate) fn new(options: &ServerOptions, loopback: bool) -> Arc<Self> {
        Arc::new(Self {
            check_host: loopback && !options.allowed_hosts.iter().any(|h| h == "*"),
            allowed_hosts: options
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            cors_origins: options.cors_origins.clone(),
        })
    }

    /// Whether a request with this `Host` (None: without one) is answered.
    fn host_allowed(&self, host: Option<&str>) -> bool {
        if !self.check_host {
            return true;
        }
        let Some(host) = host else { return false };
        let Some(name) = host_name(host) else {
            return false;
        };
        is_loopback_name(name)
            || self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name) || h.eq_ignore_ascii_case(host))
    }

    /// The `Access-Control-Allow-Origin` a request from `origin` gets, if any.
    fn cors_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        let text = origin.to_str().ok()?;
        if self.cors_origins.iter().any(|o| o == "*") {
            Some(HeaderValue::from_static("*"))
        } else if self
            .cors_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(text))
        {
            Some(origin.clone())
        } else {
            None
        }
    }
}

/// Whether an IP address is a loopback one (127.0.0.0/8, ::1, or 127.x.x.x mapped
/// into IPv6).
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The name of a `Host` header's value without its port (`[::1]` keeps its brackets);
/// None when it is malformed.
fn host_name(host: &str) -> Option<&str> {
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        host.split_at(end + 1)
    } else {
        match host.rfind(':') {
            Some(colon) => host.split_at(colon),
            None => (host, ""),
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
        });
    (port_ok && !name.is_empty()).then_some(name)
}

/// `localhost`, `127.x.x.x` or `[::1]`.
fn is_loopback_name(name: &str) -> bool {
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .is_ok_and(|ip| is_loopback(IpAddr::V6(ip)));
    }
    name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// On a server listening on loopback, a request whose `Host` is not a loopback name
/// (nor an allowed host) is refused with a 403: a web page whose own name was made to
/// resolve to 127.0.0.1 (DNS rebinding) reaches the server with that name as `Host`.
pub(crate) async fn check_host(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if !guard.host_allowed(host) {
        let message = match host {
            Some(host) => format!(
                "the Host `{}` is not served: this server listens on loopback and answers localhost, 127.x.x.x and [::1] (more with the allowed hosts option: `ember serve --allowed-host NAME`)",
                clip(host)
            ),
            None => "the request has no Host header".to_string(),
        };
        return ApiError::invalid(None, message)
            .with_status(StatusCode::FORBIDDEN)
            .with_code("host_not_allowed")
            .into_response();
    }
    next.run(request).await
}

/// CORS, for the configured origins only: a preflight (`OPTIONS` with
/// `Access-Control-Request-Method`) from one of them is answered 204 with what it asks
/// for allowed, and every answer to one of them carries
/// `Access-Control-Allow-Origin`. Without configured origins (the default) nothing is
/// added, so browsers keep other sites from reading the answers.
pub(crate) async fn cors(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    if guard.cors_origins.is_empty() {
        return next.run(request).await;
    }
    let allow = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|origin| guard.cors_origin(origin));
    let Some(allow) = allow else {
        let mut response = next.run(request).await;
        response
            .headers_mut()
            .append(header::VARY, HeaderValue::from_static("origin"));
        return response;
    };
    let headers = request.headers();
    if request.method() == Method::OPTIONS
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let out = response.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        // The origin is trusted: the headers it asks for (the SDKs send some of their
        // own besides Authorization and Content-Type) are allowed.
        if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        // Chrome's Private Network Access: a public site calling a local server.
        if headers
            .get("access-control-request-private-network")
            .is_some_and(|v| v == "true")
        {
            out.insert(
                "access-control-allow-private-network",
                HeaderValue::from_static("true"),
            );
        }
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        out.append(
            header::VARY,
            HeaderValue::from_static(
                "origin, access-control-request-method, access-control-request-headers",
            ),
        );
        return response;
    }
    let mut response = next.run(request).await;
    let out = response.headers_mut();
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    out.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

/// A `POST` body must be declared JSON (`application/json`, optionally with
/// `charset=utf-8`); anything else is a 415. Browsers send a form or text cross-site
/// without asking first (no CORS preflight), never JSON, so this also keeps a web page
/// from making the server generate for it.
pub(crate) async fn require_json(request: Request, next: Next) -> Response {
    if request.method() == Method::POST {
        let given = request.headers().get(header::CONTENT_TYPE);
        if !given
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_type)
        {
            let got = match given {
                Some(v) => format!("`{}`", clip(&String::from_utf8_lossy(v.as_bytes()))),
                None => "none".to_string(),
            };
            return ApiError::invalid(
                None,
                format!(
                    "the body must be JSON, sent with `Content-Type: application/json` (got {got})"
                ),
            )
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .into_response();
        }
    }
    next.run(request).await
}

/// `application/json`, alone or with `charset=utf-8` (any case, spaces around `;`).
fn is_json_type(value: &str) -> bool {
    let mut parts = value.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("application/json"))
    {
        return false;
    }
    parts.all(|parameter| {
        parameter.split_once('=').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("charset")
                && value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        })
    })
}

/// A body announced larger than the limit is refused before it is read: the client
/// gets its 413 at once instead of sending megabytes first (bodies without a
/// `Content-Length` are still cut at the limit while they are read).
pub(crate) async fn refuse_announced_oversize(
    State(max_body): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > max_body as u64) {
        return ApiError::invalid(None, "the request body is too large")
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            .into_response();
    }
    next.run(request).await
}

/// Counts each request by endpoint and status, and times it until its response body
/// is sent whole (or dropped: the client left).
pub(crate) async fn measure(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let endpoint = metrics::endpoint(request.uri().path());
    let response = next.run(request).await;
    let metrics = state.metrics().clone();
    metrics.answered(endpoint, response.status().as_u16());
    response.map(|body| {
        Body::new(Guarded {
            body,
            _guard: Timed {
                metrics,
                endpoint,
                started,
            },
        })
    })
}

/// Records a request's duration when dropped.
struct Timed {
    metrics: Arc<Metrics>,
    endpoint: &'static str,
    started: Instant,
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.metrics.finished(self.endpoint, self.started.elapsed());
    }
}

/// A response body that holds `guard` until it is dropped (hyper drops it once it
/// has sent it whole, or when the connection ends).
pub(crate) struct Guarded<G> {
    pub(crate) body: Body,
    /// Held for its `Drop`.
    pub(crate) _guard: G,
}

impl<G: Unpin> hyper::body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body may pause for `pause` at most (the header timeout) between two
/// pieces: a client that announces a body and stops sending it gets a 408 instead of
/// holding its connection and handler forever.
pub(crate) async fn limit_body_pauses(
    State(pause): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    next.run(request.map(|body| {
        Body::new(PatientBody {
            body,
            pause,
            timer: None,
        })
    }))
    .await
}

/// A request body that fails with [`BodyStalled`] when nothing comes for `pause`.
struct PatientBody {
    body: Body,
    pause: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Nothing of the request body came for this long.
#[derive(Debug)]
pub(crate) struct BodyStalled(Duration);

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body stopped coming: nothing for {:.1} s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyStalled {}

impl hyper::body::Body for PatientBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let pause = this.pause;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.timer = None;
                        Poll::Ready(Some(Err(Box::new(BodyStalled(pause)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// With an API key configured, `/v1/*` needs `Authorization: Bearer KEY` (the scheme
/// in any case). The key given and the key configured are compared as SHA-256
/// digests, in constant time; an empty key is never accepted.
pub(crate) async fn require_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(digest) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .filter(|token| !token.is_empty());
        let matches = given.is_some_and(|token| {
            let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            bool::from(given.ct_eq(digest))
        });
        if !matches {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// The token of an `Authorization: Bearer TOKEN` value (the scheme in any case).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}
