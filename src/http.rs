//! The HTTP endpoint of a running job: `/metrics` (Prometheus text format), `/health`
//! (the process is alive) and `/ready` (the job is assigned, consuming and, with
//! exactly-once, committing), for Prometheus and for orchestrators' probes.
//!
//! The server runs on a thread of its own with a single-threaded tokio runtime, away from
//! the timely workers: a scrape never waits for a worker, and a busy worker never delays a
//! probe. The address is bound before the job starts, so a port in use fails start-up with
//! a message naming the setting; port 0 picks a free port ([`HttpServer::address`]).

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::metrics::Metrics;

/// The HTTP endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound.
    #[error("cannot listen on {address} (http.listen / --http-listen): {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server thread could not start.
    #[error("cannot start the HTTP server: {0}")]
    Start(std::io::Error),
}

/// A running HTTP endpoint; dropping it stops the server.
pub struct HttpServer {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// The address the server listens on (with the port chosen, when 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `address` and serves `metrics` there until the returned server is dropped.
pub fn serve(address: SocketAddr, metrics: Metrics) -> Result<HttpServer, HttpError> {
    let listener = std::net::TcpListener::bind(address)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| HttpError::Bind { address, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { address, source })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(HttpError::Start)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || runtime.block_on(accept_loop(listener, metrics, stopped)))
        .map_err(HttpError::Start)?;
    tracing::info!(address = %bound, "serving /metrics, /health and /ready");
    Ok(HttpServer {
        address: bound,
        stop: Some(stop),
        thread: Some(thread),
    })
}

async fn accept_loop(
    listener: std::net::TcpListener,
    metrics: Metrics,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the HTTP listener cannot be used");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&metrics, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// The answer to one request.
fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET is served\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        "/health" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/ready" => match metrics.readiness() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready: {why}\n"),
            ),
        },
        "/" => text(
            StatusCode::OK,
            PLAIN,
            "waterline: /metrics (Prometheus), /health, /ready\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(address: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(address).expect("the server accepts");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("the request is sent");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("the answer is read");
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        (status, body.to_string())
    }

    #[test]
    fn serves_metrics_health_and_readiness() {
        let metrics = Metrics::new("test");
        let server = serve("127.0.0.1:0".parse().expect("an address"), metrics.clone())
            .expect("port 0 binds");
        let at = server.address();
        assert_ne!(at.port(), 0);
        let (status, body) = get(at, "/metrics");
        assert_eq!(status, 200);
        assert!(body.contains("waterline_build_info{"), "{body}");
        assert_eq!(get(at, "/health"), (200, "ok\n".into()));
        let (status, body) = get(at, "/ready");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("not running"), "{body}");
        metrics.run_started(1, None);
        metrics.worker_assigned(0);
        assert_eq!(get(at, "/ready"), (200, "ready\n".into()));
        assert_eq!(get(at, "/nope").0, 404);
        // A second server on the same port fails, naming the setting.
        let e = serve(at, metrics).err().expect("the port is taken");
        assert!(e.to_string().contains("http.listen"), "{e}");
        drop(server);
    }
}
