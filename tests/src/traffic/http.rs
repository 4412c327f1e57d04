//! The HTTP/1 plumbing the harness's servers and clients share: a loopback listener, an accept
//! loop whose connections die with it, a pooling client, and whole-body helpers.
//!
//! Every server here is one task that owns its listener and, in a `JoinSet`, the task of every
//! connection it accepted. Aborting that task drops both: the port stops accepting and every open
//! connection is closed where it stands, answered or not — which is how the backends die with
//! their instance. Bodies are small (query-protocol forms, XML answers, instance ids), so they are
//! read whole before being looked at or forwarded.

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A body held whole in memory.
pub type Body = Full<Bytes>;

/// A pooling HTTP/1 client for plain `http://` URIs.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Body>;

/// A listener on 127.0.0.1 at a port the system chose, and that port.
pub async fn bind() -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves HTTP/1 on `listener`, every request answered by `handle`, until the returned task is
/// aborted. With `preserve_header_case` the received header names keep their case in the request's
/// extensions, and a response built from parts that carry such an extension is written with it.
pub fn serve<H, F>(listener: TcpListener, preserve_header_case: bool, handle: H) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // Out of descriptors or a connection reset while queued: the listener
                            // is still good, so wait a little and accept again.
                            eprintln!("traffic: accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let handle = handle.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let answer = handle(req);
                            async move { Ok::<_, Infallible>(answer.await) }
                        });
                        // A connection ends with an error when the peer goes away mid-exchange;
                        // that is the peer's business, not the server's.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .preserve_header_case(preserve_header_case)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

/// A client that keeps connections open between requests.
pub fn client(preserve_header_case: bool) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http1_preserve_header_case(preserve_header_case)
        .build(connector)
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

/// The value of a query parameter of a URI (`ms` in `/?ms=1500`), percent-decoded.
pub fn query_param(uri: &hyper::Uri, name: &str) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
