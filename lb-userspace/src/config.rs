//! The YAML configuration (placeholder; being written).
