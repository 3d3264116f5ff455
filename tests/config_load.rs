//! Loading the original (seed) configuration and the shipped one: values, defaults, resolution.

use pas::config::{Config, ConfigError, PathEnv, Provider, StrategyName};
use std::path::{Path, PathBuf};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

fn seed_path() -> PathBuf {
    Path::new(MANIFEST).join("tests/fixtures/seed_programmer_pool.yaml")
}

fn shipped_path() -> PathBuf {
    Path::new(MANIFEST).join("configs/pas/programmer_pool.yaml")
}

/// Loads `path` with no PAS_* variables and `cwd` as working directory.
fn load_in(path: &Path, cwd: &Path) -> Config {
    let yaml = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match Config::from_yaml_with(&yaml, path, &PathEnv::in_dir(cwd)) {
        Ok(config) => config,
        Err(e) => panic!("{} should load:\n{e}", path.display()),
    }
}

fn ids<'a>(programmers: impl IntoIterator<Item = &'a pas::config::ProgrammerSpec>) -> Vec<&'a str> {
    programmers.into_iter().map(|p| p.id.as_str()).collect()
}

/// Checks every value both files share (the shipped file is the seed plus explicit new sections).
fn assert_original_values(config: &Config) {
    let pool = &config.pool;
    assert_eq!(pool.pool_size, 10);
    assert_eq!(config.programmers().len(), 10);
    let expected_ids: Vec<String> = (1..=10).map(|i| format!("{i:03}")).collect();
    assert_eq!(ids(config.programmers()), expected_ids);
    for (i, p) in config.programmers().iter().enumerate() {
        assert_eq!(p.port, 6151 + i as u16, "programmer {}", p.id);
        assert_eq!(p.host, "127.0.0.1");
        assert_eq!(p.agent, format!("Prog-{}", p.id));
    }

    let p001 = config.programmer("001").expect("001 exists");
    assert_eq!(p001.primary.name, "ollama/qwen2.5-coder:7b-instruct");
    assert_eq!(p001.backup.name, "ollama/qwen2.5-coder:14b-instruct");
    assert_eq!(p001.primary.provider, Provider::Ollama);
    assert!(p001.primary.free && p001.backup.free && !p001.paid);
    assert_eq!(p001.tags, ["fast", "local", "free"]);
    assert_eq!(
        p001.limits.max_cost_per_job_usd, 2.5,
        "001 inherits the default cost cap"
    );
    assert_eq!(p001.limits.timeout_s, 900);
    assert_eq!(p001.limits.max_tokens_per_job, 80_000);
    assert_eq!(p001.limits.max_duration_per_job_s, 600);
    assert_eq!(p001.limits.context_limit, 131_072);
    assert!(p001.limits.auto_commit);
    assert_eq!(p001.limits.max_fix_iterations, 3);

    let p006 = config.programmer("006").expect("006 exists");
    assert_eq!(p006.limits.max_cost_per_job_usd, 5.0);
    assert_eq!(
        p006.limits.timeout_s, 900,
        "overriding one limit keeps the other defaults"
    );
    assert_eq!(p006.primary.provider, Provider::Anthropic);
    assert_eq!(p006.primary.input_cost_per_token, 3.0e-6);
    assert_eq!(p006.primary.output_cost_per_token, 15.0e-6);
    assert_eq!(p006.backup.name, "anthropic/claude-3-7-sonnet-20250219");
    assert_eq!(
        p006.primary.api_key_env.as_deref(),
        Some("ANTHROPIC_API_KEY")
    );

    let p008 = config.programmer("008").expect("008 exists");
    assert_eq!(p008.primary.provider, Provider::OpenAi);
    assert_eq!(p008.primary.input_cost_per_token, 2.5e-6);
    assert_eq!(p008.backup.output_cost_per_token, 0.6e-6);
    // Tags and routing groups both count: "openai" is only a tag, "reasoning" only a group.
    for c in ["premium", "openai", "paid", "reasoning"] {
        assert!(p008.has_capability(c), "008 should have {c}");
    }
    assert!(!p008.has_capability("fast"));
    assert_eq!(config.programmer("011"), None);

    let paid: Vec<&str> = ids(config.programmers().iter().filter(|p| p.paid));
    assert_eq!(paid, ["006", "007", "008"]);
    assert_eq!(
        ids(config.capability_holders("fast")),
        ["001", "002", "003", "004", "005"]
    );
    assert_eq!(
        ids(config.capability_holders("reasoning")),
        ["006", "007", "008"]
    );
    assert_eq!(ids(config.capability_holders("deepseek")), ["009", "010"]);
    assert_eq!(
        ids(config.capability_holders("free")),
        ["001", "002", "003", "004", "005", "009", "010"]
    );
    assert!(config.capability_holders("gpu").is_empty());

    // Every model a programmer names is in the catalog.
    for p in config.programmers() {
        for llm in [&p.primary, &p.backup] {
            assert_eq!(config.llm(&llm.name), Some(llm));
        }
    }
    assert_eq!(config.llms().count(), 8);

    assert_eq!(pool.load_balancing.strategy, StrategyName::LeastLoaded);
    assert!(pool.load_balancing.prefer_free_models);
    assert_eq!(pool.load_balancing.max_queue_per_programmer, 5);
    assert_eq!(pool.load_balancing.health_check_interval_s, 30);
    let f = &pool.failover;
    assert!(f.enabled && f.always_failover);
    assert_eq!(f.max_retries, 2);
    assert_eq!(f.retry_delay_s, 5.0);
    assert_eq!(f.failure_conditions.len(), 4);
    let cb = &f.circuit_breaker;
    assert_eq!(
        (cb.failure_threshold, cb.window_minutes, cb.cooldown_minutes),
        (3, 10.0, 5.0)
    );
    assert_eq!(pool.cost_optimization.max_daily_spend_usd, 50.0);
    assert_eq!(pool.cost_optimization.alert_threshold_usd, Some(40.0));
    assert_eq!(pool.capability_routing.len(), 6);
}

#[test]
fn seed_fixture_is_the_original_file_byte_for_byte_and_loads_unchanged() {
    // The fixture is a copy of the original config; it must load with the new sections defaulted.
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = load_in(&seed_path(), tmp.path());
    assert_original_values(&config);
    let m = &config.pool.manager;
    assert_eq!(
        (m.host.as_str(), m.port, m.max_queue),
        ("127.0.0.1", 6141, 500)
    );
    assert!(config.pool.llms.is_empty() && config.pool.providers.is_empty());
    assert_eq!(config.pool.aider.version, "0.86.2");
    // Absent path keys default into the working directory.
    assert_eq!(config.workspace_root(), tmp.path().join("workspaces"));
    assert_eq!(config.data_dir(), tmp.path().join("data"));
    assert_eq!(
        config.aider_python(),
        tmp.path().join(".aider-venv/bin/python")
    );
    let p001 = config.programmer("001").expect("001");
    assert_eq!(
        p001.primary.api_base_with(|_| None),
        "http://127.0.0.1:11434"
    );
}

#[test]
fn shipped_config_has_the_original_values_and_explicit_mesh_sections() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = load_in(&shipped_path(), tmp.path());
    assert_original_values(&config);
    let pool = &config.pool;
    assert_eq!(pool.manager.port, 6141);
    assert_eq!(pool.manager.max_dispatch_attempts, 3);
    assert_eq!(pool.llms.len(), 8, "every model is written out");
    assert_eq!(pool.providers.len(), 3);
    assert_eq!(pool.aider.edit_format, "diff");
    // Paths in the file are relative to the file's directory (configs/pas → repository root).
    assert_eq!(
        config.workspace_root(),
        Path::new(MANIFEST).join("workspaces")
    );
    assert_eq!(config.data_dir(), Path::new(MANIFEST).join("data"));
    assert_eq!(
        config.aider_python(),
        Path::new(MANIFEST).join(".aider-venv/bin/python")
    );
    let gpt = config.llm("openai/gpt-4o").expect("gpt-4o");
    assert_eq!(gpt.api_base_with(|_| None), "https://api.openai.com/v1");
    let sim = |v: &str| (v == "OPENAI_API_BASE").then(|| "http://127.0.0.1:7777/v1".to_string());
    assert_eq!(gpt.api_base_with(sim), "http://127.0.0.1:7777/v1");
}

#[test]
fn shipped_catalog_agrees_with_the_builtin_one() {
    // The seed relies on the built-in catalog, the shipped file spells it out: same result.
    let tmp = tempfile::tempdir().expect("tempdir");
    let seed = load_in(&seed_path(), tmp.path());
    let shipped = load_in(&shipped_path(), tmp.path());
    assert_eq!(seed.programmers(), shipped.programmers());
}

#[test]
fn environment_wins_over_the_file_for_the_three_paths() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let yaml = std::fs::read_to_string(shipped_path()).expect("shipped file");
    let env = PathEnv {
        cwd: tmp.path().to_path_buf(),
        workspace_root: Some(PathBuf::from("/srv/ws")),
        data_dir: Some(PathBuf::from("rel/data")),
        aider_python: Some(PathBuf::from("/opt/venv/bin/python")),
    };
    let config = Config::from_yaml_with(&yaml, &shipped_path(), &env).expect("loads");
    assert_eq!(config.workspace_root(), PathBuf::from("/srv/ws"));
    assert_eq!(
        config.data_dir(),
        tmp.path().join("rel/data"),
        "relative env paths are cwd-relative"
    );
    assert_eq!(config.aider_python(), PathBuf::from("/opt/venv/bin/python"));
}

#[test]
fn relative_paths_in_a_file_resolve_against_its_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("etc/pas");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let seed = std::fs::read_to_string(seed_path()).expect("seed");
    let yaml = format!(
        "{seed}\nworkspace_root: ws\ndata_dir: ../state\naider:\n  python: /usr/bin/python3\n"
    );
    let file = dir.join("pool.yaml");
    std::fs::write(&file, yaml).expect("write");
    let loaded = Config::load(&file).expect("loads from disk");
    assert_eq!(loaded.source, file);
    // Same text with no PAS_* variables set: file paths are relative to the file's directory.
    let text = std::fs::read_to_string(&file).expect("read");
    let config =
        Config::from_yaml_with(&text, &file, &PathEnv::in_dir("/elsewhere")).expect("loads");
    assert_eq!(config.workspace_root(), dir.join("ws"));
    assert_eq!(
        config.data_dir(),
        tmp.path().join("etc/state"),
        "`..` is folded"
    );
    assert_eq!(config.aider_python(), PathBuf::from("/usr/bin/python3"));
    assert_eq!(config.source, file);
}

#[test]
fn llms_entries_override_builtin_prices_and_make_local_models_paid() {
    let seed = std::fs::read_to_string(seed_path()).expect("seed");
    let yaml = format!(
        "{seed}\nllms:\n  \"ollama/deepseek-coder-v3:14b\":\n    input_cost_per_token: 0.000001\n  \
         \"openai/gpt-4o\":\n    output_cost_per_token: 0.00002\n    edit_format: whole\n"
    );
    let config =
        Config::from_yaml_with(&yaml, Path::new("x.yaml"), &PathEnv::in_dir("/w")).expect("loads");
    let p009 = config.programmer("009").expect("009");
    assert!(!p009.primary.free && p009.backup.free);
    assert!(p009.paid, "a priced primary makes the programmer paid");
    let gpt = config.llm("openai/gpt-4o").expect("gpt-4o");
    assert_eq!(gpt.output_cost_per_token, 2e-5);
    assert_eq!(
        gpt.input_cost_per_token, 2.5e-6,
        "unset price keeps the built-in one"
    );
    assert_eq!(gpt.edit_format, "whole");
}

#[test]
fn a_provider_field_serves_model_names_without_a_prefix() {
    let yaml = "pool_size: 1\nprogrammers:\n  - id: a1\n    port: 7001\n    primary_llm: my-local\n    \
                backup_llm: ollama/b\nllms:\n  my-local:\n    provider: ollama_chat\n";
    let config =
        Config::from_yaml_with(yaml, Path::new("x.yaml"), &PathEnv::in_dir("/w")).expect("loads");
    let p = config.programmer("a1").expect("a1");
    assert_eq!(p.primary.provider, Provider::OllamaChat);
    assert!(p.primary.free);
    assert!(p.capabilities.is_empty());
}

#[test]
fn debug_output_names_key_variables_not_their_values() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = load_in(&shipped_path(), tmp.path());
    let debug = format!("{config:?}");
    assert!(
        debug.contains("api_key_env: Some(\"OPENAI_API_KEY\")"),
        "{debug}"
    );
    assert!(
        !debug.to_lowercase().contains("api_key:"),
        "no field holds a key value"
    );
}

#[test]
fn a_missing_file_is_a_read_error_naming_it() {
    let err = Config::load(Path::new("/nonexistent/pool.yaml")).expect_err("must fail");
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/pool.yaml: cannot read"),
        "{err}"
    );
}

#[test]
fn summary_lists_programmers_catalog_groups_and_budget() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = load_in(&seed_path(), tmp.path());
    let summary = config.summary();
    let row = summary
        .lines()
        .find(|l| l.trim_start().starts_with("006 "))
        .expect("a row for 006");
    assert!(row.contains("127.0.0.1:6156"), "{row}");
    assert!(
        row.contains("anthropic/claude-sonnet-4-20250514 -> anthropic/claude-3-7-sonnet-20250219"),
        "{row}"
    );
    assert!(row.contains("paid") && row.contains("$5.00"), "{row}");
    let gpt = summary
        .lines()
        .find(|l| l.trim_start().starts_with("openai/gpt-4o "))
        .expect("catalog row");
    assert!(gpt.contains("$2.50") && gpt.contains("$10.00"), "{gpt}");
    assert!(
        summary.contains("fast:       001, 002, 003, 004, 005"),
        "{summary}"
    );
    assert!(summary.contains("least_loaded"));
    assert!(
        summary.contains("$50.00 per day, alert at $40.00"),
        "{summary}"
    );
    assert!(summary.contains(&tmp.path().join("workspaces").display().to_string()));
}
