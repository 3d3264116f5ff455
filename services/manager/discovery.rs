//! DNS discovery (`discovery.mode: dns`): the pool is whatever a DNS name resolves to.
//!
//! Every `refresh_s` seconds, and at once when a member's connection breaks
//! ([`PoolView::request_resolve`]), the name is resolved (A/AAAA records with the configured
//! port, or SRV records, each target resolved in turn) and the answer is diffed against the
//! addresses known so far, as ginepro and linkerd2-proxy do:
//!
//! - a new address is *joined*: the manager connects and asks `GetStatus`, whose answer describes
//!   the programmer (id, LLMs, capabilities, region, paid, per-job cost cap; a listed entry with
//!   the same id gives the rest), and only then adds it to the pool ([`PoolView::join`]), so no
//!   task is routed on guesses. A programmer that does not answer yet is asked again with backoff
//!   while its address stays in DNS;
//! - an address that is gone *leaves* ([`PoolView::leave`]): the member drains.
//!
//! A failed lookup (server unreachable, SERVFAIL) changes nothing: a DNS outage must not empty
//! the pool. Only an answer that the name has no records empties it.
//!
//! Every member is described again after each lookup, from its latest status: a programmer that
//! re-read its file or restarted with other flags at the same address is known as it now
//! describes itself within one period (it leaves and joins again as the new one, as a changed
//! entry does under static discovery; its running tasks finish under the old).
//!
//! A re-read configuration file (`manager::reconfigure`) reaches the loop too: a changed name,
//! port, period or resolver is used from the next lookup on (at once), and every member is
//! described again with the new entries (`programmers`, `defaults`, `capability_routing`,
//! `llms`).

use crate::channel::Dialer;
use crate::config::{Config, DiscoveryConfig, ProgrammerSpec};
use crate::contract::v1::programmer_client::ProgrammerClient;
use crate::contract::v1::{GetStatusRequest, ProgrammerStatus};
use crate::manager::membership::{Member, PoolView};
use crate::money::Usd;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// How long one GetStatus of a joining programmer may take.
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between GetStatus tries of a joining programmer (doubling up to the max).
const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Re-resolves asked for by broken connections are at least this far apart.
const MIN_RESOLVE_GAP: Duration = Duration::from_millis(500);
/// How long the manager's start waits for the first answer's programmers to join (so resumed
/// tasks find the programmers they were placed on).
const FIRST_ROUND_WAIT: Duration = Duration::from_secs(5);

/// Why DNS discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `discovery.resolver` is not an address (validation catches this first).
    #[error("discovery.resolver {0:?} is not an ip:port address")]
    Resolver(String),
    /// The system resolver configuration could not be read.
    #[error("discovery: cannot read the system DNS configuration: {0}")]
    System(#[from] ResolveError),
    /// `discovery.name` is missing (validation catches this first).
    #[error("discovery.mode dns needs discovery.name")]
    NoName,
}

/// What to resolve, from the `discovery:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name, made fully qualified (no search-domain guessing).
    pub name: String,
    /// SRV records (the name starts with `_`) rather than A/AAAA.
    pub srv: bool,
    /// Port for A/AAAA answers.
    pub port: u16,
}

impl Target {
    /// The target of `cfg`.
    pub fn from_config(cfg: &DiscoveryConfig) -> Result<Self, DiscoveryError> {
        let name = cfg.name.as_deref().map(str::trim).unwrap_or_default();
        if name.is_empty() {
            return Err(DiscoveryError::NoName);
        }
        let name = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        Ok(Self {
            name,
            srv: cfg.is_srv(),
            port: cfg.port.unwrap_or(0),
        })
    }
}

/// A resolver for `cfg`: the configured server over UDP and TCP, or the system's; no cache, so
/// every round sees the records as they are now.
pub fn resolver(cfg: &DiscoveryConfig) -> Result<TokioResolver, DiscoveryError> {
    let mut builder = match &cfg.resolver {
        Some(addr) => {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| DiscoveryError::Resolver(addr.clone()))?;
            let servers = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                TokioConnectionProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()?,
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    opts.ndots = 0;
    Ok(builder.build())
}

/// The addresses `target` resolves to now. `Ok(empty)` when the name has no records; `Err` when
/// the lookup itself failed (the caller then keeps what it knew).
pub async fn resolve(
    resolver: &TokioResolver,
    target: &Target,
) -> Result<BTreeSet<SocketAddr>, ResolveError> {
    let none_or = |r: Result<BTreeSet<SocketAddr>, ResolveError>| match r {
        Err(e) if e.is_no_records_found() => Ok(BTreeSet::new()),
        other => other,
    };
    if !target.srv {
        let found = resolver.lookup_ip(target.name.as_str()).await.map(|ips| {
            ips.iter()
                .map(|ip| SocketAddr::new(ip, target.port))
                .collect()
        });
        return none_or(found);
    }
    let records = match resolver.srv_lookup(target.name.as_str()).await {
        Ok(records) => records,
        Err(e) => return none_or(Err(e)),
    };
    let mut found = BTreeSet::new();
    for srv in records.iter() {
        match resolver.lookup_ip(srv.target().clone()).await {
            Ok(ips) => found.extend(ips.iter().map(|ip| SocketAddr::new(ip, srv.port()))),
            Err(e) if e.is_no_records_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// What the manager knows of a programmer that reported `status` from `addr`: the status's
/// figures, with the listed entry of the same id (if any) or `defaults:` for the rest.
pub fn spec_from_status(
    config: &Config,
    addr: SocketAddr,
    status: &ProgrammerStatus,
) -> ProgrammerSpec {
    let llm = status.llm.clone().unwrap_or_default();
    let listed = config.programmer(&status.programmer_id);
    let mut limits = listed.map_or_else(|| config.default_limits(), |p| p.limits.clone());
    if status.max_cost_per_job_nanousd > 0 {
        limits.max_cost_per_job_usd =
            Usd::from_contract(status.max_cost_per_job_nanousd).as_usd_f64();
    }
    let mut capabilities: BTreeSet<String> = status.capabilities.iter().cloned().collect();
    // This manager's routing groups name ids too.
    for (group, ids) in &config.pool.capability_routing {
        if ids.contains(&status.programmer_id) {
            capabilities.insert(group.clone());
        }
    }
    ProgrammerSpec {
        id: status.programmer_id.clone(),
        agent: if status.agent.is_empty() {
            format!("Prog-{}", status.programmer_id)
        } else {
            status.agent.clone()
        },
        host: addr.ip().to_string(),
        port: addr.port(),
        primary: config.describe_llm(&llm.primary, !status.paid),
        backup: config.describe_llm(&llm.backup, !status.paid),
        tags: status.capabilities.clone(),
        capabilities,
        limits,
        paid: status.paid,
        region: status.region.clone(),
        // The programmer's own business (it starts its aider); the manager never reads it.
        aider_start: listed.map_or(config.pool.aider.start, |p| p.aider_start),
    }
}

/// A programmer at an address whose GetStatus answered.
struct Joined {
    addr: SocketAddr,
    link: (Dialer, Channel),
    status: ProgrammerStatus,
}

/// An address of the current answer.
enum Known {
    /// Asking it for its status.
    Joining(JoinHandle<()>),
    /// In the pool, with the status it joined with (described again from its latest one).
    Member(Arc<Member>, Box<ProgrammerStatus>),
}

/// How the loop looks programmers up: what, with which resolver, how often (the `discovery:`
/// section but its mode).
struct Lookup {
    target: Target,
    resolver: TokioResolver,
    /// The re-resolve period (`discovery.refresh_s`, at least 1 s).
    refresh: Duration,
}

impl Lookup {
    fn of(cfg: &DiscoveryConfig) -> Result<Self, DiscoveryError> {
        Ok(Self {
            target: Target::from_config(cfg)?,
            resolver: resolver(cfg)?,
            refresh: Duration::from_secs(cfg.refresh_s.max(1)),
        })
    }
}

/// The discovery loop's state.
struct Discovery {
    pool: Arc<PoolView>,
    config: Arc<Config>,
    lookup: Lookup,
    known: HashMap<SocketAddr, Known>,
    joined_tx: mpsc::UnboundedSender<Joined>,
    stop: CancellationToken,
}

impl Discovery {
    /// One resolution and its diff. Returns false when the lookup failed.
    async fn round(&mut self) -> bool {
        let found = match resolve(&self.lookup.resolver, &self.lookup.target).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(name = %self.lookup.target.name, "DNS discovery: lookup failed, keeping the {} known addresses: {e}", self.known.len());
                return false;
            }
        };
        let gone: Vec<SocketAddr> = self
            .known
            .keys()
            .filter(|a| !found.contains(a))
            .copied()
            .collect();
        for addr in gone {
            match self.known.remove(&addr) {
                Some(Known::Joining(task)) => task.abort(),
                Some(Known::Member(member, _)) => self.pool.leave(&member),
                None => {}
            }
        }
        for addr in found {
            if !self.known.contains_key(&addr) {
                let task = self.spawn_join(addr);
                self.known.insert(addr, Known::Joining(task));
            }
        }
        self.describe_again();
        true
    }

    /// Asks `addr` for its status until it answers (or the task is aborted).
    fn spawn_join(&self, addr: SocketAddr) -> JoinHandle<()> {
        let address = addr.to_string();
        let link = self.pool.link(&address);
        let tx = self.joined_tx.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let link = match link {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(%address, "DNS discovery: cannot make a channel: {e}");
                    return;
                }
            };
            let mut client = ProgrammerClient::new(link.1.clone());
            let mut backoff = JOIN_BACKOFF_MIN;
            loop {
                let call =
                    tokio::time::timeout(JOIN_CALL_TIMEOUT, client.get_status(GetStatusRequest {}));
                match call.await {
                    Ok(Ok(status)) => {
                        let _ = tx.send(Joined {
                            addr,
                            link,
                            status: status.into_inner(),
                        });
                        return;
                    }
                    Ok(Err(e)) => tracing::debug!(%address, "DNS discovery: GetStatus: {e}"),
                    Err(_) => tracing::debug!(%address, "DNS discovery: GetStatus timed out"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
            }
        })
    }

    /// A joining programmer answered: add it, unless its address left meanwhile or its id is a
    /// present member's (ids must be unique: the later one waits until the other leaves).
    fn joined(&mut self, joined: Joined) {
        if !matches!(self.known.get(&joined.addr), Some(Known::Joining(_))) {
            return;
        }
        let id = &joined.status.programmer_id;
        if let Some(problem) = id_problem(id) {
            tracing::warn!(address = %joined.addr, "DNS discovery: ignoring a programmer whose id {problem}");
            self.known.remove(&joined.addr);
            return;
        }
        if let Some(other) = self.pool.member(id).filter(|m| !m.has_left()) {
            tracing::warn!(programmer = %id, address = %joined.addr, other = %other.address,
                "DNS discovery: two addresses report the same programmer id; using the first");
            self.known.remove(&joined.addr);
            return;
        }
        let spec = spec_from_status(&self.config, joined.addr, &joined.status);
        let member = self.pool.join(spec, joined.addr.to_string(), joined.link);
        self.known
            .insert(joined.addr, Known::Member(member, Box::new(joined.status)));
        self.pool.rank_as_listed(self.config.programmers());
    }

    /// Puts a re-read configuration in force (see the module docs). A file that switched
    /// discovery mode changes nothing here: that takes a restart, and the reload says so.
    fn reconfigure(&mut self, new: Arc<Config>) {
        let cfg = &new.pool.discovery;
        if cfg.mode != crate::config::DiscoveryMode::Dns {
            return;
        }
        if *cfg != self.config.pool.discovery {
            match Lookup::of(cfg) {
                Ok(lookup) => {
                    tracing::info!(name = %lookup.target.name, srv = lookup.target.srv,
                        refresh_s = lookup.refresh.as_secs(),
                        "DNS discovery: resolving as the re-read configuration says");
                    self.lookup = lookup;
                    self.pool.request_resolve();
                }
                Err(e) => tracing::error!(
                    "DNS discovery: the re-read discovery section cannot be used, resolving as before: {e}"
                ),
            }
        }
        self.config = new;
        self.describe_again();
    }

    /// Describes every member again from its latest status (or the one it joined with) with the
    /// configuration in force: one whose description changed (the programmer re-read its file or
    /// restarted with other flags at the same address, or the manager's entries changed) leaves
    /// and joins again as the new one. Runs after every lookup and every re-read file.
    fn describe_again(&mut self) {
        let mut replaced = Vec::new();
        for (addr, known) in &mut self.known {
            let Known::Member(member, joined_with) = known else {
                continue;
            };
            if member.has_left() {
                continue;
            }
            let status = member
                .reported()
                .unwrap_or_else(|| joined_with.as_ref().clone());
            let spec = spec_from_status(&self.config, *addr, &status);
            if spec == member.spec {
                continue;
            }
            let link = match self.pool.link(&member.address) {
                Ok(link) => link,
                Err(e) => {
                    tracing::error!(programmer = %member.spec.id, address = %member.address,
                        "DNS discovery: cannot make a channel, the member stays as it was: {e}");
                    continue;
                }
            };
            self.pool.leave(member);
            replaced.push(spec.id.clone());
            *member = self.pool.join(spec, addr.to_string(), link);
        }
        if !replaced.is_empty() {
            replaced.sort();
            tracing::info!(replaced = %replaced.join(", "),
                "DNS discovery: programmers described again (their status or the entries changed)");
        }
        // Listed members route in the file's order (it may have changed), the others after them.
        self.pool.rank_as_listed(self.config.programmers());
    }

    fn joining(&self) -> usize {
        self.known
            .values()
            .filter(|k| matches!(k, Known::Joining(_)))
            .count()
    }
}

/// Why `id` cannot be a member's id (`None`: it can).
fn id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("is empty")
    } else if id.len() > 63
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Some("is not 1-63 letters, digits, '-' or '_'")
    } else {
        None
    }
}

/// Starts DNS discovery for `pool`: resolves once and waits (up to a few seconds) for the
/// programmers of that answer to join, then keeps resolving in the background until `stop`,
/// following `config` as it is re-read.
pub async fn start(
    pool: Arc<PoolView>,
    mut config: watch::Receiver<Arc<Config>>,
    stop: CancellationToken,
) -> Result<(), DiscoveryError> {
    let current = config.borrow_and_update().clone();
    let lookup = Lookup::of(&current.pool.discovery)?;
    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel();
    tracing::info!(name = %lookup.target.name, srv = lookup.target.srv,
        refresh_s = lookup.refresh.as_secs(), "DNS discovery started");
    let mut discovery = Discovery {
        pool,
        config: current.clone(),
        lookup,
        known: HashMap::new(),
        joined_tx,
        stop: stop.clone(),
    };
    discovery.round().await;
    let first_wait = tokio::time::sleep(FIRST_ROUND_WAIT);
    tokio::pin!(first_wait);
    while discovery.joining() > 0 {
        tokio::select! {
            Some(joined) = joined_rx.recv() => discovery.joined(joined),
            _ = &mut first_wait => break,
        }
    }
    tokio::spawn(async move {
        let mut last = tokio::time::Instant::now();
        loop {
            let next = last + discovery.lookup.refresh;
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = discovery.pool.resolve_requested() => {
                    tokio::time::sleep_until(last + MIN_RESOLVE_GAP).await;
                }
                Some(joined) = joined_rx.recv() => {
                    discovery.joined(joined);
                    continue;
                }
                changed = config.changed() => {
                    // The manager (the sender) is gone only as the process ends.
                    if changed.is_err() {
                        break;
                    }
                    let new = config.borrow_and_update().clone();
                    discovery.reconfigure(new);
                    continue;
                }
                _ = stop.cancelled() => break,
            }
            last = tokio::time::Instant::now();
            discovery.round().await;
        }
        for (_, known) in discovery.known.drain() {
            if let Known::Joining(task) = known {
                task.abort();
            }
        }
    });
    Ok(())
}
