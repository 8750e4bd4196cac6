//! The live terminal dashboard. (Placeholder.)
