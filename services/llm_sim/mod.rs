//! `pas llm-sim`: an offline LLM provider simulator (OpenAI, Ollama, Anthropic APIs) with fault injection.
