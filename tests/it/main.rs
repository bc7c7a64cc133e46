//! The integration tests, one binary with a module per area; the shared fixtures live in
//! [`helpers`].

mod architecture;
mod at_rest;
mod at_risk_ranking;
mod bad_input;
mod cli_clients;
mod console;
mod grpc_server;
mod helpers;
mod hostile_clients;
mod http_admission;
mod http_api;
mod http_models;
mod interests;
#[cfg(feature = "kafka")]
mod kafka_events;
mod privacy;
mod redis_fixture;
mod redis_ranking;
mod redis_state;
#[cfg(feature = "kafka")]
mod scale_out;
mod security;
mod signed_bundles;
mod stability;
mod storage_faults;
mod train_e2e;
mod vocabulary;
mod warehouse;
