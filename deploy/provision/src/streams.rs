//! The JetStream streams and durable pull consumers, created idempotently by the admin identity.
//!
//! The table ([`specs`]) is plain data; [`ensure`] creates or updates each stream and consumer
//! and then checks the server's answer field by field, so a server that silently ignores a
//! hardening flag (deny delete, deny purge, no rollup, message size) fails loudly here instead of
//! running unprotected.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use protocol::subject::stream as names;

use crate::error::ProvisionError;

/// Largest message a stream accepts (the envelope limit).
pub const MAX_MESSAGE_SIZE: i32 = 65_536;
/// JetStream de-duplication window (`Nats-Msg-Id`).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a delivered message may stay unacknowledged before redelivery.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Redeliveries: unlimited. Audit events and chat messages are never dropped by the consumer;
/// a consumer that cannot handle one terminates it explicitly.
pub const MAX_DELIVER: i64 = -1;
/// Unacknowledged messages per consumer.
pub const MAX_ACK_PENDING: i64 = 1024;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// One durable pull consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// Its name.
    pub name: String,
    /// The subjects it delivers (empty: the whole stream).
    pub filter_subjects: Vec<String>,
}

impl ConsumerSpec {
    fn all(name: &str) -> ConsumerSpec {
        ConsumerSpec {
            name: name.to_owned(),
            filter_subjects: Vec::new(),
        }
    }
}

/// One stream and its durable pull consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name.
    pub name: &'static str,
    /// Subjects it captures.
    pub subjects: &'static [&'static str],
    /// Retention: limits (kept until `max_age`) or work queue (removed when acknowledged).
    pub work_queue: bool,
    /// How long a message is kept at most.
    pub max_age: Duration,
    /// The durable pull consumers (on a work queue their filters never overlap).
    pub consumers: Vec<ConsumerSpec>,
}

/// The streams, from `protocol::subject::stream`.
pub fn specs() -> Vec<StreamSpec> {
    vec![
        StreamSpec {
            name: names::AUDIT,
            subjects: &["audit.>"],
            work_queue: false,
            max_age: 7 * DAY,
            consumers: vec![
                ConsumerSpec::all(names::AUDIT_WRITER_CONSUMER),
                ConsumerSpec::all(names::AUDIT_ANOMALY_CONSUMER),
            ],
        },
        StreamSpec {
            name: names::CHAT_IN,
            subjects: &["chat.in.>", "chat.decision.>"],
            work_queue: true,
            max_age: DAY,
            consumers: vec![ConsumerSpec::all(names::CHAT_IN_CONSUMER)],
        },
        StreamSpec {
            name: names::ALERTS,
            subjects: &["alert.>"],
            work_queue: true,
            max_age: 7 * DAY,
            consumers: vec![ConsumerSpec::all(names::ALERTS_CONSUMER)],
        },
        StreamSpec {
            name: names::CHAT_OUT,
            subjects: &["chat.out.>", "plan.proposed.>"],
            work_queue: true,
            max_age: DAY,
            consumers: names::CHANNELS
                .iter()
                .map(|ch| ConsumerSpec {
                    name: names::chat_out_consumer(ch),
                    filter_subjects: vec![format!("chat.out.{ch}"), format!("plan.proposed.{ch}")],
                })
                .collect(),
        },
    ]
}

/// The stream configuration for a spec: file storage, deny delete, deny purge, no rollup, no
/// direct get, bounded message size, two-minute de-duplication.
pub fn stream_config(spec: &StreamSpec) -> stream::Config {
    stream::Config {
        name: spec.name.to_owned(),
        subjects: spec.subjects.iter().map(|s| (*s).to_owned()).collect(),
        retention: if spec.work_queue {
            stream::RetentionPolicy::WorkQueue
        } else {
            stream::RetentionPolicy::Limits
        },
        storage: stream::StorageType::File,
        max_age: spec.max_age,
        max_message_size: MAX_MESSAGE_SIZE,
        duplicate_window: DUPLICATE_WINDOW,
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        allow_direct: false,
        sealed: false,
        num_replicas: 1,
        ..Default::default()
    }
}

/// A durable pull consumer: explicit acks, 30 s ack wait, unlimited redelivery, 1024 pending
/// acks, delivering everything its filter selects.
pub fn consumer_config(spec: &ConsumerSpec) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(spec.name.clone()),
        filter_subjects: spec.filter_subjects.clone(),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_deliver: MAX_DELIVER,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    }
}

fn same<T: PartialEq + std::fmt::Debug>(
    what: &str,
    field: &'static str,
    expected: &T,
    actual: &T,
) -> Result<(), ProvisionError> {
    if expected == actual {
        Ok(())
    } else {
        Err(ProvisionError::Hardening {
            what: what.to_owned(),
            field,
            expected: format!("{expected:?}"),
            actual: format!("{actual:?}"),
        })
    }
}

/// Checks the server's view of a stream against what was asked for.
pub fn check_stream(
    expected: &stream::Config,
    actual: &stream::Config,
) -> Result<(), ProvisionError> {
    let what = format!("stream {}", expected.name);
    let w = what.as_str();
    same(w, "name", &expected.name, &actual.name)?;
    same(w, "subjects", &expected.subjects, &actual.subjects)?;
    same(w, "retention", &expected.retention, &actual.retention)?;
    same(w, "storage", &expected.storage, &actual.storage)?;
    same(w, "max_age", &expected.max_age, &actual.max_age)?;
    same(
        w,
        "max_msg_size",
        &expected.max_message_size,
        &actual.max_message_size,
    )?;
    same(
        w,
        "duplicate_window",
        &expected.duplicate_window,
        &actual.duplicate_window,
    )?;
    same(w, "deny_delete", &true, &actual.deny_delete)?;
    same(w, "deny_purge", &true, &actual.deny_purge)?;
    same(w, "allow_rollup_hdrs", &false, &actual.allow_rollup)?;
    same(w, "allow_direct", &false, &actual.allow_direct)?;
    same(w, "sealed", &false, &actual.sealed)?;
    Ok(())
}

/// Checks the server's view of a consumer against what was asked for.
pub fn check_consumer(
    stream: &str,
    expected: &consumer::pull::Config,
    actual: &consumer::Config,
) -> Result<(), ProvisionError> {
    let what = format!(
        "consumer {stream}/{}",
        expected.durable_name.as_deref().unwrap_or_default()
    );
    let w = what.as_str();
    same(
        w,
        "durable_name",
        &expected.durable_name,
        &actual.durable_name,
    )?;
    same(
        w,
        "deliver_policy",
        &expected.deliver_policy,
        &actual.deliver_policy,
    )?;
    same(w, "ack_policy", &expected.ack_policy, &actual.ack_policy)?;
    same(w, "ack_wait", &expected.ack_wait, &actual.ack_wait)?;
    same(w, "max_deliver", &expected.max_deliver, &actual.max_deliver)?;
    same(
        w,
        "max_ack_pending",
        &expected.max_ack_pending,
        &actual.max_ack_pending,
    )?;
    same(w, "filter_subject", &String::new(), &actual.filter_subject)?;
    same(
        w,
        "filter_subjects",
        &expected.filter_subjects,
        &actual.filter_subjects,
    )?;
    same(
        w,
        "deliver_subject (pull only)",
        &None,
        &actual.deliver_subject,
    )?;
    Ok(())
}

fn js_error(what: String) -> impl FnOnce(async_nats::Error) -> ProvisionError {
    move |source| ProvisionError::JetStream { what, source }
}

/// Creates (or brings up to date) every stream and consumer in [`specs`], then checks the
/// settings the server reports. Call it as the admin identity.
pub async fn ensure(admin: &async_nats::Client) -> Result<(), ProvisionError> {
    let js = jetstream::new(admin.clone());
    for spec in specs() {
        let wanted = stream_config(&spec);
        let info = js
            .create_or_update_stream(wanted.clone())
            .await
            .map_err(|e| js_error(format!("create stream {}", spec.name))(e.into()))?;
        check_stream(&wanted, &info.config)?;

        let stream = js
            .get_stream(spec.name)
            .await
            .map_err(|e| js_error(format!("get stream {}", spec.name))(e.into()))?;
        for c in &spec.consumers {
            let wanted_consumer = consumer_config(c);
            let created = stream
                .create_consumer(wanted_consumer.clone())
                .await
                .map_err(|e| js_error(format!("create consumer {}", c.name))(e.into()))?;
            check_consumer(spec.name, &wanted_consumer, &created.cached_info().config)?;
        }
        tracing::info!(
            stream = spec.name,
            consumers = spec.consumers.len(),
            "stream ready"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_covers_every_stream_and_hardens_each() {
        let out: Vec<String> = specs()
            .iter()
            .flat_map(|s| {
                let c = stream_config(s);
                let mut lines = vec![format!(
                    "{} {:?} {:?} age={:?} size={} dup={:?} deny_delete={} deny_purge={} rollup={}",
                    c.name,
                    c.subjects,
                    c.retention,
                    c.max_age,
                    c.max_message_size,
                    c.duplicate_window,
                    c.deny_delete,
                    c.deny_purge,
                    c.allow_rollup,
                )];
                for consumer in &s.consumers {
                    let k = consumer_config(consumer);
                    lines.push(format!(
                        "  consumer={:?} filters={:?} ack_wait={:?} max_deliver={} pending={}",
                        k.durable_name,
                        k.filter_subjects,
                        k.ack_wait,
                        k.max_deliver,
                        k.max_ack_pending
                    ));
                }
                lines
            })
            .collect();
        expect_test::expect![[r#"
            AUDIT ["audit.>"] Limits age=604800s size=65536 dup=120s deny_delete=true deny_purge=true rollup=false
              consumer=Some("audit-writer") filters=[] ack_wait=30s max_deliver=-1 pending=1024
              consumer=Some("audit-anomaly") filters=[] ack_wait=30s max_deliver=-1 pending=1024
            CHAT_IN ["chat.in.>", "chat.decision.>"] WorkQueue age=86400s size=65536 dup=120s deny_delete=true deny_purge=true rollup=false
              consumer=Some("orchestrator") filters=[] ack_wait=30s max_deliver=-1 pending=1024
            ALERTS ["alert.>"] WorkQueue age=604800s size=65536 dup=120s deny_delete=true deny_purge=true rollup=false
              consumer=Some("orchestrator-alerts") filters=[] ack_wait=30s max_deliver=-1 pending=1024
            CHAT_OUT ["chat.out.>", "plan.proposed.>"] WorkQueue age=86400s size=65536 dup=120s deny_delete=true deny_purge=true rollup=false
              consumer=Some("out-terminal") filters=["chat.out.terminal", "plan.proposed.terminal"] ack_wait=30s max_deliver=-1 pending=1024
              consumer=Some("out-telegram") filters=["chat.out.telegram", "plan.proposed.telegram"] ack_wait=30s max_deliver=-1 pending=1024
              consumer=Some("out-slack") filters=["chat.out.slack", "plan.proposed.slack"] ack_wait=30s max_deliver=-1 pending=1024
              consumer=Some("out-imessage") filters=["chat.out.imessage", "plan.proposed.imessage"] ack_wait=30s max_deliver=-1 pending=1024
              consumer=Some("out-web") filters=["chat.out.web", "plan.proposed.web"] ack_wait=30s max_deliver=-1 pending=1024"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn a_server_that_drops_a_flag_fails_the_check() {
        let spec = &specs()[0];
        let wanted = stream_config(spec);
        check_stream(&wanted, &wanted).unwrap();
        for (field, broken) in [
            (
                "deny_delete",
                stream::Config {
                    deny_delete: false,
                    ..wanted.clone()
                },
            ),
            (
                "deny_purge",
                stream::Config {
                    deny_purge: false,
                    ..wanted.clone()
                },
            ),
            (
                "allow_rollup_hdrs",
                stream::Config {
                    allow_rollup: true,
                    ..wanted.clone()
                },
            ),
            (
                "max_msg_size",
                stream::Config {
                    max_message_size: -1,
                    ..wanted.clone()
                },
            ),
        ] {
            let e = check_stream(&wanted, &broken).unwrap_err();
            assert_eq!(e.code(), "nats_stream_hardening");
            assert!(e.to_string().contains(field), "{e}");
        }
    }
}
