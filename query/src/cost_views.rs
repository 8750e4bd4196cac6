//! The cost views (`session_cost`, `provider_cost`, `hedging`, `unpriced_models`), owned by the cost work.

/// `(view name, SQL)` pairs, registered after the base views, in order.
pub const COST_VIEWS: &[(&str, &str)] = &[];
