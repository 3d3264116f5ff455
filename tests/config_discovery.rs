//! The `discovery:` section, `programmers[].region`, and a programmer described by flags
//! (`Config::programmer_with`): what loads, and what is refused with file, line and key.

use pas::config::{
    AiderStart, Config, ConfigError, DiscoveryMode, PathEnv, ProgrammerOverrides, SpecError,
};
use std::path::Path;

fn seed() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed_programmer_pool.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load(yaml: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_with(yaml, Path::new("configs/pool.yaml"), &PathEnv::in_dir("/w"))
}

/// The single issue of a rejected `yaml`, as `file:line:col: key: message`.
fn only_issue(yaml: &str) -> String {
    match load(yaml) {
        Err(ConfigError::Invalid(issues)) => {
            assert_eq!(issues.len(), 1, "{issues:#?}");
            issues[0].to_string()
        }
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_seed_stays_static_and_dns_needs_no_list() {
    let config = load(&seed()).expect("seed loads");
    assert_eq!(config.pool.discovery.mode, DiscoveryMode::Static);
    assert!(config.programmers().iter().all(|p| p.region.is_empty()));

    let dns = "pool_size: 0\nprogrammers: []\ndiscovery:\n  mode: dns\n  name: pas-programmers.pas.svc.cluster.local\n  port: 6151\n  refresh_s: 5\n  resolver: 10.0.0.2:53\n";
    let config = load(dns).expect("dns config loads");
    assert_eq!(config.pool.discovery.mode, DiscoveryMode::Dns);
    assert_eq!(config.pool.discovery.refresh_s, 5);
    // SRV names carry their ports.
    let srv = "pool_size: 0\ndiscovery:\n  mode: dns\n  name: _grpc._tcp.pas-programmers\n";
    assert!(load(srv).expect("srv loads").pool.discovery.is_srv());
    // A listed programmer may carry a region.
    let yaml = seed().replacen(
        "  - id: \"001\"\n",
        "  - id: \"001\"\n    region: eu-west\n",
        1,
    );
    let config = load(&yaml).expect("region loads");
    assert_eq!(config.programmer("001").expect("001").region, "eu-west");
}

#[test]
fn bad_discovery_and_region_values_name_file_line_and_key() {
    let base = "pool_size: 0\ndiscovery:\n  mode: dns\n";
    let issue = only_issue(base);
    assert!(
        issue.starts_with("configs/pool.yaml:3:9: discovery.mode:"),
        "{issue}"
    );
    assert!(issue.contains("needs `name:`"), "{issue}");
    let issue = only_issue(&format!("{base}  name: pas.example\n"));
    assert!(
        issue.contains("discovery.name") && issue.contains("needs `port:`"),
        "{issue}"
    );
    let issue = only_issue(&format!(
        "{base}  name: pas.example\n  port: 6151\n  resolver: dns-server\n"
    ));
    assert!(
        issue.starts_with("configs/pool.yaml:6:13: discovery.resolver:"),
        "{issue}"
    );
    let issue = only_issue(&format!(
        "{base}  name: pas.example\n  port: 6151\n  refresh_s: 0\n"
    ));
    assert!(
        issue.contains("discovery.refresh_s: must be greater than 0"),
        "{issue}"
    );
    let issue = only_issue(&format!("{base}  mdoe: dns\n"));
    assert!(issue.contains("unknown field `mdoe`"), "{issue}");
    let yaml = seed().replacen(
        "  - id: \"001\"\n",
        "  - id: \"001\"\n    region: eu west\n",
        1,
    );
    let issue = only_issue(&yaml);
    assert!(issue.contains("programmers[0].region"), "{issue}");
}

#[test]
fn an_unlisted_programmer_is_described_by_flags_and_defaults() {
    let config = load(&seed()).expect("seed loads");
    let flags = ProgrammerOverrides {
        primary_llm: Some("ollama/qwen2.5-coder:7b".into()),
        backup_llm: Some("openai/gpt-4o-mini".into()),
        capabilities: Some(vec!["fast".into(), " gpu ".into(), String::new()]),
        region: Some("eu-west".into()),
        host: Some("0.0.0.0".into()),
        port: Some(6151),
        aider_start: None,
    };
    let spec = config
        .programmer_with("pas-programmer-7f9c", &flags)
        .expect("spec");
    assert_eq!(spec.primary.name, "ollama/qwen2.5-coder:7b");
    assert_eq!(spec.backup.name, "openai/gpt-4o-mini");
    assert!(spec.paid, "a paid backup makes it paid");
    assert_eq!(spec.tags, ["fast", "gpu"]);
    assert_eq!(spec.region, "eu-west");
    assert_eq!((spec.host.as_str(), spec.port), ("0.0.0.0", 6151));
    assert_eq!(spec.limits, config.default_limits());
    assert_eq!(
        spec.aider_start, config.pool.aider.start,
        "aider.start by default"
    );

    // Without both LLMs an unlisted id is refused, naming the flags to give.
    let err = config
        .programmer_with("pod-1", &ProgrammerOverrides::default())
        .expect_err("unlisted without LLMs");
    assert!(matches!(err, SpecError::Unlisted { .. }), "{err}");
    assert!(err.to_string().contains("--primary-llm"), "{err}");
    // Bad values name their flag.
    let err = config
        .programmer_with(
            "pod-1",
            &ProgrammerOverrides {
                region: Some("eu west".into()),
                ..flags.clone()
            },
        )
        .expect_err("bad region");
    assert!(err.to_string().starts_with("--region:"), "{err}");
    let err = config
        .programmer_with("bad id", &flags)
        .expect_err("bad id");
    assert!(err.to_string().starts_with("--id:"), "{err}");
    // A listed id keeps its entry; flags given win.
    let listed = config
        .programmer_with(
            "001",
            &ProgrammerOverrides {
                region: Some("us-east".into()),
                aider_start: Some(AiderStart::Cold),
                ..Default::default()
            },
        )
        .expect("listed");
    assert_eq!(
        listed.primary,
        config.programmer("001").expect("001").primary
    );
    assert_eq!(listed.region, "us-east");
    assert_eq!(config.pool.aider.start, AiderStart::Warm);
    assert_eq!(listed.aider_start, AiderStart::Cold, "--aider-start wins");
}
