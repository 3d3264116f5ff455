//! Resolving model names into [`LlmSpec`]s: provider, prices, edit format, context, endpoint.
//!
//! Precedence for every field: the file's `llms.<name>` entry, then the built-in catalog
//! ([`super::catalog`]), then the section defaults (`aider.edit_format`, `defaults.context_limit`).
//! Endpoints come from `providers.<endpoint>` merged over the built-in endpoint defaults.

use super::catalog::{self, Provider};
use super::locate::KeyPath;
use super::model::PoolConfig;
use super::validate::Finding;
use crate::money::Usd;

/// A model as a programmer uses it: how to reach it and what it costs.
///
/// Holds the *names* of the environment variables for the base URL and the API key, never their
/// values: [`LlmSpec::api_base`] and [`LlmSpec::api_key`] read them when called, so operators can
/// point a running config at a simulator, and `Debug` output can never leak a key.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmSpec {
    /// Model name as aider receives it (`--model`), provider prefix included.
    pub name: String,
    pub provider: Provider,
    /// US dollars per prompt token.
    pub input_cost_per_token: f64,
    /// US dollars per completion token.
    pub output_cost_per_token: f64,
    /// Both prices are zero: the budget never blocks this model.
    pub free: bool,
    /// Aider edit format (`diff`, `whole`, ...), passed explicitly because aider defaults unknown
    /// model names to `whole`.
    pub edit_format: String,
    /// Context window in tokens (written into aider's model metadata).
    pub context_limit: u64,
    /// Environment variable that overrides the base URL.
    pub api_base_env: String,
    /// Base URL when that variable is unset or empty.
    pub default_api_base: String,
    /// Environment variable holding the API key (`None`: the provider takes no key).
    pub api_key_env: Option<String>,
}

impl LlmSpec {
    /// A model known only by its name and whether it costs money: what a manager knows of the
    /// LLM of a programmer found by DNS whose model its own catalog lacks. Enough to show it and
    /// count its tasks; only the programmer, with its own catalog, runs aider on it.
    pub fn named(name: &str, free: bool) -> Self {
        Self {
            name: name.to_string(),
            provider: Provider::OpenAi,
            input_cost_per_token: 0.0,
            output_cost_per_token: 0.0,
            free,
            edit_format: String::new(),
            context_limit: 0,
            api_base_env: String::new(),
            default_api_base: String::new(),
            api_key_env: None,
        }
    }

    /// The provider's base URL now: `$api_base_env` when set and non-empty, else the configured default.
    pub fn api_base(&self) -> String {
        self.api_base_with(|name| std::env::var(name).ok())
    }

    /// [`Self::api_base`] with an explicit variable lookup (tests, or a child's environment).
    pub fn api_base_with(&self, lookup: impl Fn(&str) -> Option<String>) -> String {
        lookup(&self.api_base_env)
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| self.default_api_base.clone())
    }

    /// The API key now, from `$api_key_env` (`None` when the provider takes none or it is unset).
    pub fn api_key(&self) -> Option<String> {
        self.api_key_with(|name| std::env::var(name).ok())
    }

    /// [`Self::api_key`] with an explicit variable lookup.
    pub fn api_key_with(&self, lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
        let var = self.api_key_env.as_deref()?;
        lookup(var).filter(|v| !v.is_empty())
    }

    /// What these token counts cost at the catalog prices: the product is taken in floats (a
    /// price per token is a fraction of a nano-dollar for some models) and rounded to a whole
    /// nano-dollar once, here, so an attempt's cost is an integer from the start. Prices are
    /// checked finite and >= 0 when the configuration loads; were one not, the cost would be the
    /// most there is, never nothing.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> Usd {
        token_cost(
            prompt_tokens,
            completion_tokens,
            self.input_cost_per_token,
            self.output_cost_per_token,
        )
    }
}

/// What `prompt` and `completion` tokens cost at per-token prices, rounded once to nano-dollars.
/// An unusable price (it cannot happen: prices are validated at load) charges the maximum, so the
/// ledger never under-counts.
pub fn token_cost(
    prompt: u64,
    completion: u64,
    input_per_token: f64,
    output_per_token: f64,
) -> Usd {
    Usd::from_usd(prompt as f64 * input_per_token + completion as f64 * output_per_token)
        .unwrap_or(Usd::MAX)
}

/// Resolves `name` against the file's `llms:` entries and the built-in catalog.
///
/// `used_at` is where the name appears (a programmer's `primary_llm`, or the `llms:` key) and is
/// where a missing provider or price is reported; a bad `provider:` value is reported at itself.
/// Value checks of an `llms:` entry (negative price, unknown edit format) belong to validation.
pub(crate) fn resolve(
    pool: &PoolConfig,
    name: &str,
    used_at: &KeyPath,
) -> Result<LlmSpec, Finding> {
    let entry = pool.llms.get(name);
    let provider = match entry.and_then(|e| e.provider.as_deref()) {
        Some(written) => Provider::parse(written).ok_or_else(|| {
            Finding::value(
                KeyPath::root().key("llms").key(name).key("provider"),
                format!(
                    "unknown provider \"{written}\" (expected ollama, ollama_chat, openai or anthropic)"
                ),
            )
        })?,
        None => Provider::from_model_name(name).ok_or_else(|| {
            Finding::value(
                used_at.clone(),
                format!(
                    "unknown provider for model \"{name}\": prefix it with ollama/, ollama_chat/, \
                     openai/ or anthropic/, or add it under llms: with a provider"
                ),
            )
        })?,
    };
    let builtin = catalog::builtin_model(name);
    let default_price = |builtin_price: Option<f64>| {
        builtin_price.or_else(|| provider.free_by_default().then_some(0.0))
    };
    let input = entry
        .and_then(|e| e.input_cost_per_token)
        .or_else(|| default_price(builtin.map(|b| b.input_cost_per_token)));
    let output = entry
        .and_then(|e| e.output_cost_per_token)
        .or_else(|| default_price(builtin.map(|b| b.output_cost_per_token)));
    let (Some(input), Some(output)) = (input, output) else {
        return Err(Finding::value(
            used_at.clone(),
            format!(
                "paid model \"{name}\" has no prices: add it under llms: with \
                 input_cost_per_token and output_cost_per_token"
            ),
        ));
    };
    let endpoint = catalog::endpoint_defaults(provider);
    let written = pool.providers.get(provider.endpoint_key());
    Ok(LlmSpec {
        name: name.to_string(),
        provider,
        input_cost_per_token: input,
        output_cost_per_token: output,
        free: input == 0.0 && output == 0.0,
        edit_format: entry
            .and_then(|e| e.edit_format.clone())
            .unwrap_or_else(|| pool.aider.edit_format.clone()),
        context_limit: entry
            .and_then(|e| e.context_limit)
            .or(builtin.map(|b| b.context_limit))
            .unwrap_or(pool.defaults.context_limit),
        api_base_env: written
            .and_then(|p| p.api_base_env.clone())
            .unwrap_or_else(|| endpoint.api_base_env.to_string()),
        default_api_base: written
            .and_then(|p| p.api_base.clone())
            .unwrap_or_else(|| endpoint.api_base.to_string()),
        api_key_env: written
            .and_then(|p| p.api_key_env.clone())
            .or_else(|| endpoint.api_key_env.map(str::to_string)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{LlmConfig, ProviderConfig};

    fn pool() -> PoolConfig {
        let yaml = "pool_size: 0\nprogrammers: []\n";
        match serde_yaml::from_str(yaml) {
            Ok(pool) => pool,
            Err(e) => panic!("{e}"),
        }
    }

    fn at() -> KeyPath {
        KeyPath::root()
            .key("programmers")
            .index(0)
            .key("primary_llm")
    }

    #[test]
    fn ollama_models_are_free_and_use_the_ollama_endpoint() {
        let spec = resolve(&pool(), "ollama/qwen2.5-coder:7b-instruct", &at());
        let Ok(spec) = spec else { panic!("{spec:?}") };
        assert!(spec.free);
        assert_eq!(spec.provider, Provider::Ollama);
        assert_eq!(spec.edit_format, "diff");
        assert_eq!(spec.context_limit, 131_072);
        assert_eq!(spec.api_base_with(|_| None), "http://127.0.0.1:11434");
        let env = |v: &str| (v == "OLLAMA_API_BASE").then(|| "http://127.0.0.1:9999".to_string());
        assert_eq!(spec.api_base_with(env), "http://127.0.0.1:9999");
        assert_eq!(spec.api_key_with(|_| Some("x".into())), None);
    }

    #[test]
    fn builtin_paid_models_carry_list_prices_and_key_variables() {
        let Ok(spec) = resolve(&pool(), "openai/gpt-4o", &at()) else {
            panic!()
        };
        assert!(!spec.free);
        assert_eq!(spec.input_cost_per_token, 2.5e-6);
        assert_eq!(spec.output_cost_per_token, 10.0e-6);
        assert_eq!(spec.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
        let env = |v: &str| (v == "OPENAI_API_KEY").then(|| "sk-test".to_string());
        assert_eq!(spec.api_key_with(env).as_deref(), Some("sk-test"));
        assert_eq!(
            spec.cost(1_000_000, 100_000),
            Usd::from_nanos(3_500_000_000)
        );
        // One token of a cheap model is a fraction of a micro-dollar, and kept.
        assert_eq!(spec.cost(1, 0), Usd::from_nanos(2_500));
    }

    #[test]
    fn unknown_paid_model_needs_prices() {
        let Err(finding) = resolve(&pool(), "openai/gpt-5", &at()) else {
            panic!()
        };
        assert!(
            finding.message.contains("add it under llms: with"),
            "{}",
            finding.message
        );
        assert_eq!(finding.key, at());
    }

    #[test]
    fn llms_entries_override_the_builtin_catalog_and_providers_override_endpoints() {
        let mut pool = pool();
        pool.llms.insert(
            "openai/gpt-4o".into(),
            LlmConfig {
                input_cost_per_token: Some(1e-6),
                edit_format: Some("whole".into()),
                ..Default::default()
            },
        );
        pool.llms.insert(
            "local-model".into(),
            LlmConfig {
                provider: Some("ollama_chat".into()),
                ..Default::default()
            },
        );
        pool.providers.insert(
            "openai".into(),
            ProviderConfig {
                api_base: Some("http://127.0.0.1:7000/v1".into()),
                ..Default::default()
            },
        );
        let Ok(gpt) = resolve(&pool, "openai/gpt-4o", &at()) else {
            panic!()
        };
        assert_eq!(gpt.input_cost_per_token, 1e-6);
        assert_eq!(
            gpt.output_cost_per_token, 10.0e-6,
            "unset fields keep the built-in value"
        );
        assert_eq!(gpt.edit_format, "whole");
        assert_eq!(gpt.api_base_with(|_| None), "http://127.0.0.1:7000/v1");
        let Ok(local) = resolve(&pool, "local-model", &at()) else {
            panic!()
        };
        assert_eq!(local.provider, Provider::OllamaChat);
        assert!(local.free);
    }

    #[test]
    fn a_model_without_a_provider_prefix_is_rejected() {
        let Err(finding) = resolve(&pool(), "gpt-4o", &at()) else {
            panic!()
        };
        assert!(
            finding.message.contains("unknown provider"),
            "{}",
            finding.message
        );
    }
}
