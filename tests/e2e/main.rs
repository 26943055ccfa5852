//! End-to-end: the real `gradient-server` binary on loopback, driven over HTTP like curl would, on SQLite
//! and on PostgreSQL. Build the binary first (`cargo build -p gradient-server`; `scripts/test` does).

mod acceptance;
mod actions;
mod cache;
mod cache_clients;
mod cli;
mod email;
mod evaluate;
mod faults;
mod fuzz;
mod github_app;
mod harness;
mod hooks;
mod listening;
mod nix;
mod nixos;
mod oidc;
mod options;
mod pipeline;
mod private_repos;
mod pull_requests;
mod reach;
mod server;
mod state;
mod statuses;
mod store_faults;
mod tenants;
mod tls;
mod tui;
mod web;
mod workers;
