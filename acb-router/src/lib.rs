//! `acb-router`: an OpenAI-compatible router that hosts several LLM servers on shared GPUs, each
//! model an acb job. A request for a sleeping model waits (in a bounded queue) while the router
//! takes a lease from the assigner and wakes the model's server; a model idle past its TTL, or
//! asked by the assigner to yield because another model waits for its GPU, finishes its
//! in-flight requests, sleeps and gives its lease back.
//!
//! Layers: [`config`] (the TOML file), [`engine`] (a server's process and its sleep/wake calls:
//! vLLM, auto, process), [`model`] (admission, and the task that holds a model's lease), [`proxy`]
//! (the HTTP endpoints), [`metrics`], [`cli`].

pub mod cli;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod proxy;
