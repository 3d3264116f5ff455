//! Is a process of the mesh up? A `grpc.health.v1.Health/Check` for its service on its port.
//!
//! Both the programmer and the manager register their service with grpc.health.v1 and flip it to
//! NOT_SERVING while draining, so one probe covers "listening", "serving gRPC" and "not shutting
//! down". Each probe opens a fresh connection: a stale connection to a dead process must not
//! answer for its replacement.

use crate::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The health service name of a programmer.
pub const PROGRAMMER_SERVICE: &str = "pas.v1.Programmer";
/// The health service name of the manager.
pub const MANAGER_SERVICE: &str = "pas.v1.ProgrammerPool";

/// Why a probe did not say SERVING.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Channel(#[from] crate::channel::ChannelError),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("health check on {addr} failed: {status}")]
    Rpc { addr: String, status: tonic::Status },
    #[error("health check on {addr} timed out")]
    Timeout { addr: String },
    #[error("{addr} reports {status:?}")]
    NotServing { addr: String, status: ServingStatus },
}

/// Where to reach the manager: `flag` when given (`host:port`, or a URL whose scheme is
/// dropped), else the configured `manager.host:port` of `config_path`.
pub fn manager_addr(
    config_path: &std::path::Path,
    flag: Option<&str>,
) -> Result<String, crate::config::ConfigError> {
    match flag {
        Some(addr) => Ok(addr
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string()),
        None => {
            let config = crate::config::Config::load(config_path)?;
            let m = &config.pool.manager;
            Ok(crate::channel::connect_addr(&m.host, m.port))
        }
    }
}

/// Opens a gRPC channel to `addr` (`host:port`), over TLS when `tls` is given, failing after
/// `timeout`.
pub async fn channel(
    addr: &str,
    timeout: Duration,
    tls: Option<&crate::tls::TlsFiles>,
) -> Result<tonic::transport::Channel, ProbeError> {
    crate::channel::endpoint(addr, tls)?
        .connect_timeout(timeout)
        .connect()
        .await
        .map_err(|source| ProbeError::Connect {
            addr: addr.to_string(),
            source,
        })
}

/// A `ProgrammerPool` client for the manager at `addr`, carrying `security`'s TLS and token.
pub async fn pool_client(
    addr: &str,
    timeout: Duration,
    security: &crate::channel::ClientSecurity,
) -> Result<ProgrammerPoolClient<crate::channel::AuthChannel>, ProbeError> {
    let channel = channel(addr, timeout, security.tls.as_ref()).await?;
    let token = crate::channel::BearerToken::new(security.token.as_deref())?;
    Ok(ProgrammerPoolClient::with_interceptor(channel, token))
}

/// Checks that `service` on `addr` reports SERVING, within `timeout`.
pub async fn check(
    addr: &str,
    service: &str,
    timeout: Duration,
    tls: Option<&crate::tls::TlsFiles>,
) -> Result<(), ProbeError> {
    let call = async {
        let mut client = HealthClient::new(channel(addr, timeout, tls).await?);
        let response = client
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|status| ProbeError::Rpc {
                addr: addr.to_string(),
                status,
            })?;
        match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            status => Err(ProbeError::NotServing {
                addr: addr.to_string(),
                status,
            }),
        }
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| ProbeError::Timeout {
            addr: addr.to_string(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_not_healthy() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = check(&addr, PROGRAMMER_SERVICE, Duration::from_secs(2), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Connect { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_serving_health_service_is_healthy_and_others_are_not() {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(PROGRAMMER_SERVICE, tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status(MANAGER_SERVICE, tonic_health::ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming),
        );
        check(&addr, PROGRAMMER_SERVICE, Duration::from_secs(5), None)
            .await
            .unwrap();
        let err = check(&addr, MANAGER_SERVICE, Duration::from_secs(5), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::NotServing { .. }), "{err}");
        let err = check(&addr, "pas.v1.Nothing", Duration::from_secs(5), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Rpc { .. }), "{err}");
    }
}
