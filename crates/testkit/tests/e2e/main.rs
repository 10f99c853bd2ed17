//! The end-to-end suites: real servers, clients, local services and visitors
//! on loopback, one module per area.
//!
//! They are one test binary rather than one per file, because each binary
//! links the whole product: on the 2-core machine, building this crate's
//! tests from scratch took 211 s as 45 binaries (about 50 MB each) and 22 s
//! as one (68 MB); after a change to the fixtures, 50 s against 6 s.
//! Run one area with its module's name as the filter, e.g.
//! `cargo test -p cryptun-testkit --test e2e smoke::`.
//! The opt-in runs are ignored tests: `load::` (1 GiB each way, in release)
//! and `chaos::` (docs/SECURITY.md, "Chaos runs").

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod acme;
mod admin;
mod auth;
mod binary_heads;
mod chaos;
mod close;
mod cluster;
mod cluster_acl;
mod cluster_raw;
mod cluster_routing;
mod cluster_tls;
mod dashboard;
mod dashboard_browser;
mod devservers;
mod failover;
mod failures;
mod floods;
mod forwarding;
mod guidance;
mod hardening;
mod http2;
mod inspector;
mod inspector_browser;
mod inspector_replay;
mod inspector_tools;
mod inspector_tunnels;
mod ipv6;
mod keepalive;
mod limits;
mod livereload;
mod load;
mod longpoll;
mod names;
mod netns;
mod observability;
mod passthrough;
mod pools;
mod protocol;
mod proxy_protocol;
mod quotas;
mod ratelimit;
mod restarts;
mod revoke;
mod semantics;
mod session_limits;
mod slow_bodies;
mod smoke;
mod streaming;
mod tcp;
mod tls;
mod tls_passthrough;
mod trailers;
mod tunnels;
mod upstream;
