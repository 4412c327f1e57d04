//! A local Lambda Runtime API: runs the real function binaries the way Lambda does, for tests and
//! benchmarks.
//!
//! One [`RuntimeApi`] plays one execution environment: it serves the endpoints a runtime client
//! calls (`GET /2018-06-01/runtime/invocation/next`, `POST .../invocation/{id}/response`,
//! `POST .../invocation/{id}/error`, `POST .../init/error`) on a loopback port, queues the
//! invocations a test asks for, and hands each to the function's long poll. [`FunctionProcess`] is
//! the function binary started against it, with its stdout (the JSON log lines) captured.
//!
//! The HTTP/1.1 server is minimal but speaks what `lambda_runtime` sends: keep-alive connections
//! with several requests each, bodies sized by `Content-Length` or sent chunked.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

const PREFIX: &str = "/2018-06-01/runtime";
/// Requests larger than this are refused (Lambda's own limit for a synchronous payload is 6 MB).
const MAX_BODY: usize = 8 * 1024 * 1024;
const MAX_HEAD_LINE: usize = 16 * 1024;

/// How an invocation ended, as the function reported it.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// `POST /invocation/{id}/response`: the handler's result.
    Response(Value),
    /// `POST /invocation/{id}/error`: the handler's `Diagnostic`.
    Error {
        error_type: String,
        error_message: String,
    },
}

impl Invocation {
    /// The response, or an error describing the failed invocation.
    pub fn response(self) -> Result<Value> {
        match self {
            Invocation::Response(v) => Ok(v),
            Invocation::Error {
                error_type,
                error_message,
            } => bail!("the invocation failed: {error_type}: {error_message}"),
        }
    }

    /// `(error_type, error_message)`, or an error if the invocation succeeded.
    pub fn error(self) -> Result<(String, String)> {
        match self {
            Invocation::Error {
                error_type,
                error_message,
            } => Ok((error_type, error_message)),
            Invocation::Response(v) => bail!("the invocation succeeded unexpectedly: {v}"),
        }
    }
}

/// The local Runtime API server. Stops serving when dropped.
pub struct RuntimeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

/// An invocation waiting for the function's next poll.
struct Queued {
    id: String,
    payload: Vec<u8>,
    deadline: SystemTime,
}

/// What the test side is waiting for.
struct Waiting {
    done: oneshot::Sender<Result<Invocation, String>>,
    /// Whether the function has fetched it (`next` returned it).
    fetched: bool,
}

#[derive(Default)]
struct State {
    waiting: HashMap<String, Waiting>,
    /// Every `next` request, when it arrived.
    polls: Vec<Instant>,
    init_error: Option<Value>,
    function_name: String,
}

struct Shared {
    state: Mutex<State>,
    queue_tx: mpsc::UnboundedSender<Queued>,
    /// Held by the one `next` long poll that is waiting.
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated in a way that matters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RuntimeApi {
    /// Binds a free loopback port and starts serving.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the runtime API port")?;
        let addr = listener.local_addr()?;
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                function_name: "function".into(),
                ..State::default()
            }),
            queue_tx,
            queue_rx: tokio::sync::Mutex::new(queue_rx),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        Ok(RuntimeApi {
            addr,
            shared,
            server,
        })
    }

    /// `127.0.0.1:PORT`: the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Starts a function binary against this API, with the environment Lambda gives it plus `env`.
    /// The function name is the binary's file name. The process is killed when the handle drops.
    pub fn spawn_function<K, V>(&self, bin: &Path, env: &[(K, V)]) -> Result<FunctionProcess>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let name = bin
            .file_name()
            .and_then(OsStr::to_str)
            .unwrap_or("function")
            .to_string();
        self.shared.state().function_name = name.clone();
        let mut cmd = Command::new(bin);
        cmd.env_remove("RUST_LOG")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_LAMBDA_MAX_CONCURRENCY")
            .env("AWS_LAMBDA_RUNTIME_API", self.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", &name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env(
                "AWS_LAMBDA_LOG_STREAM_NAME",
                format!("local/[$LATEST]{:032x}", unique()),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        FunctionProcess::spawn(cmd, name)
    }

    /// Queues an invocation and waits up to `timeout` for the function to answer it.
    pub async fn invoke(&self, payload: Value, timeout: Duration) -> Result<Invocation> {
        let id = request_id();
        let (done, answer) = oneshot::channel();
        {
            let mut state = self.shared.state();
            if let Some(e) = &state.init_error {
                bail!("the function failed to initialize: {e}");
            }
            state.waiting.insert(
                id.clone(),
                Waiting {
                    done,
                    fetched: false,
                },
            );
        }
        let queued = Queued {
            id: id.clone(),
            payload: serde_json::to_vec(&payload)?,
            deadline: SystemTime::now() + timeout,
        };
        if self.shared.queue_tx.send(queued).is_err() {
            self.shared.state().waiting.remove(&id);
            bail!("the runtime API server is gone");
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(invocation))) => Ok(invocation),
            Ok(Ok(Err(e))) => Err(anyhow!("invocation {id}: {e}")),
            Ok(Err(_)) => bail!("invocation {id}: the runtime API server stopped"),
            Err(_) => {
                let waiting = self.shared.state().waiting.remove(&id);
                let what = match waiting {
                    Some(w) if w.fetched => "the function fetched it but did not answer",
                    Some(_) => "the function never polled for it (not started, crashed, or busy)",
                    None => "it was answered just now",
                };
                bail!("invocation {id} timed out after {timeout:?}: {what}")
            }
        }
    }

    /// When the function first asked for an invocation at or after `start`: with `start` taken
    /// just before spawning the process, the difference is its init time.
    pub fn first_poll_after(&self, start: Instant) -> Option<Instant> {
        self.shared
            .state()
            .polls
            .iter()
            .copied()
            .find(|t| *t >= start)
    }

    /// [`first_poll_after`](Self::first_poll_after), waiting up to `timeout` for it.
    pub async fn wait_first_poll_after(
        &self,
        start: Instant,
        timeout: Duration,
    ) -> Result<Instant> {
        let give_up = Instant::now() + timeout;
        loop {
            if let Some(t) = self.first_poll_after(start) {
                return Ok(t);
            }
            if let Some(e) = self.init_error() {
                bail!("the function failed to initialize: {e}");
            }
            if Instant::now() >= give_up {
                bail!("the function did not poll for an invocation within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// How many `next` requests have arrived.
    pub fn polls(&self) -> usize {
        self.shared.state().polls.len()
    }

    /// The body of `POST /init/error`, if the function reported one.
    pub fn init_error(&self) -> Option<Value> {
        self.shared.state().init_error.clone()
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

// ------------------------------------------------------------------------------------ process

/// A function binary running against a [`RuntimeApi`]. Killed when dropped.
pub struct FunctionProcess {
    name: String,
    child: Mutex<Child>,
    spawned_at: Instant,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl FunctionProcess {
    fn spawn(mut cmd: Command, name: String) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned_at = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            collect_lines(out, stdout.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect_lines(err, stderr.clone());
        }
        Ok(FunctionProcess {
            name,
            child: Mutex::new(child),
            spawned_at,
            stdout,
            stderr,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Just before the process was started.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// The stdout lines so far (the function's log lines).
    pub fn stdout_lines(&self) -> Vec<String> {
        lock(&self.stdout).clone()
    }

    /// The stderr output so far (panics end up here).
    pub fn stderr(&self) -> String {
        lock(&self.stderr).join("\n")
    }

    /// Waits up to `timeout` for a stdout line satisfying `found`, and returns it.
    pub async fn wait_for_line(
        &self,
        timeout: Duration,
        mut found: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        let give_up = Instant::now() + timeout;
        loop {
            if let Some(line) = lock(&self.stdout).iter().find(|l| found(l)) {
                return Ok(line.clone());
            }
            if Instant::now() >= give_up {
                bail!(
                    "{} logged no matching line within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout_lines().join("\n"),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads `from` line by line into `into` on a thread of its own, until EOF.
fn collect_lines(from: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            match line {
                Ok(line) => lock(&into).push(line),
                Err(_) => break,
            }
        }
    });
}

// ------------------------------------------------------------------------------------- server

/// Accepts connections until aborted; the connections it serves stop with it.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                connections.spawn(connection(stream, shared.clone()));
                while connections.try_join_next().is_some() {}
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, body: &Value) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        }
    }

    fn accepted() -> Self {
        Reply::json(202, &json!({"status": "OK"}))
    }

    fn problem(status: u16, error_type: &str, message: &str) -> Self {
        Reply::json(
            status,
            &json!({"errorType": error_type, "errorMessage": message}),
        )
    }
}

/// Serves one keep-alive connection until the client closes it.
async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let request = match read_request(&mut reader).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let reply = Reply::problem(400, "InvalidRequest", &e.to_string());
                let _ = write_reply(&mut write, reply, true).await;
                return;
            }
        };
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let reply =
            if request.method == "GET" && request.path == format!("{PREFIX}/invocation/next") {
                match next_invocation(&shared, &mut reader).await {
                    Some(reply) => reply,
                    None => return, // the client went away while waiting
                }
            } else {
                handle(&shared, &request)
            };
        if write_reply(&mut write, reply, close).await.is_err() || close {
            return;
        }
    }
}

/// Answers a `POST`.
fn handle(shared: &Shared, request: &Request) -> Reply {
    if request.method != "POST" {
        return Reply::problem(404, "NotFound", &format!("no route {}", request.path));
    }
    if request.path == format!("{PREFIX}/init/error") {
        let body = serde_json::from_slice(&request.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&request.body).into()));
        let mut state = shared.state();
        state.init_error = Some(body.clone());
        for (_, w) in state.waiting.drain() {
            let _ = w
                .done
                .send(Err(format!("the function failed to initialize: {body}")));
        }
        return Reply::accepted();
    }
    let Some(rest) = request.path.strip_prefix(&format!("{PREFIX}/invocation/")) else {
        return Reply::problem(404, "NotFound", &format!("no route {}", request.path));
    };
    let outcome = match rest.split_once('/') {
        Some((id, "response")) => (id, response_of(&request.body)),
        Some((id, "error")) => (id, error_of(request)),
        _ => return Reply::problem(404, "NotFound", &format!("no route {}", request.path)),
    };
    let (id, invocation) = outcome;
    match shared.state().waiting.remove(id) {
        Some(w) => {
            let _ = w.done.send(Ok(invocation));
            Reply::accepted()
        }
        None => Reply::problem(
            400,
            "InvalidRequestID",
            &format!("no invocation {id} is waiting for an answer"),
        ),
    }
}

fn response_of(body: &[u8]) -> Invocation {
    Invocation::Response(
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into())),
    )
}

fn error_of(request: &Request) -> Invocation {
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_string);
    Invocation::Error {
        error_type: text("errorType")
            .or_else(|| {
                request
                    .header("lambda-runtime-function-error-type")
                    .map(str::to_string)
            })
            .unwrap_or_default(),
        error_message: text("errorMessage")
            .unwrap_or_else(|| String::from_utf8_lossy(&request.body).into()),
    }
}

/// The `next` long poll: waits for a queued invocation, or for the client to hang up.
async fn next_invocation<R: AsyncBufRead + Unpin>(
    shared: &Shared,
    reader: &mut R,
) -> Option<Reply> {
    shared.state().polls.push(Instant::now());
    let wait = async {
        let mut queue = shared.queue_rx.lock().await;
        loop {
            let queued = queue.recv().await?;
            // Skip invocations the caller stopped waiting for.
            if let Some(w) = shared.state().waiting.get_mut(&queued.id) {
                w.fetched = true;
                return Some(queued);
            }
        }
    };
    let queued = tokio::select! {
        queued = wait => queued?,
        () = hung_up(reader) => return None,
    };
    let state = shared.state();
    let deadline_ms = queued
        .deadline
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let arn = format!(
        "arn:aws:lambda:us-east-1:123456789012:function:{}",
        state.function_name
    );
    Some(Reply {
        status: 200,
        headers: vec![
            ("Lambda-Runtime-Aws-Request-Id", queued.id.clone()),
            ("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string()),
            ("Lambda-Runtime-Invoked-Function-Arn", arn),
            ("Lambda-Runtime-Trace-Id", trace_id()),
        ],
        body: queued.payload,
    })
}

/// Resolves when the peer closes the connection (or it fails). A client waiting on a long poll
/// sends nothing, so any bytes that do arrive are left for the next request.
async fn hung_up<R: AsyncBufRead + Unpin>(reader: &mut R) {
    match reader.fill_buf().await {
        Ok([]) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Reads one request; `None` when the connection closed cleanly before it.
async fn read_request<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Option<Request>> {
    let Some(line) = read_line(reader).await? else {
        return Ok(None);
    };
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("malformed request line {line:?}");
    };
    let path = target.split('?').next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)
            .await?
            .ok_or_else(|| anyhow!("connection closed in the headers"))?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| anyhow!("malformed header {line:?}"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut request = Request {
        method: method.to_string(),
        path,
        headers,
        body: Vec::new(),
    };
    if request
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        request.body = read_chunked(reader).await?;
    } else if let Some(len) = request.header("content-length") {
        let len: usize = len.parse().context("bad Content-Length")?;
        if len > MAX_BODY {
            bail!("body of {len} bytes is too large");
        }
        request.body = vec![0; len];
        reader.read_exact(&mut request.body).await?;
    }
    Ok(Some(request))
}

async fn read_chunked<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)
            .await?
            .ok_or_else(|| anyhow!("connection closed in a chunked body"))?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size, 16).with_context(|| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while read_line(reader).await?.is_some_and(|l| !l.is_empty()) {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            bail!("chunked body is too large");
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).await?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf).await?;
    }
}

/// One CRLF-terminated line without its terminator; `None` at EOF before any byte.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *reader)
        .take(MAX_HEAD_LINE as u64)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        bail!("request line or header too long or truncated");
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(Some(
        String::from_utf8(buf).context("non-UTF-8 request head")?,
    ))
}

async fn write_reply<W: AsyncWriteExt + Unpin>(w: &mut W, reply: Reply, close: bool) -> Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        reply.status,
        reason(reply.status),
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes()).await?;
    w.write_all(&reply.body).await?;
    w.flush().await?;
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Unknown",
    }
}

// ---------------------------------------------------------------------------------------- ids

fn unique() -> u128 {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    (nanos << 20) ^ u128::from(n) ^ (u128::from(std::process::id()) << 100)
}

/// A UUID-shaped request id, unique within this process.
fn request_id() -> String {
    let u = unique();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (u >> 96) as u32,
        (u >> 80) as u16,
        (u >> 68) as u16 & 0xfff,
        (u >> 56) as u16 & 0xfff,
        u as u64 & 0xffff_ffff_ffff
    )
}

/// An X-Ray trace header of the shape Lambda sends.
fn trace_id() -> String {
    let u = unique();
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        "Root=1-{secs:08x}-{:024x};Parent={:016x};Sampled=0",
        u & ((1 << 96) - 1),
        (u >> 64) as u64
    )
}
