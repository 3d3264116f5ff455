//! Caller authentication on the manager: bearer tokens, each with a name and a role.
//!
//! The manager never stores a token, only its SHA-256 (`sha256:<hex>`), in a file or an
//! environment variable named by the configuration's `auth:` section, one entry a line:
//!
//! ```text
//! # name      role      hash
//! director    dispatch  sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ops         admin     sha256:…
//! ```
//!
//! `pas token new --name director --role dispatch` prints a fresh token and its line.
//!
//! Roles nest: `read` ⊂ `dispatch` ⊂ `admin`.
//! - `read`: pool status (GetPoolStatus, `/programmer_pool/status`, `/metrics`);
//! - `dispatch`: read, plus Dispatch, and GetTask/CancelTask on the tasks it dispatched itself;
//! - `admin`: everything, every caller's tasks.
//!
//! [`middleware`] runs before every handler: it decides what the called method needs
//! ([`Need`]), answers UNAUTHENTICATED (no or unknown token) or PERMISSION_DENIED (a token whose
//! role is too small) at once — as a gRPC status for gRPC calls, as HTTP 401/403 for the JSON
//! routes — and hands the caller's [`Caller`] to the handler in the request's extensions, where the
//! task calls check ownership. Health (`/health`, grpc.health.v1) and reflection stay open for
//! probes and tools. Tokens are compared by hash and never logged.

use crate::config::{AuthConfig, OpenRoute};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a token may do. Ordered: a larger role may do everything a smaller one may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read the pool's status and metrics.
    Read,
    /// Dispatch tasks and follow, read and cancel its own.
    Dispatch,
    /// Everything, including every caller's tasks.
    Admin,
}

impl Role {
    /// The role's name in token files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Dispatch => "dispatch",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "read" => Some(Role::Read),
            "dispatch" => Some(Role::Dispatch),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The authenticated caller of a request, as the handlers see it (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (recorded as the owner of the tasks it dispatches).
    pub name: String,
    /// The token's role.
    pub role: Role,
}

impl Caller {
    /// True when this caller may read or cancel a task owned by `owner`.
    pub fn may_access(&self, owner: &str) -> bool {
        self.role == Role::Admin || self.name == owner
    }
}

/// Why the token set could not be loaded. Every variant says where the bad entry is.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The tokens file could not be read.
    #[error("auth.tokens_file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An entry is malformed.
    #[error("{origin}:{line}: {message}")]
    Entry {
        /// The file or variable.
        origin: String,
        /// 1-based line (entry) number.
        line: usize,
        /// What is wrong (never the entry's hash).
        message: String,
    },
    /// Neither source held a single token: nobody could call the manager.
    #[error("auth: no tokens in {0} (add entries with `pas token new`)")]
    Empty(String),
}

/// The tokens the manager accepts, by hash.
#[derive(Debug, Default)]
pub struct TokenSet {
    by_hash: HashMap<[u8; 32], Arc<Caller>>,
}

/// `sha256:<hex>` of a token: what token files hold.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A new random token (256 bits, URL-safe base64, `pas_` prefix so it is recognisable in a leak).
pub fn new_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "pas_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl TokenSet {
    /// Adds the entries of `text` (lines, or `;`-separated in an environment variable);
    /// `origin` names the source in errors.
    pub fn add_entries(&mut self, text: &str, origin: &str) -> Result<(), AuthError> {
        let entries = text.split(['\n', ';']);
        for (index, raw) in entries.enumerate() {
            let entry = raw.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let bad = |message: String| AuthError::Entry {
                origin: origin.to_string(),
                line: index + 1,
                message,
            };
            let fields: Vec<&str> = entry.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                return Err(bad(
                    "expected `<name> <role> sha256:<64 hex digits>`".to_string()
                ));
            };
            let role = Role::parse(role).ok_or_else(|| {
                bad(format!(
                    "unknown role {role:?} (expected read, dispatch or admin)"
                ))
            })?;
            let hash = parse_hash(hash).ok_or_else(|| {
                bad(format!(
                    "token of {name:?}: expected sha256:<64 hex digits> (store the hash, never the token)"
                ))
            })?;
            let caller = Arc::new(Caller {
                name: name.to_string(),
                role,
            });
            if self.by_hash.insert(hash, caller).is_some() {
                return Err(bad(format!("token of {name:?} is listed twice")));
            }
        }
        Ok(())
    }

    /// Loads the tokens the `auth:` section names (file relative to `config_dir`, and/or an
    /// environment variable). At least one token must be found.
    pub fn load(auth: &AuthConfig, config_dir: &Path) -> Result<TokenSet, AuthError> {
        let mut set = TokenSet::default();
        let mut sources = Vec::new();
        if let Some(file) = &auth.tokens_file {
            let path = config_dir.join(file);
            let text = std::fs::read_to_string(&path).map_err(|source| AuthError::Read {
                path: path.clone(),
                source,
            })?;
            set.add_entries(&text, &path.display().to_string())?;
            sources.push(path.display().to_string());
        }
        if let Some(var) = &auth.tokens_env {
            let text = std::env::var(var).unwrap_or_default();
            set.add_entries(&text, &format!("${var}"))?;
            sources.push(format!("${var}"));
        }
        if set.by_hash.is_empty() {
            return Err(AuthError::Empty(sources.join(" and ")));
        }
        Ok(set)
    }

    /// The caller a presented token belongs to.
    pub fn verify(&self, token: &str) -> Option<Arc<Caller>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&digest).cloned()
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// True when no token is known.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// What a request needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: probes and tools (health, reflection) and routes the config opened.
    Open,
    /// At least this role.
    Role(Role),
}

/// The manager's authentication policy: the tokens and which routes are open.
#[derive(Debug)]
pub struct Authenticator {
    /// The tokens as they are now (re-read when the tokens file changes: see
    /// [`reloading`](Self::reloading)).
    tokens: tokio::sync::watch::Receiver<TokenSet>,
    /// `auth.open` (a re-read configuration may change it: [`set_open`](Self::set_open)).
    open_status: AtomicBool,
    open_metrics: AtomicBool,
}

impl Authenticator {
    /// The policy of an `auth:` section with its tokens loaded (kept as they are).
    pub fn new(auth: &AuthConfig, tokens: TokenSet) -> Self {
        // Its sender dropped at once: the value stays readable and never changes.
        Self::with(auth, tokio::sync::watch::channel(tokens).1)
    }

    /// The policy of an `auth:` section, its tokens loaded now and re-read whenever
    /// `auth.tokens_file` changes (see [`crate::reload`]): a token deleted from the file is
    /// refused from the next request on, a new one accepted, without a restart. A file that
    /// does not load then is logged with its line, and the tokens read before stay in force;
    /// but a file left without any entry revokes them all (every call that needs a token is
    /// refused until one is added): deleting the last line is how the last token is revoked.
    /// (At start-up no token at all is an error. `auth.tokens_env` is read with the file; the
    /// environment of a running process does not change.) Call inside a tokio runtime.
    pub fn reloading(auth: &AuthConfig, config_dir: &Path) -> Result<Self, AuthError> {
        let tokens = TokenSet::load(auth, config_dir)?;
        let Some(file) = &auth.tokens_file else {
            return Ok(Self::new(auth, tokens));
        };
        let (auth_cfg, dir) = (auth.clone(), config_dir.to_path_buf());
        let tokens = crate::reload::reloaded(
            "caller tokens",
            vec![config_dir.join(file)],
            tokens,
            move || match TokenSet::load(&auth_cfg, &dir) {
                Err(AuthError::Empty(sources)) => {
                    tracing::warn!(
                        "auth: no tokens left in {sources}: every call that needs a token is refused"
                    );
                    Ok(TokenSet::default())
                }
                loaded => loaded,
            },
        );
        Ok(Self::with(auth, tokens))
    }

    fn with(auth: &AuthConfig, tokens: tokio::sync::watch::Receiver<TokenSet>) -> Self {
        Self {
            tokens,
            open_status: AtomicBool::new(auth.open.contains(&OpenRoute::Status)),
            open_metrics: AtomicBool::new(auth.open.contains(&OpenRoute::Metrics)),
        }
    }

    /// Leaves `open` readable without a token from the next request on, and only those.
    pub fn set_open(&self, open: &[OpenRoute]) {
        self.open_status
            .store(open.contains(&OpenRoute::Status), Ordering::Relaxed);
        self.open_metrics
            .store(open.contains(&OpenRoute::Metrics), Ordering::Relaxed);
    }

    /// How many tokens are accepted now.
    pub fn token_count(&self) -> usize {
        self.tokens.borrow().len()
    }

    /// What calling `path` needs (an HTTP/JSON route is asked as the gRPC method it calls; the
    /// dashboard's assets are open). Unknown paths need a `read` token, so nothing new is open by
    /// accident; unknown methods of our own service need `admin`.
    pub fn need(&self, path: &str) -> Need {
        const POOL: &str = "/pas.v1.ProgrammerPool/";
        if let Some(method) = path.strip_prefix(POOL) {
            return match method {
                "Dispatch" | "GetTask" | "CancelTask" | "WatchTask" | "ListTasks" => {
                    Need::Role(Role::Dispatch)
                }
                "GetPoolStatus" if self.open_status.load(Ordering::Relaxed) => Need::Open,
                "GetPoolStatus" => Need::Role(Role::Read),
                _ => Need::Role(Role::Admin),
            };
        }
        if path.starts_with("/grpc.health.v1.Health/")
            || path.starts_with("/grpc.reflection.")
            || path == "/health"
            || super::http::dashboard::is_asset(path)
        {
            return Need::Open;
        }
        match path {
            "/programmer_pool/status" if self.open_status.load(Ordering::Relaxed) => Need::Open,
            "/metrics" if self.open_metrics.load(Ordering::Relaxed) => Need::Open,
            _ => Need::Role(Role::Read),
        }
    }

    /// Checks `authorization` against what `path` needs: the caller (None for open paths) or
    /// the refusal.
    pub fn check(
        &self,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<Option<Arc<Caller>>, Refusal> {
        let need = self.need(path);
        let token = authorization.and_then(bearer);
        let caller = match token {
            Some(token) => self.tokens.borrow().verify(token),
            None => None,
        };
        match (need, caller) {
            (Need::Open, caller) => Ok(caller),
            (Need::Role(_), None) if token.is_none() => Err(Refusal::Unauthenticated(
                "missing bearer token (metadata `authorization: Bearer <token>`)".into(),
            )),
            (Need::Role(_), None) => Err(Refusal::Unauthenticated("unknown token".into())),
            (Need::Role(role), Some(caller)) if caller.role < role => {
                Err(Refusal::PermissionDenied(format!(
                    "{path}: token {:?} has role {}; this needs {}",
                    caller.name,
                    caller.role.as_str(),
                    role.as_str()
                )))
            }
            (Need::Role(_), Some(caller)) => Ok(Some(caller)),
        }
    }
}

/// The token of an `authorization: Bearer <token>` value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one the manager does not know.
    Unauthenticated(String),
    /// A known token whose role is too small.
    PermissionDenied(String),
}

impl Refusal {
    /// The gRPC status of the refusal.
    pub fn status(&self) -> tonic::Status {
        match self {
            Refusal::Unauthenticated(m) => tonic::Status::unauthenticated(m.clone()),
            Refusal::PermissionDenied(m) => tonic::Status::permission_denied(m.clone()),
        }
    }
}

/// The axum middleware that enforces the policy (see the module docs).
pub async fn middleware(
    axum::extract::State(auth): axum::extract::State<Arc<Authenticator>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let authorization = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // An HTTP/JSON route is checked as the gRPC method it calls (same roles, same messages).
    let path = request.uri().path();
    let rpc = super::http::rpc_of(request.method(), path);
    match auth.check(rpc.unwrap_or(path), authorization) {
        Ok(caller) => {
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            next.run(request).await
        }
        Err(refusal) if super::http::is_api(request.uri().path()) => {
            super::http::error::response(&refusal.status())
        }
        Err(refusal) => {
            let is_grpc = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/grpc"));
            if is_grpc {
                return refusal.status().into_http::<axum::body::Body>();
            }
            let (code, message) = match &refusal {
                Refusal::Unauthenticated(m) => (http::StatusCode::UNAUTHORIZED, m),
                Refusal::PermissionDenied(m) => (http::StatusCode::FORBIDDEN, m),
            };
            let mut response =
                (code, axum::Json(serde_json::json!({ "error": message }))).into_response();
            if code == http::StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    }
}

/// The caller of a tonic request, when authentication is on.
pub fn caller_of<T>(request: &tonic::Request<T>) -> Option<Arc<Caller>> {
    request.extensions().get::<Arc<Caller>>().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &str, open: Vec<OpenRoute>) -> Authenticator {
        let mut tokens = TokenSet::default();
        tokens.add_entries(entries, "test").unwrap();
        let auth = AuthConfig {
            tokens_file: None,
            tokens_env: Some("X".into()),
            open,
        };
        Authenticator::new(&auth, tokens)
    }

    #[test]
    fn roles_nest_and_each_method_needs_its_role() {
        let entries = format!(
            "r read {}\nd dispatch {}; a admin {}",
            token_hash("tr"),
            token_hash("td"),
            token_hash("ta")
        );
        let p = policy(&entries, vec![]);
        let dispatch = "/pas.v1.ProgrammerPool/Dispatch";
        let status = "/pas.v1.ProgrammerPool/GetPoolStatus";
        assert!(matches!(
            p.check(dispatch, None),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            p.check(dispatch, Some("Bearer nope")),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            p.check(dispatch, Some("Bearer tr")),
            Err(Refusal::PermissionDenied(_))
        ));
        assert_eq!(
            p.check(dispatch, Some("bearer td")).unwrap().unwrap().name,
            "d"
        );
        assert_eq!(
            p.check(status, Some("Bearer tr")).unwrap().unwrap().name,
            "r"
        );
        assert_eq!(
            p.check(dispatch, Some("Bearer ta")).unwrap().unwrap().role,
            Role::Admin
        );
        assert!(matches!(
            p.check("/pas.v1.ProgrammerPool/SomethingNew", Some("Bearer td")),
            Err(Refusal::PermissionDenied(_))
        ));
        for open in [
            "/health",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(p.check(open, None), Ok(None), "{open}");
        }
        assert!(p.check("/metrics", None).is_err());
        assert!(p.check("/programmer_pool/status", None).is_err());
        let opened = policy(&entries, vec![OpenRoute::Status, OpenRoute::Metrics]);
        assert_eq!(opened.check("/metrics", None), Ok(None));
        assert_eq!(opened.check(status, None), Ok(None));
        assert!(opened.check(dispatch, None).is_err());
    }

    #[test]
    fn bad_entries_name_their_line_and_never_echo_the_hash() {
        let mut set = TokenSet::default();
        let err = set
            .add_entries("# comment\n\nx superuser sha256:00\n", "tokens.txt")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("tokens.txt:3: unknown role"), "{err}");
        let err = set
            .add_entries("x read deadbeef", "tokens.txt")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokens.txt:1") && !err.contains("deadbeef"),
            "{err}"
        );
        let line = format!("x read {}", token_hash("t"));
        let err = set
            .add_entries(&format!("{line}\n{line}"), "f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn new_tokens_are_distinct_and_verify_by_hash() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("pas_") && a.len() > 40);
        let mut set = TokenSet::default();
        set.add_entries(&format!("me dispatch {}", token_hash(&a)), "t")
            .unwrap();
        assert_eq!(set.verify(&a).unwrap().name, "me");
        assert!(set.verify(&b).is_none());
        assert!(
            Caller {
                name: "me".into(),
                role: Role::Dispatch
            }
            .may_access("me")
        );
        assert!(
            !Caller {
                name: "me".into(),
                role: Role::Dispatch
            }
            .may_access("you")
        );
        assert!(
            Caller {
                name: "ops".into(),
                role: Role::Admin
            }
            .may_access("you")
        );
    }
}
