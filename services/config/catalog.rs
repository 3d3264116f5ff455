//! The built-in LLM catalog and provider endpoints: what the mesh knows without an `llms:` or
//! `providers:` section.
//!
//! Local Ollama models are free. The paid models the shipped configuration uses carry their list
//! prices, so cost accounting and the daily budget work on the original file, which has no prices.
//! A paid model that is in neither this catalog nor the file's `llms:` section is a configuration
//! error: we would otherwise spend money we cannot count.

use std::fmt;

/// The API family a model is reached through; decides aider's model prefix, the endpoint and the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    /// `ollama/<model>`: Ollama's `/api/generate` (local, free by default).
    Ollama,
    /// `ollama_chat/<model>`: Ollama's `/api/chat` (local, free by default).
    OllamaChat,
    /// `openai/<model>`: an OpenAI-compatible `/chat/completions` API.
    OpenAi,
    /// `anthropic/<model>`: Anthropic's `/v1/messages` API.
    Anthropic,
}

impl Provider {
    /// Every provider, in display order.
    pub const ALL: [Provider; 4] = [
        Provider::Ollama,
        Provider::OllamaChat,
        Provider::OpenAi,
        Provider::Anthropic,
    ];

    /// The name used in model prefixes and in `llms.<model>.provider`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ollama => "ollama",
            Self::OllamaChat => "ollama_chat",
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        }
    }

    /// Parses a provider name as written in the file.
    pub fn parse(name: &str) -> Option<Provider> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The provider a model name's prefix (`openai/gpt-4o` → OpenAi) names, if any.
    pub fn from_model_name(model: &str) -> Option<Provider> {
        let (prefix, rest) = model.split_once('/')?;
        if rest.is_empty() {
            return None;
        }
        Self::parse(prefix)
    }

    /// The key of this provider's section under `providers:` (both Ollama APIs share one server).
    pub fn endpoint_key(self) -> &'static str {
        match self {
            Self::Ollama | Self::OllamaChat => "ollama",
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        }
    }

    /// Whether models of this provider cost nothing unless the file gives prices (local models).
    pub fn free_by_default(self) -> bool {
        matches!(self, Self::Ollama | Self::OllamaChat)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The names accepted as keys under `providers:`.
pub const ENDPOINT_KEYS: [&str; 3] = ["ollama", "openai", "anthropic"];

/// Where a provider is reached when `providers:` does not say otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointDefaults {
    /// Environment variable that overrides the base URL (read when a request is made).
    pub api_base_env: &'static str,
    /// Base URL when that variable is unset.
    pub api_base: &'static str,
    /// Environment variable holding the API key, if the provider needs one.
    pub api_key_env: Option<&'static str>,
}

/// Built-in endpoint defaults for a provider section (see [`Provider::endpoint_key`]).
pub fn endpoint_defaults(provider: Provider) -> EndpointDefaults {
    match provider {
        Provider::Ollama | Provider::OllamaChat => EndpointDefaults {
            api_base_env: "OLLAMA_API_BASE",
            api_base: "http://127.0.0.1:11434",
            api_key_env: None,
        },
        Provider::OpenAi => EndpointDefaults {
            api_base_env: "OPENAI_API_BASE",
            api_base: "https://api.openai.com/v1",
            api_key_env: Some("OPENAI_API_KEY"),
        },
        Provider::Anthropic => EndpointDefaults {
            api_base_env: "ANTHROPIC_API_BASE",
            api_base: "https://api.anthropic.com",
            api_key_env: Some("ANTHROPIC_API_KEY"),
        },
    }
}

/// A built-in catalog entry for a paid model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuiltinModel {
    /// Full model name as programmers write it, provider prefix included.
    pub name: &'static str,
    /// US dollars per prompt token.
    pub input_cost_per_token: f64,
    /// US dollars per completion token.
    pub output_cost_per_token: f64,
    /// Context window in tokens.
    pub context_limit: u64,
}

/// Paid models with known list prices, per token (Sonnet 4 and 3.7: $3 / $15 per million input /
/// output tokens; GPT-4o: $2.50 / $10; GPT-4o mini: $0.15 / $0.60).
pub const BUILTIN_MODELS: &[BuiltinModel] = &[
    BuiltinModel {
        name: "anthropic/claude-sonnet-4-20250514",
        input_cost_per_token: 3.0e-6,
        output_cost_per_token: 15.0e-6,
        context_limit: 200_000,
    },
    BuiltinModel {
        name: "anthropic/claude-3-7-sonnet-20250219",
        input_cost_per_token: 3.0e-6,
        output_cost_per_token: 15.0e-6,
        context_limit: 200_000,
    },
    BuiltinModel {
        name: "openai/gpt-4o",
        input_cost_per_token: 2.5e-6,
        output_cost_per_token: 10.0e-6,
        context_limit: 128_000,
    },
    BuiltinModel {
        name: "openai/gpt-4o-mini",
        input_cost_per_token: 0.15e-6,
        output_cost_per_token: 0.60e-6,
        context_limit: 128_000,
    },
];

/// The built-in entry for `name`, if the mesh knows its prices.
pub fn builtin_model(name: &str) -> Option<&'static BuiltinModel> {
    BUILTIN_MODELS.iter().find(|m| m.name == name)
}

/// Aider edit formats a model may be configured with.
pub const EDIT_FORMATS: [&str; 4] = ["diff", "whole", "diff-fenced", "udiff"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_comes_from_the_model_prefix() {
        assert_eq!(
            Provider::from_model_name("ollama/qwen2.5-coder:7b"),
            Some(Provider::Ollama)
        );
        assert_eq!(
            Provider::from_model_name("ollama_chat/llama3"),
            Some(Provider::OllamaChat)
        );
        assert_eq!(
            Provider::from_model_name("openai/gpt-4o"),
            Some(Provider::OpenAi)
        );
        assert_eq!(
            Provider::from_model_name("anthropic/claude"),
            Some(Provider::Anthropic)
        );
        assert_eq!(Provider::from_model_name("gemini/gemini-pro"), None);
        assert_eq!(Provider::from_model_name("gpt-4o"), None);
        assert_eq!(Provider::from_model_name("openai/"), None);
    }

    #[test]
    fn shipped_paid_models_have_list_prices() {
        let sonnet =
            builtin_model("anthropic/claude-sonnet-4-20250514").map(|m| m.input_cost_per_token);
        assert_eq!(sonnet, Some(3.0e-6));
        let mini = builtin_model("openai/gpt-4o-mini").map(|m| m.output_cost_per_token);
        assert_eq!(mini, Some(0.6e-6));
        assert!(builtin_model("openai/gpt-5").is_none());
    }
}
