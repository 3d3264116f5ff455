//! Bad configurations: each must fail with the specific problem, its key path and its line.
//!
//! Most cases edit the original (seed) file in one place, so everything else stays valid; the
//! expected line is found by searching the edited text for the edited line.

use pas::config::{Config, ConfigError, ConfigIssue, PathEnv};
use std::path::Path;

const SOURCE: &str = "configs/bad.yaml";

fn seed() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed_programmer_pool.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The seed with exactly one occurrence of `from` replaced by `to` (panics if `from` is not unique).
fn seed_with(from: &str, to: &str) -> String {
    let seed = seed();
    assert_eq!(
        seed.matches(from).count(),
        1,
        "`{from}` must occur once in the seed"
    );
    seed.replacen(from, to, 1)
}

/// The seed with `extra` appended (new top-level sections).
fn seed_plus(extra: &str) -> String {
    format!("{}\n{extra}", seed())
}

fn issues(yaml: &str) -> Vec<ConfigIssue> {
    match Config::from_yaml_with(yaml, Path::new(SOURCE), &PathEnv::in_dir("/w")) {
        Ok(_) => panic!("expected the configuration to be rejected:\n{yaml}"),
        Err(ConfigError::Invalid(issues)) => issues,
        Err(other) => panic!("expected Invalid, got {other}"),
    }
}

/// 1-based line of the first line containing `needle`.
fn line_of(yaml: &str, needle: &str) -> usize {
    match yaml.lines().position(|l| l.contains(needle)) {
        Some(i) => i + 1,
        None => panic!("`{needle}` not in the document"),
    }
}

/// Asserts there is an issue at `key` on `line` whose message contains `message`; returns it.
fn expect_issue<'a>(
    issues: &'a [ConfigIssue],
    key: &str,
    line: usize,
    message: &str,
) -> &'a ConfigIssue {
    let found = issues
        .iter()
        .find(|i| i.key.to_string() == key && i.message.contains(message));
    let Some(issue) = found else {
        let all: Vec<String> = issues.iter().map(ToString::to_string).collect();
        panic!(
            "no issue at `{key}` containing `{message}`; got:\n{}",
            all.join("\n")
        );
    };
    assert_eq!(issue.line, Some(line), "line of {issue}");
    assert_eq!(issue.file, Path::new(SOURCE));
    issue
}

/// Asserts the only problem is the expected one (the edit did not break anything else).
fn expect_only(yaml: &str, key: &str, needle: &str, message: &str) -> ConfigIssue {
    let issues = issues(yaml);
    let issue = expect_issue(&issues, key, line_of(yaml, needle), message).clone();
    assert_eq!(
        issues.len(),
        1,
        "exactly one issue expected, got {issues:#?}"
    );
    issue
}

// ---------------------------------------------------------------------------------------------
// Parse and type errors
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_top_level_key() {
    let yaml = seed_with("pool_size: 10", "pool_size: 10\npool_sise: 10");
    let issue = expect_only(
        &yaml,
        "pool_sise",
        "pool_sise:",
        "unknown field `pool_sise`",
    );
    assert_eq!(issue.column, Some(1));
}

#[test]
fn unknown_key_in_a_programmer() {
    let yaml = seed_with("    port: 6153\n", "    port: 6153\n    prot: 6153\n");
    let issue = expect_only(
        &yaml,
        "programmers[2].prot",
        "prot:",
        "unknown field `prot`",
    );
    assert_eq!(issue.column, Some(5));
}

#[test]
fn unknown_key_in_a_nested_section() {
    let yaml = seed_with("    failure_threshold: 3", "    treshold: 3");
    expect_only(
        &yaml,
        "failover.circuit_breaker.treshold",
        "treshold:",
        "unknown field `treshold`",
    );
}

#[test]
fn unknown_key_in_a_mesh_section() {
    let yaml = seed_plus("manager:\n  port: 6141\n  queue: 5\n");
    expect_only(
        &yaml,
        "manager.queue",
        "  queue: 5",
        "unknown field `queue`",
    );
}

#[test]
fn wrong_type_for_a_port() {
    let yaml = seed_with("port: 6154", "port: \"high\"");
    let issue = expect_only(
        &yaml,
        "programmers[3].port",
        "\"high\"",
        "invalid type: string \"high\"",
    );
    assert_eq!(issue.column, Some(11), "points at the value");
}

#[test]
fn wrong_type_for_a_section() {
    let yaml = seed_with("  auto_commit: true", "  auto_commit: sometimes");
    expect_only(
        &yaml,
        "defaults.auto_commit",
        "auto_commit: sometimes",
        "invalid type",
    );
}

#[test]
fn negative_integer_limit_is_a_type_error() {
    let yaml = seed_with("  timeout_s: 900", "  timeout_s: -900");
    expect_only(&yaml, "defaults.timeout_s", "timeout_s: -900", "-900");
}

#[test]
fn unknown_strategy() {
    let yaml = seed_with("strategy: \"least_loaded\"", "strategy: \"fastest\"");
    expect_only(
        &yaml,
        "load_balancing.strategy",
        "fastest",
        "unknown variant `fastest`",
    );
}

#[test]
fn unknown_failure_condition() {
    let yaml = seed_with("    - \"rate_limit\"", "    - \"ratelimit\"");
    expect_only(
        &yaml,
        "failover.failure_conditions[2]",
        "ratelimit",
        "unknown variant `ratelimit`",
    );
}

#[test]
fn duplicate_key_in_a_mapping() {
    let yaml = seed_with("    port: 6155\n", "    port: 6155\n    port: 6255\n");
    let issues = issues(&yaml);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert!(issues[0].message.contains("duplicate"), "{}", issues[0]);
    assert!(
        issues[0].key.to_string().starts_with("programmers[4]"),
        "{}",
        issues[0]
    );
}

#[test]
fn yaml_syntax_error_has_a_line() {
    let yaml = seed_with(
        "  fast: [\"001\", \"002\", \"003\", \"004\", \"005\"]",
        "  fast: [\"001\", \"002\"",
    );
    let issues = issues(&yaml);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    let line = issues[0].line.expect("a syntax error has a line");
    assert!(
        line >= line_of(&yaml, "fast: [\"001\", \"002\""),
        "{}",
        issues[0]
    );
}

#[test]
fn missing_required_key() {
    let yaml = seed_with("    backup_llm: \"openai/gpt-4o-mini\"\n", "");
    let issues = issues(&yaml);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_eq!(issues[0].key.to_string(), "programmers[7]");
    assert!(
        issues[0].message.contains("missing field `backup_llm`"),
        "{}",
        issues[0]
    );
    assert_eq!(issues[0].line, Some(line_of(&yaml, "id: \"008\"")));
}

// ---------------------------------------------------------------------------------------------
// Semantic errors
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicate_programmer_id() {
    let yaml = seed_with("id: \"003\"", "id: \"002\"");
    let line = line_of(&yaml, "port: 6153") - 1;
    let issues = issues(&yaml);
    expect_issue(
        &issues,
        "programmers[2].id",
        line,
        "duplicate id \"002\" (also programmers[1])",
    );
}

#[test]
fn duplicate_port_names_the_other_user() {
    let yaml = seed_with("port: 6153", "port: 6152");
    let line = line_of(&yaml, "id: \"003\"") + 1; // the edited port line
    let issues = issues(&yaml);
    let issue = expect_issue(
        &issues,
        "programmers[2].port",
        line,
        "duplicate port 6152 (also used by programmer \"002\")",
    );
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_eq!(
        issue.to_string(),
        format!(
            "{SOURCE}:{line}:11: programmers[2].port: duplicate port 6152 (also used by programmer \"002\")"
        )
    );
}

#[test]
fn port_shared_with_the_manager() {
    let yaml = seed_plus("manager:\n  port: 6157\n");
    let issues = issues(&yaml);
    let line = line_of(&yaml, "id: \"007\"") + 1;
    expect_issue(
        &issues,
        "programmers[6].port",
        line,
        "duplicate port 6157 (also used by the manager)",
    );
    assert_eq!(issues.len(), 1);
}

#[test]
fn admin_port_shared_with_the_manager_or_a_programmer() {
    let yaml = seed_plus("manager:\n  port: 6141\n  admin_port: 6141\n");
    expect_only(
        &yaml,
        "manager.admin_port",
        "admin_port: 6141",
        "duplicate port 6141 (also used by the manager's port)",
    );
    let yaml = seed_plus("manager:\n  admin_port: 6151\n");
    let issues = issues(&yaml);
    let line = line_of(&yaml, "id: \"001\"") + 1;
    expect_issue(
        &issues,
        "programmers[0].port",
        line,
        "duplicate port 6151 (also used by the manager's probes (admin_port))",
    );
    assert_eq!(issues.len(), 1, "{issues:#?}");
}

#[test]
fn manager_worker_threads_past_the_limit() {
    let yaml = seed_plus("manager:\n  worker_threads: 5000\n");
    expect_only(
        &yaml,
        "manager.worker_threads",
        "worker_threads: 5000",
        "5000 threads; at most 1024 (1: one thread, 0: one per core)",
    );
    let yaml = seed_plus("manager:\n  worker_threads: 4\n");
    let config = Config::from_yaml_with(&yaml, Path::new(SOURCE), &PathEnv::in_dir("/w"))
        .expect("4 threads are fine");
    assert_eq!(config.pool.manager.worker_threads, 4);
    // The original file names no threads: the manager runs on one.
    let config = Config::from_yaml_with(&seed(), Path::new(SOURCE), &PathEnv::in_dir("/w"))
        .expect("the seed loads");
    assert_eq!(config.pool.manager.worker_threads, 1);
}

#[test]
fn manager_runtimes_past_the_limit_or_beside_worker_threads() {
    let yaml = seed_plus("manager:\n  runtimes: 5000\n");
    expect_only(
        &yaml,
        "manager.runtimes",
        "runtimes: 5000",
        "5000 runtimes; at most 1024 (1: one runtime, 0: one per core)",
    );
    // Each runtime has one thread: the two ways to use more cores exclude each other.
    let yaml = seed_plus("manager:\n  runtimes: 2\n  worker_threads: 2\n");
    expect_only(
        &yaml,
        "manager.runtimes",
        "runtimes: 2",
        "2 one-thread runtimes and worker_threads: 2 exclude each other",
    );
    let yaml = seed_plus("manager:\n  runtimes: 0\n");
    let config = Config::from_yaml_with(&yaml, Path::new(SOURCE), &PathEnv::in_dir("/w"))
        .expect("one runtime per core is fine");
    assert_eq!(config.pool.manager.runtimes, 0);
    // The original file names none: one runtime.
    let config = Config::from_yaml_with(&seed(), Path::new(SOURCE), &PathEnv::in_dir("/w"))
        .expect("the seed loads");
    assert_eq!(config.pool.manager.runtimes, 1);
}

#[test]
fn escalation_that_cannot_fire_or_names_an_unknown_failure() {
    let yaml = seed_plus("escalation:\n  enabled: true\n  on: []\n");
    expect_only(
        &yaml,
        "escalation.on",
        "  on: []",
        "no failure escalates while escalation.enabled is true",
    );
    let yaml = seed_plus("escalation:\n  on: [edit_failed, nothing_changed]\n");
    expect_only(
        &yaml,
        "escalation.on[1]",
        "nothing_changed",
        "unknown variant `nothing_changed`",
    );
}

#[test]
fn sample_ratio_outside_zero_to_one() {
    let yaml = seed_plus("telemetry:\n  sample_ratio: 1.5\n");
    expect_only(
        &yaml,
        "telemetry.sample_ratio",
        "sample_ratio: 1.5",
        "must be between 0.0 and 1.0 (found 1.5)",
    );
}

#[test]
fn port_zero() {
    let yaml = seed_with("port: 6160", "port: 0");
    expect_only(
        &yaml,
        "programmers[9].port",
        "port: 0",
        "port 0 is not allowed",
    );
    let yaml = seed_plus("manager:\n  port: 0\n");
    expect_only(&yaml, "manager.port", "  port: 0", "port 0 is not allowed");
}

#[test]
fn capability_routing_names_an_unknown_id() {
    let yaml = seed_with(
        "fast: [\"001\", \"002\", \"003\", \"004\", \"005\"]",
        "fast: [\"001\", \"002\", \"003\", \"004\", \"015\"]",
    );
    let issue = expect_only(
        &yaml,
        "capability_routing.fast[4]",
        "\"015\"",
        "unknown programmer id \"015\"",
    );
    let text_line = yaml
        .lines()
        .nth(issue.line.unwrap_or(1) - 1)
        .unwrap_or_default();
    let column = issue.column.expect("column");
    assert!(
        text_line[column - 1..].starts_with("\"015\""),
        "column {column} in {text_line:?}"
    );
}

#[test]
fn zero_limits_are_all_reported() {
    let yaml = seed()
        .replace("  timeout_s: 900", "  timeout_s: 0")
        .replace("  max_tokens_per_job: 80000", "  max_tokens_per_job: 0")
        .replace("  max_cost_per_job_usd: 2.50", "  max_cost_per_job_usd: 0")
        .replace("max_queue_per_programmer: 5", "max_queue_per_programmer: 0")
        .replace("health_check_interval_s: 30", "health_check_interval_s: 0")
        .replace("failure_threshold: 3", "failure_threshold: 0")
        .replace("window_minutes: 10", "window_minutes: 0")
        .replace("cooldown_minutes: 5", "cooldown_minutes: -1")
        .replace("max_daily_spend_usd: 50.00", "max_daily_spend_usd: 0")
        .replace("alert_threshold_usd: 40.00", "alert_threshold_usd: -1");
    let issues = issues(&yaml);
    let expected = [
        ("defaults.timeout_s", "timeout_s: 0"),
        ("defaults.max_tokens_per_job", "max_tokens_per_job: 0"),
        ("defaults.max_cost_per_job_usd", "  max_cost_per_job_usd: 0"),
        (
            "load_balancing.max_queue_per_programmer",
            "max_queue_per_programmer: 0",
        ),
        (
            "load_balancing.health_check_interval_s",
            "health_check_interval_s: 0",
        ),
        (
            "failover.circuit_breaker.failure_threshold",
            "failure_threshold: 0",
        ),
        (
            "failover.circuit_breaker.window_minutes",
            "window_minutes: 0",
        ),
        (
            "failover.circuit_breaker.cooldown_minutes",
            "cooldown_minutes: -1",
        ),
        (
            "cost_optimization.max_daily_spend_usd",
            "max_daily_spend_usd: 0",
        ),
        (
            "cost_optimization.alert_threshold_usd",
            "alert_threshold_usd: -1",
        ),
    ];
    for (key, needle) in expected {
        expect_issue(&issues, key, line_of(&yaml, needle), "greater than 0");
    }
    assert_eq!(issues.len(), expected.len(), "{issues:#?}");
    let lines: Vec<Option<usize>> = issues.iter().map(|i| i.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "issues come in file order");
}

#[test]
fn zero_limit_in_a_programmer_override_and_mesh_sections() {
    let yaml = seed_with(
        "    max_cost_per_job_usd: 5.00  # Higher budget for premium",
        "    max_cost_per_job_usd: 0.0",
    ) + "manager:\n  max_queue: 0\n  queue_timeout_s: 0\naider:\n  request_timeout_s: 0\n";
    let issues = issues(&yaml);
    expect_issue(
        &issues,
        "programmers[5].max_cost_per_job_usd",
        line_of(&yaml, "max_cost_per_job_usd: 0.0"),
        "greater than 0",
    );
    expect_issue(
        &issues,
        "manager.max_queue",
        line_of(&yaml, "max_queue: 0"),
        "greater than 0",
    );
    expect_issue(
        &issues,
        "manager.queue_timeout_s",
        line_of(&yaml, "queue_timeout_s: 0"),
        "greater than 0",
    );
    expect_issue(
        &issues,
        "aider.request_timeout_s",
        line_of(&yaml, "request_timeout_s: 0"),
        "greater than 0",
    );
    assert_eq!(issues.len(), 4, "{issues:#?}");
}

#[test]
fn negative_retry_delay() {
    let yaml = seed_with("retry_delay_s: 5", "retry_delay_s: -0.5");
    expect_only(
        &yaml,
        "failover.retry_delay_s",
        "retry_delay_s",
        "must not be negative (found -0.5)",
    );
}

#[test]
fn alert_threshold_above_the_daily_budget() {
    let yaml = seed_with("alert_threshold_usd: 40.00", "alert_threshold_usd: 60.00");
    expect_only(
        &yaml,
        "cost_optimization.alert_threshold_usd",
        "alert_threshold_usd",
        "alert threshold $60.00 is above the daily budget $50.00",
    );
}

#[test]
fn pool_size_must_match_the_programmers_listed() {
    let yaml = seed_with("pool_size: 10", "pool_size: 12");
    expect_only(
        &yaml,
        "pool_size",
        "pool_size: 12",
        "pool_size is 12 but 10 programmers are listed",
    );
}

#[test]
fn empty_programmers_list() {
    let yaml = "pool_size: 0\nprogrammers: []\n";
    let issue = expect_only(yaml, "programmers", "programmers: []", "no programmers");
    assert_eq!(issue.column, Some(14));
}

#[test]
fn empty_id_and_llm_names() {
    let yaml = seed_with("id: \"004\"", "id: \"\"").replacen(
        "    primary_llm: \"ollama/deepseek-coder-v3:14b\"",
        "    primary_llm: \"\"",
        1,
    );
    let issues = issues(&yaml);
    expect_issue(
        &issues,
        "programmers[3].id",
        line_of(&yaml, "id: \"\""),
        "empty id",
    );
    expect_issue(
        &issues,
        "programmers[8].primary_llm",
        line_of(&yaml, "primary_llm: \"\""),
        "empty LLM name",
    );
    // The emptied id also leaves capability_routing naming "004", which no longer exists.
    expect_issue(
        &issues,
        "capability_routing.fast[3]",
        line_of(&yaml, "  fast: ["),
        "unknown programmer id \"004\"",
    );
}

#[test]
fn unknown_provider_prefix() {
    let yaml = seed_with(
        "primary_llm: \"openai/gpt-4o\"",
        "primary_llm: \"gemini/gemini-pro\"",
    );
    expect_only(
        &yaml,
        "programmers[7].primary_llm",
        "gemini/gemini-pro",
        "unknown provider for model \"gemini/gemini-pro\"",
    );
}

#[test]
fn unknown_provider_in_llms_and_providers() {
    let yaml = seed_plus(
        "llms:\n  \"openai/gpt-4o\":\n    provider: azure\nproviders:\n  azure:\n    api_base: \"https://example.invalid\"\n",
    );
    let issues = issues(&yaml);
    expect_issue(
        &issues,
        "llms.\"openai/gpt-4o\".provider",
        line_of(&yaml, "provider: azure"),
        "unknown provider \"azure\"",
    );
    let section = expect_issue(
        &issues,
        "providers.azure",
        line_of(&yaml, "  azure:"),
        "unknown provider \"azure\"",
    );
    assert_eq!(section.column, Some(3), "points at the key");
    assert_eq!(issues.len(), 2, "{issues:#?}");
}

#[test]
fn paid_model_without_prices() {
    let yaml = seed_with(
        "backup_llm: \"openai/gpt-4o-mini\"",
        "backup_llm: \"openai/gpt-5\"",
    );
    expect_only(
        &yaml,
        "programmers[7].backup_llm",
        "openai/gpt-5",
        "add it under llms: with",
    );
    // With prices it is fine.
    let priced = format!(
        "{yaml}\nllms:\n  \"openai/gpt-5\":\n    input_cost_per_token: 0.00000125\n    output_cost_per_token: 0.00001\n"
    );
    let config = Config::from_yaml_with(&priced, Path::new(SOURCE), &PathEnv::in_dir("/w"))
        .expect("valid with prices");
    assert_eq!(
        config.llm("openai/gpt-5").map(|l| l.input_cost_per_token),
        Some(1.25e-6)
    );
}

#[test]
fn bad_llm_entry_values() {
    let yaml = seed_plus(
        "llms:\n  \"openai/gpt-4o\":\n    input_cost_per_token: -0.1\n    edit_format: sideways\n    context_limit: 0\n",
    );
    let issues = issues(&yaml);
    expect_issue(
        &issues,
        "llms.\"openai/gpt-4o\".input_cost_per_token",
        line_of(&yaml, "-0.1"),
        "must not be negative",
    );
    expect_issue(
        &issues,
        "llms.\"openai/gpt-4o\".edit_format",
        line_of(&yaml, "sideways"),
        "unknown edit format \"sideways\"",
    );
    expect_issue(
        &issues,
        "llms.\"openai/gpt-4o\".context_limit",
        line_of(&yaml, "context_limit: 0"),
        "greater than 0",
    );
    assert_eq!(issues.len(), 3, "{issues:#?}");
}

#[test]
fn many_problems_are_reported_together_in_file_order() {
    let yaml = seed()
        .replace("pool_size: 10", "pool_size: 9")
        .replacen("port: 6153", "port: 6151", 1)
        .replace("\"009\", \"010\"]\n  local", "\"009\", \"011\"]\n  local")
        .replace("alert_threshold_usd: 40.00", "alert_threshold_usd: 55");
    let issues = issues(&yaml);
    let keys: Vec<String> = issues.iter().map(|i| i.key.to_string()).collect();
    assert_eq!(
        keys,
        [
            "pool_size",
            "programmers[2].port",
            "capability_routing.free[6]",
            "cost_optimization.alert_threshold_usd"
        ]
    );
    let err = ConfigError::Invalid(issues);
    assert_eq!(err.to_string().lines().count(), 4);
    for line in err.to_string().lines() {
        assert!(line.starts_with(&format!("{SOURCE}:")), "{line}");
    }
}

#[test]
fn llms_entry_without_a_provider_is_reported_at_its_name() {
    let yaml = seed_plus("llms:\n  mystery-model:\n    input_cost_per_token: 0\n");
    let issue = expect_only(
        &yaml,
        "llms.mystery-model",
        "mystery-model:",
        "unknown provider for model \"mystery-model\"",
    );
    assert_eq!(issue.column, Some(3));
}

#[test]
fn auth_without_a_token_source_and_an_unknown_open_route() {
    let yaml = seed_plus("auth:\n  open: [metrics]\n");
    expect_only(&yaml, "auth", "open:", "name `tokens_file` or `tokens_env`");
    let yaml = seed_plus("auth:\n  tokens_env: PAS_TOKENS\n  open: [metric]\n");
    expect_only(&yaml, "auth.open[0]", "open:", "unknown variant `metric`");
}

#[test]
fn tls_needs_all_three_files() {
    let yaml = seed_plus("tls:\n  ca: certs/ca.pem\n  cert: \"certs/{name}.pem\"\n");
    expect_only(&yaml, "tls", "ca:", "missing field `key`");
}

#[test]
fn repositories_patterns_paths_and_keys_are_checked() {
    let yaml = seed_plus(
        "repositories:\n  allow: [\"git://ok.example/*\", \"\", \"not a url\"]\n  ssh_key_file: \"\"\n  https_token_env: \"\"\n",
    );
    let found = issues(&yaml);
    let issues = &found;
    let line = line_of(&yaml, "allow:");
    expect_issue(issues, "repositories.allow[1]", line, "empty pattern");
    expect_issue(issues, "repositories.allow[2]", line, "whitespace");
    expect_issue(
        issues,
        "repositories.ssh_key_file",
        line_of(&yaml, "ssh_key_file"),
        "empty path",
    );
    expect_issue(
        issues,
        "repositories.https_token_env",
        line_of(&yaml, "https_token_env"),
        "empty variable name",
    );
    assert_eq!(issues.len(), 4, "{issues:#?}");
    let typo = seed_plus("repositories:\n  alow: [\"git://x/*\"]\n");
    let typo_found = self::issues(&typo);
    assert!(
        typo_found.iter().any(|i| i.message.contains("alow")),
        "{typo_found:#?}"
    );
}

#[test]
fn repositories_resolve_against_the_config_and_data_dirs() {
    let yaml =
        seed_plus("repositories:\n  allow: [\"git://git.example/*\"]\n  ssh_key_file: keys/id\n");
    let config =
        Config::from_yaml_with(&yaml, Path::new(SOURCE), &PathEnv::in_dir("/w")).expect("valid");
    let repos = config.repositories().expect("section");
    assert_eq!(repos.mirror_dir, config.data_dir().join("mirrors"));
    assert_eq!(
        repos.ssh_key_file,
        Some(config.config_dir().join("keys/id"))
    );
    assert!(repos.push, "push defaults to true");
    let url = pas::repo_url::RepoUrl::parse("git://git.example/a.git").expect("url");
    assert!(repos.allow.allows(&url));
    let plain = Config::from_yaml_with(&seed(), Path::new(SOURCE), &PathEnv::in_dir("/w"))
        .expect("the seed loads unchanged");
    assert!(plain.repositories().is_none());
}

#[test]
fn warm_aider_workers_out_of_range_and_an_unknown_start_mode() {
    let yaml = seed_plus("aider:\n  start: warm\n  warm_workers: 0\n");
    let issue = expect_only(
        &yaml,
        "aider.warm_workers",
        "warm_workers: 0",
        "must be 1-64",
    );
    assert!(issue.message.contains("start: cold"), "{issue}");
    let yaml = seed_plus("aider:\n  start: hot\n");
    let issues = issues(&yaml);
    expect_issue(&issues, "aider.start", line_of(&yaml, "start: hot"), "warm");
}

/// A programmer's own `aider_start` wins over `aider.start` for that programmer alone; a bad
/// one is named with its programmer's index, line and the modes there are.
#[test]
fn a_programmers_own_aider_start_wins_and_a_bad_one_is_named() {
    let entry = "  - id: \"002\"\n    port: 6152\n";
    let yaml = seed_with(entry, &format!("{entry}    aider_start: cold\n"));
    let config = Config::from_yaml_with(&yaml, Path::new(SOURCE), &PathEnv::in_dir("/w"))
        .expect("aider_start: cold on one programmer loads");
    let start = |id: &str| config.programmer(id).expect(id).aider_start;
    assert_eq!(config.pool.aider.start, pas::config::AiderStart::Warm);
    assert_eq!(start("002"), pas::config::AiderStart::Cold);
    assert_eq!(
        start("001"),
        pas::config::AiderStart::Warm,
        "the others keep aider.start"
    );
    let yaml = seed_with(entry, &format!("{entry}    aider_start: hot\n"));
    let issues = issues(&yaml);
    let issue = expect_issue(
        &issues,
        "programmers[1].aider_start",
        line_of(&yaml, "aider_start: hot"),
        "warm",
    );
    assert!(issue.message.contains("cold"), "{issue}");
}

#[test]
fn an_unknown_durability_names_the_ones_there_are() {
    let yaml = seed_plus("durability: power_outage\n");
    let issue = expect_only(
        &yaml,
        "durability",
        "power_outage",
        "unknown variant `power_outage`",
    );
    assert!(
        issue.message.contains("process_crash") && issue.message.contains("power_loss"),
        "{issue}"
    );
    let yaml = seed_plus("durability: power_loss\n");
    let config = Config::from_yaml_with(&yaml, Path::new(SOURCE), &PathEnv::in_dir("/w"))
        .expect("power_loss is a durability");
    assert_eq!(config.pool.durability, pas::config::Durability::PowerLoss);
}
