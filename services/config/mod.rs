//! Configuration: the YAML data model, loading with precise errors, validation, and the LLM catalog.

pub mod model;

pub use model::*;
