//! `pas certs init DIR`: a development CA and a certificate for every process of a configuration;
//! `pas certs renew DIR`: every certificate but the CA's issued again (running processes take
//! the new ones up without a restart, see [`crate::reload`]).
//!
//! Writes `ca.pem` + `ca-key.pem`, `manager.pem` + `manager-key.pem`, `programmer-<id>.pem` +
//! `programmer-<id>-key.pem` for each programmer, and `client.pem` + `client-key.pem` (what the CLI
//! and operators' tools present to programmers) — exactly the names the config's
//! `tls: {cert: DIR/{name}.pem, key: DIR/{name}-key.pem}` expects. Server certificates carry the
//! process's configured host, `localhost`, `127.0.0.1`, `::1`, a `pas-<name>` DNS name and any
//! `--san` given. Only the manager's and the `client` certificate may act as TLS clients
//! (clientAuth): a programmer's certificate cannot make another programmer work. Keys are ECDSA
//! P-256, written with mode 0600. Meant for development and tests:
//! real deployments bring certificates from their own CA (cert-manager, Vault, …).

use crate::config::Config;
use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// Arguments of `pas certs init`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsInitArgs {
    /// Directory to write the CA, certificates and keys into (created if missing).
    pub dir: PathBuf,
    /// Extra subject alternative name (DNS name or IP) for every server certificate; repeatable.
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// Days the certificates stay valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Overwrite files that already exist (otherwise refused, so a CA is never replaced by
    /// accident).
    #[arg(long)]
    pub force: bool,
}

/// One certificate to issue.
struct Subject {
    /// File stem and `{name}` value: `manager`, `programmer-001`, `client`.
    name: String,
    /// Hosts a server certificate must be valid for (empty for the client certificate).
    hosts: Vec<String>,
    /// May serve TLS (serverAuth).
    server: bool,
    /// May call a programmer (clientAuth): the manager and the operators' `client` certificate,
    /// never a programmer — so a programmer's key cannot make another programmer work.
    client: bool,
}

fn subjects(config: &Config, extra: &[String]) -> Vec<Subject> {
    let hosts = |host: &str, name: &str| {
        let mut all: Vec<String> = [
            host,
            "localhost",
            "127.0.0.1",
            "::1",
            &format!("pas-{name}"),
        ]
        .iter()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .filter(|h| !h.is_empty() && h != "0.0.0.0" && h != "::")
        .chain(extra.iter().cloned())
        .collect();
        let mut seen = std::collections::BTreeSet::new();
        all.retain(|h| seen.insert(h.clone()));
        all
    };
    let mut out = vec![Subject {
        name: "manager".into(),
        hosts: hosts(&config.pool.manager.host, "manager"),
        server: true,
        client: true,
    }];
    for p in config.programmers() {
        let name = format!("programmer-{}", p.id);
        out.push(Subject {
            hosts: hosts(&p.host, &name),
            name,
            server: true,
            client: false,
        });
    }
    out.push(Subject {
        name: "client".into(),
        hosts: Vec::new(),
        server: false,
        client: true,
    });
    out
}

fn validity(params: &mut CertificateParams, days: u32) {
    let date = |d: chrono::DateTime<chrono::Utc>| {
        use chrono::Datelike;
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    let now = chrono::Utc::now();
    params.not_before = date(now - chrono::Duration::days(1));
    params.not_after = date(now + chrono::Duration::days(i64::from(days.max(1))));
}

/// Writes `text` to `path` (mode 0600 for keys), refusing to overwrite unless `force`.
fn write(path: &Path, text: &str, secret: bool, force: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(if secret { 0o600 } else { 0o644 });
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).with_context(|| {
        if path.exists() && !force {
            format!("{} exists (pass --force to replace it)", path.display())
        } else {
            format!("cannot write {}", path.display())
        }
    })?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Issues the CA and every certificate of `config` into `args.dir`; returns the files written.
pub fn init(config: &Config, args: &CertsInitArgs) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let subjects = subjects(config, &args.sans);
    // Refuse before writing anything, so a partial set is never left behind.
    if !args.force {
        let mut names = vec!["ca".to_string()];
        names.extend(subjects.iter().map(|s| s.name.clone()));
        for name in names {
            for file in [format!("{name}.pem"), format!("{name}-key.pem")] {
                let path = args.dir.join(file);
                anyhow::ensure!(
                    !path.exists(),
                    "{} exists (pass --force to replace the whole set)",
                    path.display()
                );
            }
        }
    }
    let mut written = Vec::new();
    let mut emit = |name: &str, cert_pem: String, key: &KeyPair| -> anyhow::Result<()> {
        let cert = args.dir.join(format!("{name}.pem"));
        let key_path = args.dir.join(format!("{name}-key.pem"));
        write(&cert, &cert_pem, false, args.force)?;
        write(&key_path, &key.serialize_pem(), true, args.force)?;
        written.extend([cert, key_path]);
        Ok(())
    };

    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let ca_params = ca_params(args.days)?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    emit("ca", ca_cert.pem(), &ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    for subject in &subjects {
        let (cert, key) = issue(subject, &issuer, args.days)?;
        emit(&subject.name, cert.pem(), &key)?;
    }
    Ok(written)
}

/// The development CA's certificate parameters: what `init` self-signs, and what `renew`
/// issues with again (the same name, so the certificates it issues chain to the CA on disk).
fn ca_params(days: u32) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Programmer Pool development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, days);
    Ok(params)
}

/// A new key and a certificate for it, signed by `issuer`.
fn issue(
    subject: &Subject,
    issuer: &Issuer<'_, KeyPair>,
    days: u32,
) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(subject.hosts.clone())
        .with_context(|| format!("{}: bad host name in {:?}", subject.name, subject.hosts))?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("pas-{}", subject.name));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = [
        (subject.server, ExtendedKeyUsagePurpose::ServerAuth),
        (subject.client, ExtendedKeyUsagePurpose::ClientAuth),
    ]
    .into_iter()
    .filter_map(|(wanted, usage)| wanted.then_some(usage))
    .collect();
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert, key))
}

/// Arguments of `pas certs renew`.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsRenewArgs {
    /// Directory of a set `pas certs init` wrote: its `ca.pem` and `ca-key.pem` stay, every
    /// other certificate and key is issued again.
    pub dir: PathBuf,
    /// Extra subject alternative name (DNS name or IP) for every server certificate; repeatable.
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// Days the new certificates stay valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

/// Issues every process's certificate and key of `config` again with the CA in `args.dir`
/// (which stays): what a running pool takes up without a restart, since each process re-reads
/// its certificate when its files change. Each file is replaced whole (written beside it, then
/// renamed over it), so a process never reads half a file; every new certificate is checked to
/// chain to `ca.pem` before any file is replaced (a CA that `init` did not make is refused).
/// Returns the files written.
pub fn renew(config: &Config, args: &CertsRenewArgs) -> anyhow::Result<Vec<PathBuf>> {
    let ca_pem = args.dir.join("ca.pem");
    let ca_key_path = args.dir.join("ca-key.pem");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path)
        .with_context(|| format!("cannot read the CA key {}", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("{}: not a PEM private key", ca_key_path.display()))?;
    let issuer = Issuer::new(ca_params(args.days)?, ca_key);
    let verifier = chain_checker(&ca_pem)?;
    let mut issued = Vec::new();
    for subject in subjects(config, &args.sans) {
        let (cert, key) = issue(&subject, &issuer, args.days)?;
        verifier(&subject, cert.der()).with_context(|| {
            format!(
                "a certificate issued with {} does not chain to {}: renew only a set `pas certs init` wrote",
                ca_key_path.display(),
                ca_pem.display()
            )
        })?;
        issued.push((subject.name, cert.pem(), key.serialize_pem()));
    }
    let mut written = Vec::new();
    for (name, cert, key) in issued {
        // The key first: a process that reads between the two renames sees a pair that does
        // not match, refuses it and keeps its previous one until the certificate lands.
        let key_path = args.dir.join(format!("{name}-key.pem"));
        replace(&key_path, &key, true)?;
        let cert_path = args.dir.join(format!("{name}.pem"));
        replace(&cert_path, &cert, false)?;
        written.extend([cert_path, key_path]);
    }
    Ok(written)
}

/// Checks that a certificate issued for a subject chains to the CA in `ca_pem` (as a server,
/// for `localhost`, when it is one; as a client otherwise).
fn chain_checker(
    ca_pem: &Path,
) -> anyhow::Result<impl Fn(&Subject, &rustls::pki_types::CertificateDer<'_>) -> anyhow::Result<()>>
{
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    let roots = std::sync::Arc::new(crate::tls::root_store(ca_pem)?);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()?;
    let clients =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
    Ok(
        move |subject: &Subject, cert: &rustls::pki_types::CertificateDer<'_>| {
            if subject.server {
                let name = ServerName::try_from("localhost")?;
                servers.verify_server_cert(cert, &[], &name, &[], UnixTime::now())?;
            } else {
                clients.verify_client_cert(cert, &[], UnixTime::now())?;
            }
            Ok(())
        },
    )
}

/// Replaces `path` with `text` whole: written to a file beside it, then renamed over it (mode
/// 0600 for keys).
fn replace(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    let fresh = PathBuf::from(name);
    let _ = std::fs::remove_file(&fresh);
    write(&fresh, text, secret, false)?;
    std::fs::rename(&fresh, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Runs `pas certs renew`: issues the set again with its CA and says how processes take it up.
pub fn run_renew(config_path: &Path, args: CertsRenewArgs) -> std::process::ExitCode {
    with_config(
        config_path,
        |config| renew(config, &args),
        |files| {
            println!(
                "renewed {} files in {} with its CA (ca.pem unchanged); running processes take them up within {} s, or at once on SIGHUP",
                files.len(),
                args.dir.display(),
                crate::reload::CHECK_EVERY.as_secs()
            );
        },
    )
}

/// Runs `pas certs init`: writes the files and prints the `tls:` section to add.
pub fn run(config_path: &Path, args: CertsInitArgs) -> std::process::ExitCode {
    with_config(
        config_path,
        |config| init(config, &args),
        |files| {
            println!(
                "wrote {} files to {} (development CA: keep ca-key.pem private)",
                files.len(),
                args.dir.display()
            );
            let dir = std::path::absolute(&args.dir).unwrap_or(args.dir.clone());
            println!(
                "\nAdd to the configuration:\n\ntls:\n  ca: {0}/ca.pem\n  cert: {0}/{{name}}.pem\n  key: {0}/{{name}}-key.pem",
                dir.display()
            );
        },
    )
}

/// Loads the configuration, runs `issue` with it and `report`s the files written; an error
/// (of either) goes to stderr with exit status 1.
fn with_config(
    config_path: &Path,
    issue: impl FnOnce(&Config) -> anyhow::Result<Vec<PathBuf>>,
    report: impl FnOnce(&[PathBuf]),
) -> std::process::ExitCode {
    let outcome = Config::load(config_path)
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))
        .and_then(|config| issue(&config));
    match outcome {
        Ok(files) => {
            report(&files);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issued_set_sets_up_servers_and_clients_and_is_never_overwritten_silently() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "pool_size: 1\nprogrammers:\n  - {id: '001', port: 6151, primary_llm: ollama/a, backup_llm: ollama/b}\n";
        let config = Config::from_yaml(yaml, &dir.path().join("pool.yaml")).unwrap();
        let args = CertsInitArgs {
            dir: dir.path().join("certs"),
            sans: vec!["pas.example".into()],
            days: 30,
            force: false,
        };
        let files = init(&config, &args).unwrap();
        assert_eq!(files.len(), 8, "{files:?}");
        let files_of = |name: &str| crate::tls::TlsFiles {
            ca: args.dir.join("ca.pem"),
            cert: args.dir.join(format!("{name}.pem")),
            key: args.dir.join(format!("{name}-key.pem")),
        };
        for name in ["manager", "programmer-001"] {
            crate::tls::server_config(&files_of(name), crate::tls::ClientAuth::Required).unwrap();
        }
        crate::tls::rustls_client_config(&files_of("client")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(args.dir.join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keys are private: {mode:o}");
        let err = init(&config, &args).unwrap_err().to_string();
        assert!(err.contains("exists") && err.contains("--force"), "{err}");
        init(
            &config,
            &CertsInitArgs {
                force: true,
                ..args.clone()
            },
        )
        .unwrap();
    }

    #[test]
    fn a_renewed_set_keeps_its_ca_and_a_foreign_ca_key_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "pool_size: 1\nprogrammers:\n  - {id: '001', port: 6151, primary_llm: ollama/a, backup_llm: ollama/b}\n";
        let config = Config::from_yaml(yaml, &dir.path().join("pool.yaml")).unwrap();
        let init_args = |path: &str| CertsInitArgs {
            dir: dir.path().join(path),
            sans: Vec::new(),
            days: 30,
            force: false,
        };
        init(&config, &init_args("certs")).unwrap();
        let certs = dir.path().join("certs");
        let read = |name: &str| std::fs::read(certs.join(name)).unwrap();
        let (ca, manager, manager_key) =
            (read("ca.pem"), read("manager.pem"), read("manager-key.pem"));
        let args = CertsRenewArgs {
            dir: certs.clone(),
            sans: Vec::new(),
            days: 30,
        };
        let written = renew(&config, &args).unwrap();
        assert_eq!(written.len(), 6, "every pair but the CA's: {written:?}");
        assert_eq!(read("ca.pem"), ca, "the CA stays");
        assert_ne!(read("manager.pem"), manager);
        assert_ne!(read("manager-key.pem"), manager_key);
        let files_of = |name: &str| crate::tls::TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join(format!("{name}.pem")),
            key: certs.join(format!("{name}-key.pem")),
        };
        for name in ["manager", "programmer-001"] {
            crate::tls::server_config(&files_of(name), crate::tls::ClientAuth::Required).unwrap();
        }
        crate::tls::rustls_client_config(&files_of("client")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("manager-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keys stay private: {mode:o}");
        assert!(
            !certs.join("manager.pem.new").exists(),
            "nothing left beside"
        );

        // A CA key that did not make ca.pem: refused, nothing replaced.
        init(&config, &init_args("other")).unwrap();
        std::fs::copy(
            dir.path().join("other/ca-key.pem"),
            certs.join("ca-key.pem"),
        )
        .unwrap();
        let before = read("manager.pem");
        let err = format!("{:#}", renew(&config, &args).unwrap_err());
        assert!(
            err.contains("does not chain to") && err.contains("ca.pem"),
            "{err}"
        );
        assert_eq!(read("manager.pem"), before);
    }
}
