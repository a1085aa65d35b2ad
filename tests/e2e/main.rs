//! End-to-end tests: the real `kirimhook` binary, started on 127.0.0.1:0 with a temp config
//! and store, spoken to over HTTP, its stdout read as the event stream.
//!
//! Every test runs its own daemon in its own temp dir, so tests run in parallel without
//! locks. Helpers: [`daemon`] (spawn, wait for lines, stop, kill), [`http`] (client and raw
//! requests), [`fixtures`] (spec fixtures F1-F9 and signed deliveries), [`target`] (the fake
//! service the HTTP relay posts to), [`services`] (the `KIRIMHOOK_TEST_*_URL` services of the
//! engine and broker tests, unique names, a schema guard), [`proxy`] (a TCP pass-through a test
//! can cut, to take a service away from one daemon), [`brokers`] (what the broker sinks' tests
//! share: the kill -9 under load driver, the checks after an outage). Tests: [`accept`], [`admin`],
//! [`reject`], [`durability`], [`cli`], [`cluster`] (several instances on PostgreSQL), [`first_run`], [`stdout_only`], [`relay`],
//! [`tail`] (`kirimhook tail`, the live view),
//! [`redis_stream`] (the Redis Streams sink on a real Redis), [`nats`] (the NATS JetStream
//! sink), [`rabbitmq`] (the RabbitMQ sink on a real broker, cut off by a proxy), [`systemd`],
//! [`tls`].

mod brokers;
mod daemon;
mod fixtures;
mod http;
mod proxy;
mod services;
mod target;

mod accept;
mod accounts;
mod admin;
mod cli;
mod cluster;
mod durability;
mod faults;
mod first_run;
mod nats;
mod rabbitmq;
mod redis_stream;
mod reject;
mod relay;
mod reload;
mod stdout_only;
mod systemd;
mod tail;
mod tls;
