//! kabar's integration tests: one test crate (one build and one link instead of one per
//! file), a module per area. A test's path names its area: `cargo test --test integration
//! service::` runs the service tests.

mod common;

mod alertmanager_e2e;
mod app_state;
mod cards;
mod chat_actions;
mod chat_app;
mod chat_events_selftest;
mod cli;
mod dead_letters;
mod fake_chat_selftest;
mod faults;
mod golden;
mod hardening;
mod hostile;
mod hostile_flows;
mod log_secrets;
mod monitoring;
mod postgres_replicas;
mod postgres_suites;
mod process;
mod render_properties;
mod service;
mod store_copy;
