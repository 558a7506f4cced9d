//! The dashboard's HTTP server: routes, the token check, the page's event
//! stream and the poller that runs only while someone watches.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use tokio::sync::watch;

use super::sample::{HubLink, RateTracker};
use super::tail::{self, Format, TailRequest};
use super::{DashboardError, Listen, Settings};
use crate::wire::Pattern;

const INDEX_HTML: &[u8] = include_bytes!("assets/index.html");
const APP_JS: &[u8] = include_bytes!("assets/app.js");
const STYLE_CSS: &[u8] = include_bytes!("assets/style.css");
const UPLOT_JS: &[u8] = include_bytes!("assets/uPlot.iife.min.js");
const UPLOT_CSS: &[u8] = include_bytes!("assets/uPlot.min.css");
const UPLOT_LICENSE: &[u8] = include_bytes!("assets/uPlot.LICENSE");

/// Everything the handlers share.
struct Shared {
    settings: Settings,
    link: Arc<HubLink>,
    /// The latest sample as JSON, for every open page.
    samples: watch::Sender<Option<Arc<str>>>,
    /// Pages with an open event stream.
    viewers: AtomicUsize,
    /// Event streams of any kind (pages and tails), bounded by max_streams.
    streams: AtomicUsize,
    /// Whether the poller task runs; viewers and the poller decide under it.
    polling: Mutex<bool>,
    /// Name of the cookie that carries the token (per port: cookies are not).
    cookie: String,
    /// Scrapes in progress at most; each holds a blocking thread while it
    /// waits for the hub.
    scrapes: tokio::sync::Semaphore,
}

/// Concurrent /metrics requests served; more get 503.
const MAX_SCRAPES: usize = 4;

type Sh = Arc<Shared>;

/// Counts an open stream until dropped.
struct StreamSlot(Sh, bool);

impl StreamSlot {
    fn take(sh: &Sh, viewer: bool) -> Option<StreamSlot> {
        let n = sh.streams.fetch_add(1, Ordering::SeqCst);
        if n >= sh.settings.max_streams {
            sh.streams.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        if viewer {
            sh.viewers.fetch_add(1, Ordering::SeqCst);
        }
        Some(StreamSlot(sh.clone(), viewer))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
        if self.1 {
            self.0.viewers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

pub async fn serve(settings: Settings) -> Result<(), DashboardError> {
    let listen = settings.listen.clone();
    let (samples, _) = watch::channel(None);
    let mut sh = Shared {
        link: Arc::new(HubLink::new(settings.socket.clone())),
        settings,
        samples,
        viewers: AtomicUsize::new(0),
        streams: AtomicUsize::new(0),
        polling: Mutex::new(false),
        cookie: String::new(),
        scrapes: tokio::sync::Semaphore::new(MAX_SCRAPES),
    };
    let mut out = std::io::stdout().lock();
    match listen {
        Listen::Tcp(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DashboardError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
            let local = l.local_addr().map_err(DashboardError::Serve)?;
            sh.cookie = format!("ipchub_dashboard_{}", local.port());
            let _ = match &sh.settings.token {
                Some(_) if sh.settings.token_from_file => writeln!(
                    out,
                    "Dashboard: http://{local}/?token=TOKEN (TOKEN from the token file)\nMetrics:   http://{local}/metrics (header Authorization: Bearer TOKEN)"
                ),
                Some(t) => writeln!(
                    out,
                    "Dashboard: http://{local}/?token={t}\nMetrics:   http://{local}/metrics (header Authorization: Bearer {t})"
                ),
                None => writeln!(
                    out,
                    "Dashboard: http://{local}/\nMetrics:   http://{local}/metrics"
                ),
            };
            if sh.settings.token.is_none() {
                eprintln!("ipchubctl: warning: no token: whoever reaches {local} sees what this user may see");
            }
            if !local.ip().is_loopback() {
                eprintln!(
                    "ipchubctl: warning: listening beyond loopback on {local} (--allow-remote)"
                );
            }
            let _ = out.flush();
            drop(out);
            axum::serve(l, app(Arc::new(sh)))
                .await
                .map_err(DashboardError::Serve)
        }
        Listen::Unix(path) => {
            let l = bind_unix(&path)?;
            sh.cookie = "ipchub_dashboard".into();
            let _ = writeln!(
                out,
                "Dashboard: unix:{p} (e.g. curl --unix-socket {p} http://localhost/metrics)",
                p = path.display()
            );
            let _ = out.flush();
            drop(out);
            axum::serve(l, app(Arc::new(sh)))
                .await
                .map_err(DashboardError::Serve)
        }
    }
}

/// A UNIX listener only its owner may connect to. A stale socket left by a
/// killed dashboard (nobody answers on it) is replaced; anything else at
/// the path is an error.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, DashboardError> {
    let err = |source| DashboardError::Bind {
        addr: format!("unix:{}", path.display()),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() && std::os::unix::net::UnixStream::connect(path).is_err() {
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    umask(old);
    let l = bound.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    tokio::net::UnixListener::from_std(l).map_err(err)
}

fn app(sh: Sh) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { asset(STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/uPlot.min.js",
            get(|| async { asset(UPLOT_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/uPlot.min.css",
            get(|| async { asset(UPLOT_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/licenses/uPlot.txt",
            get(|| async { asset(UPLOT_LICENSE, "text/plain; charset=utf-8") }),
        )
        .route("/metrics", get(metrics))
        .route("/api/events", get(events))
        .route("/api/tail", get(tail_stream))
        .layer(middleware::from_fn_with_state(sh.clone(), guard))
        .with_state(sh)
}

fn asset(body: &'static [u8], kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// Constant-time comparison, so the token cannot be guessed byte by byte
/// from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query_token(q: Option<&str>) -> Option<&str> {
    q?.split('&').find_map(|kv| kv.strip_prefix("token="))
}

fn cookie_token<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
}

/// On a loopback listener, the Host header must name a loopback host, so
/// a web page cannot reach the dashboard through DNS rebinding.
fn host_is_loopback(h: &HeaderMap) -> bool {
    let Some(host) = h.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Every request: the Host check, the token, and headers that keep the page
/// out of frames and caches.
async fn guard(State(sh): State<Sh>, req: Request, next: Next) -> Response {
    let tcp_loopback = matches!(&sh.settings.listen, Listen::Tcp(a) if a.ip().is_loopback());
    if tcp_loopback && !host_is_loopback(req.headers()) {
        return (
            StatusCode::FORBIDDEN,
            "Host header must name a loopback address\n",
        )
            .into_response();
    }
    let mut set_cookie = false;
    if let Some(token) = &sh.settings.token {
        let t = token.as_bytes();
        let h = req.headers();
        let bearer = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let from_query = query_token(req.uri().query()).is_some_and(|q| same(q.as_bytes(), t));
        let ok = from_query
            || bearer.is_some_and(|b| same(b.trim().as_bytes(), t))
            || cookie_token(h, &sh.cookie).is_some_and(|c| same(c.as_bytes(), t));
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "token required: open the URL ipchubctl dashboard printed, or send Authorization: Bearer TOKEN\n",
            )
                .into_response();
        }
        set_cookie = from_query;
    }
    // The page's first load carries the token in the URL: keep it in a
    // cookie and send the browser to the bare URL.
    let mut resp = if set_cookie && req.uri().path() == "/" {
        (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    if set_cookie {
        let token = sh.settings.token.as_deref().unwrap_or_default();
        let cookie = format!("{}={token}; HttpOnly; SameSite=Strict; Path=/", sh.cookie);
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            h.insert(header::SET_COOKIE, v);
        }
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    resp
}

async fn metrics(State(sh): State<Sh>) -> Response {
    let Ok(_permit) = sh.scrapes.try_acquire() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many scrapes at once\n",
        )
            .into_response();
    };
    let link = sh.link.clone();
    let stats = tokio::task::spawn_blocking(move || link.snapshot())
        .await
        .ok()
        .and_then(|r| r.ok());
    let body = super::metrics::render(stats.as_ref(), sh.settings.top_channels);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "too many open pages and tails (--max-streams)\n",
    )
        .into_response()
}

/// The page's live feed: one `sample` event per snapshot.
async fn events(State(sh): State<Sh>) -> Response {
    let Some(slot) = StreamSlot::take(&sh, true) else {
        return busy();
    };
    let mut rx = sh.samples.subscribe();
    if rx.borrow().is_some() {
        rx.mark_changed();
    }
    ensure_polling(&sh);
    let s = stream::unfold((rx, slot), |(mut rx, slot)| async move {
        loop {
            rx.changed().await.ok()?;
            let v = rx.borrow_and_update().clone();
            if let Some(json) = v {
                let ev = Event::default().event("sample").data(&*json);
                return Some((Ok::<_, std::convert::Infallible>(ev), (rx, slot)));
            }
        }
    });
    sse(s)
}

fn sse<S>(s: S) -> Response
where
    S: Stream<Item = Result<Event, std::convert::Infallible>> + Send + 'static,
{
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

/// Start the poller unless it runs. It stops by itself when the last page
/// closes; deciding under `polling` keeps a page that opens just then from
/// being left without one.
fn ensure_polling(sh: &Sh) {
    let mut running = sh.polling.lock().unwrap_or_else(|p| p.into_inner());
    if !*running {
        *running = true;
        tokio::spawn(poll(sh.clone()));
    }
}

async fn poll(sh: Sh) {
    let mut rates = RateTracker::default();
    loop {
        {
            let mut running = sh.polling.lock().unwrap_or_else(|p| p.into_inner());
            if sh.viewers.load(Ordering::SeqCst) == 0 {
                *running = false;
                return;
            }
        }
        let link = sh.link.clone();
        let sample = match tokio::task::spawn_blocking(move || link.snapshot()).await {
            Ok(Ok(st)) => rates.sample(st, sh.settings.slow_queue),
            Ok(Err(e)) => rates.error(&e),
            Err(_) => rates.error(&crate::client::ClientError::Closed(
                "statistics request failed".into(),
            )),
        };
        if let Ok(json) = serde_json::to_string(&sample) {
            sh.samples.send_replace(Some(Arc::from(json)));
        }
        tokio::time::sleep(sh.settings.interval).await;
    }
}

#[derive(Debug, Deserialize)]
struct TailQuery {
    channel: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    max: Option<usize>,
}

/// A channel's messages while the page keeps this stream open.
async fn tail_stream(
    State(sh): State<Sh>,
    q: Result<Query<TailQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return (
            StatusCode::BAD_REQUEST,
            "expected ?channel=NAME[&format=text|hex][&max=BYTES]\n",
        )
            .into_response();
    };
    if let Err(e) = Pattern::parse(&q.channel) {
        return (StatusCode::BAD_REQUEST, format!("invalid channel: {e}\n")).into_response();
    }
    let format = match q.format.as_deref() {
        None | Some("text") => Format::Text,
        Some("hex") => Format::Hex,
        Some(f) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("format '{f}': expected text or hex\n"),
            )
                .into_response()
        }
    };
    let Some(slot) = StreamSlot::take(&sh, false) else {
        return busy();
    };
    let rx = tail::start(TailRequest {
        options: crate::client::Options {
            name: "ipchubctl dashboard tail".into(),
            ..sh.link.options()
        },
        pattern: q.channel,
        format,
        max_bytes: q
            .max
            .unwrap_or(usize::MAX)
            .clamp(1, sh.settings.tail_max_bytes),
        rate: sh.settings.tail_rate,
    });
    let s = stream::unfold((rx, slot), |(mut rx, slot)| async move {
        let ev = rx.recv().await?;
        let json = serde_json::to_string(&ev).ok()?;
        Some((
            Ok::<_, std::convert::Infallible>(Event::default().event("tail").data(json)),
            (rx, slot),
        ))
    });
    sse(s)
}
