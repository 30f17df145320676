//! The wiring of the two services: config → ports → engine or controller →
//! server. `volmig node` runs [`node`], `volmig controller` runs
//! [`controller`].

pub mod controller;
#[cfg(feature = "node")]
pub mod node;
