//! The wiring of the two services: flags and config layers → ports → engine
//! or controller → server. `volmig node` runs [`node`], `volmig controller`
//! runs [`controller`]; both read their flags ([`args`]) and configuration
//! ([`layers`]) the same way.

pub mod args;
pub mod controller;
pub mod layers;
#[cfg(feature = "node")]
pub mod node;
